"""Likelihood estimators: the ELBO (weightings, timestep and noise sampling) and the SDE trajectory."""

from .elbo import DEPRECATED_WEIGHTINGS, WEIGHTINGS, Weighting, elbo, elbo_from_moments, ghuber, noising, weighting_record
from .importance import grid_importance_timesteps, proposal_from_second_moments, scale_row_gradients
from .timesteps import NOISE_MODES, TIMESTEP_SAMPLERS, sample_noise, sample_timesteps
from .trajectory import SDE_TYPES, sde_step_coefficients, sde_step_log_prob

# The likelihood estimators: per-draw ELBOs of the final sample (elbo.py), or the SDE rollout's
# per-step log-probabilities (trajectory.py).
ESTIMATORS = ("elbo", "trajectory")

__all__ = [
    "ESTIMATORS",
    "Weighting",
    "weighting_record",
    "WEIGHTINGS",
    "DEPRECATED_WEIGHTINGS",
    "ghuber",
    "elbo",
    "elbo_from_moments",
    "noising",
    "NOISE_MODES",
    "TIMESTEP_SAMPLERS",
    "sample_noise",
    "sample_timesteps",
    "grid_importance_timesteps",
    "proposal_from_second_moments",
    "scale_row_gradients",
    "SDE_TYPES",
    "sde_step_coefficients",
    "sde_step_log_prob",
]
