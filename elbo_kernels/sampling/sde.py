"""FlowGRPO's SDE rollout: stochastic steps whose Gaussian log-densities the trajectory estimator uses.

Each step from sigma to sigma_prev draws

    x_prev = prev_mean + step_std * noise,   noise ~ N(0, I)

with prev_mean = a_x x + a_v v and step_std from
:func:`elbo_kernels.estimators.trajectory.sde_step_coefficients` ("sde":
step_std = std_dev * sqrt(-dt); "cps": step_std = std_dev), and records
log pi(x_prev | x) from :func:`~elbo_kernels.estimators.trajectory.sde_step_log_prob`
evaluated on the step actually taken. As in FlowGRPO, the last step to
sigma = 0 is stochastic too for "sde" (for "cps" its std is 0). noise_level = 0
gives FlowGRPO's deterministic rollout (Euler steps of the ODE; the step noise is
still drawn, so the generator advances as at any other noise level), with NaN
log-probabilities for "sde" (a point mass has no density).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._validation import check_choice, check_positive
from ..estimators.trajectory import SDE_TYPES, sde_step_coefficients, sde_step_log_prob
from .schedules import check_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SDETrajectory:
    """One batch of SDE rollouts.

    latents: [N, T + 1, *S], latents[:, 0] = x1 and latents[:, -1] = final.
    log_probs: [N, T] float32, log pi(latents[:, j + 1] | latents[:, j]) (mean over D).
    sigmas: [T + 1] the grid used.
    final: [N, *S] the sample at sigmas[-1].
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    final: torch.Tensor


def sde_sample(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    sigmas: torch.Tensor,
    noise_level: float = 0.7,
    sde_type: str = "sde",
    generator: Optional[torch.Generator] = None,
    sigma_max: Optional[float] = None,
    backend: str = "auto",
) -> SDETrajectory:
    """Roll out FlowGRPO's SDE sampler and record per-step log-probabilities.

    Args:
        velocity_fn: v(x, t), x [N, *S], t [N]; returns [N, *S].
        x1: starting noise [N, *S] at sigmas[0].
        sigmas: strictly decreasing [T + 1] grid in [0, 1].
        noise_level: FlowGRPO's eta (>= 0; 0 = deterministic, see the module docstring).
        sde_type: "sde" or "cps".
        generator: torch.Generator on x1's device for the step noise (None: global RNG).
        sigma_max: substitute for sigma in 1 - sigma at sigma == 1 ("sde"); default
            sigmas[1], FlowGRPO's choice.
        backend: backend of the log-prob kernel ("auto", "torch", "cpu", "cuda", "triton").
    Returns:
        :class:`SDETrajectory`. The step noise is drawn in float32 then cast to x1's dtype.
    Raises:
        ValueError: bad grid, sde_type or noise_level, or a velocity of the wrong shape.
    """
    check_choice("sde_type", sde_type, SDE_TYPES)
    check_positive("noise_level", noise_level, allow_zero=True)
    if not isinstance(x1, torch.Tensor) or not x1.is_floating_point():
        raise TypeError(f"x1 must be a floating torch.Tensor, got {type(x1).__name__}")
    check_sigmas(sigmas)
    if sigma_max is None and sde_type == "sde" and float(sigmas[0]) == 1.0:
        sigma_max = float(sigmas[1])
    n = x1.shape[0]
    view = (n,) + (1,) * (x1.dim() - 1)
    grid = sigmas.to(device=x1.device, dtype=torch.float32)

    x = x1
    latents = [x1]
    log_probs = []
    for j in range(grid.numel() - 1):
        sigma = grid[j].expand(n)
        sigma_prev = grid[j + 1].expand(n)
        v = velocity_fn(x, sigma.to(x.dtype))
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
        coef, _, step_std = sde_step_coefficients(
            sigma, sigma_prev, noise_level=noise_level, sde_type=sde_type, sigma_max=sigma_max
        )
        a_x, a_v = coef[:, 0].reshape(view), coef[:, 1].reshape(view)
        prev_mean = a_x * x.to(torch.float64) + a_v * v.to(torch.float64)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x_prev = (prev_mean + step_std.reshape(view) * noise.to(torch.float64)).to(x.dtype)
        log_prob, _, _ = sde_step_log_prob(
            v, x, x_prev, sigma, sigma_prev,
            noise_level=noise_level, sde_type=sde_type, sigma_max=sigma_max, backend=backend,
        )
        log_probs.append(log_prob.float())
        latents.append(x_prev)
        x = x_prev
    return SDETrajectory(
        latents=torch.stack(latents, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        sigmas=grid,
        final=x,
    )
