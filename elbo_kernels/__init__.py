"""elbo_kernels: fused kernels for RL fine-tuning of diffusion and flow models.

    import elbo_kernels as ek
    e = ek.elbo(v, x0, noise, t)                                   # per-draw ELBO estimates
    loss, stats = ek.policy_loss(v, v_old, v_ref, x0, noise, t, advantages)
    log_prob, prev_mean, std = ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev)
    advantages = ek.group_advantages(rewards, group_ids, mode="exact", scale=0.1)
    ek.available_backends()
"""

from .advantages import ADVANTAGE_MODES, PerPromptStatTracker, group_advantages
from .backends import BACKENDS, BackendStatus, available_backends
from .estimators import (
    NOISE_MODES,
    SDE_TYPES,
    TIMESTEP_SAMPLERS,
    WEIGHTINGS,
    elbo,
    noising,
    sample_noise,
    sample_timesteps,
    sde_step_coefficients,
    sde_step_log_prob,
)
from .objectives import KL_ESTIMATORS, OBJECTIVES, policy_loss
from .ops.noise import NoiseSeed

__version__ = "0.1.0"

__all__ = [
    "ADVANTAGE_MODES",
    "BACKENDS",
    "BackendStatus",
    "KL_ESTIMATORS",
    "NOISE_MODES",
    "NoiseSeed",
    "OBJECTIVES",
    "PerPromptStatTracker",
    "SDE_TYPES",
    "TIMESTEP_SAMPLERS",
    "WEIGHTINGS",
    "available_backends",
    "elbo",
    "group_advantages",
    "noising",
    "policy_loss",
    "sample_noise",
    "sample_timesteps",
    "sde_step_coefficients",
    "sde_step_log_prob",
]
