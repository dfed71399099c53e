"""Samplers for flow models, generic over a velocity function.

Every sampler takes ``velocity_fn(x, t) -> v`` with x [N, *S] and t a [N]
tensor of flow times in (0, 1] (SD3 convention: t = 1 is pure noise, the model
predicts v = eps - x0), a starting latent x1 ~ N(0, I) and a decreasing grid of
noise levels ``sigmas`` from :func:`timestep_grid`.

- :func:`ode_sample`: deterministic probability-flow ODE, Euler or DPM-Solver-2.
- :func:`sde_sample`: FlowGRPO's SDE rollout with per-step log-probabilities.
- :func:`cfg_velocity`: classifier-free guidance as a velocity function.
"""

from .guidance import apply_guidance, cfg_velocity
from .ode import ODE_METHODS, ode_sample
from .schedules import timestep_grid
from .sde import SDE_TYPES, SDETrajectory, sde_sample

__all__ = [
    "ODE_METHODS",
    "SDE_TYPES",
    "SDETrajectory",
    "apply_guidance",
    "cfg_velocity",
    "ode_sample",
    "sde_sample",
    "timestep_grid",
]
