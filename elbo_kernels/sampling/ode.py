"""Deterministic samplers for the flow ODE dx/dt = v(x, t), integrated from t = 1 to 0.

"euler": x <- x + (sigma_next - sigma) v(x, sigma). One velocity call per step.
For rectified flow this is exactly DDIM (first-order DPM-Solver).

"dpm2": DPM-Solver-2 as k-diffusion's ``sample_dpm_2`` and diffusers'
``KDPM2DiscreteScheduler`` define it, written for the velocity ODE: a midpoint
method whose midpoint is taken in log-sigma,

    sigma_mid = sqrt(sigma * sigma_next)
    x_mid     = x + (sigma_mid - sigma) v(x, sigma)
    x         = x + (sigma_next - sigma) v(x_mid, sigma_mid)

and a plain Euler step for the final step to sigma = 0, where log-sigma is
undefined (as both reference implementations do). Two velocity calls per step
(2 * num_steps - 1 in all), second order in the step size away from sigma = 0.
"""

from __future__ import annotations

from typing import Callable

import torch

from .schedules import check_sigmas

ODE_METHODS = ("euler", "dpm2")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ode_sample(
    velocity_fn: VelocityFn, x1: torch.Tensor, sigmas: torch.Tensor, method: str = "euler"
) -> torch.Tensor:
    """Integrate the flow ODE from x1 at sigmas[0] to sigmas[-1].

    Args:
        velocity_fn: v(x, t) with x [N, *S] and t [N] (x's dtype and device); returns [N, *S].
        x1: starting latent [N, *S], usually N(0, I) noise at sigmas[0] = 1.
        sigmas: strictly decreasing [T + 1] grid in [0, 1] (see :func:`timestep_grid`).
        method: "euler" or "dpm2" (module docstring).
    Returns:
        x0 [N, *S] in x1's dtype. No gradient bookkeeping is changed: wrap the call in
        ``torch.no_grad()`` for rollouts.
    Raises:
        ValueError: unknown method, bad grid, or a velocity of the wrong shape.
        TypeError: x1 is not a floating tensor.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    if not isinstance(x1, torch.Tensor) or not x1.is_floating_point():
        raise TypeError(f"x1 must be a floating torch.Tensor, got {type(x1).__name__}")
    check_sigmas(sigmas)
    n = x1.shape[0]
    grid = [float(s) for s in sigmas]

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        v = velocity_fn(x, torch.full((n,), sigma, dtype=x.dtype, device=x.device))
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
        return v

    x = x1
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        v = velocity(x, sigma)
        if method == "euler" or sigma_next == 0.0:
            x = x + (sigma_next - sigma) * v
            continue
        sigma_mid = (sigma * sigma_next) ** 0.5
        x_mid = x + (sigma_mid - sigma) * v
        x = x + (sigma_next - sigma) * velocity(x_mid, sigma_mid)
    return x
