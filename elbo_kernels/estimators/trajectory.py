"""The trajectory estimator: FlowGRPO's per-step Gaussian log-density of an SDE sampler.

One step goes from sigma to sigma_prev < sigma (dt = sigma_prev - sigma < 0).

"sde" (FlowGRPO's default):

    std       = noise_level * sqrt(sigma / (1 - s')),  s' = sigma_max where sigma == 1 else sigma
    prev_mean = x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt
    log_prob  = mean_D [ -(x_prev - prev_mean)^2 / (2 std^2 (-dt)) - log(std sqrt(-dt)) - log sqrt(2 pi) ]

"cps" (coefficients-preserving sampling, as FlowGRPO implements it):

    std       = sigma_prev * sin(noise_level * pi / 2)
    prev_mean = (x - sigma v)(1 - sigma_prev) + (x + (1 - sigma) v) sqrt(sigma_prev^2 - std^2)
    log_prob  = -mean_D (x_prev - prev_mean)^2          (FlowGRPO drops the constants)

Both are "affine mean + Gaussian log-density" with per-row scalars, so one fused
kernel (ops/sde_step.py) runs either; this module turns sigmas into its scalars.

noise_level = 0 is the deterministic step, as in FlowGRPO (which evaluates with
it): std = 0 and prev_mean = x + dt v, the Euler step of the probability-flow ODE,
for both variants. A point mass has no density, so "sde" returns a NaN log_prob
there, exactly what FlowGRPO's formula gives (0 / 0); "cps", whose log_prob has no
1 / std^2 factor, stays finite (-mean_D (x_prev - prev_mean)^2).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .._validation import (
    check_choice,
    check_finite,
    check_finite_through,
    check_per_draw,
    check_positive,
    check_same_layout,
    check_tensor,
    require_all,
    values_range,
)
from ..backends import resolve_backend
from ..ops.sde_step import sde_step_op

SDE_TYPES = ("sde", "cps")


def sde_step_coefficients(
    sigma: torch.Tensor,
    sigma_prev: torch.Tensor,
    *,
    noise_level: float = 0.7,
    sde_type: str = "sde",
    sigma_max: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row scalars of one SDE step, computed in float64.

    Args:
        sigma, sigma_prev: [N] noise levels of the step (sigma_prev < sigma).
    Returns:
        coef [N, 4] = (a_x, a_v, w, c) with prev_mean = a_x x + a_v v and
        log_prob = c - w * mean_D (x_prev - prev_mean)^2;
        std_dev [N] (FlowGRPO's ``std_dev_t``);
        step_std [N], the standard deviation of x_prev around prev_mean
        (std_dev * sqrt(-dt) for "sde", std_dev for "cps").
    """
    check_choice("sde_type", sde_type, SDE_TYPES)
    s = sigma.to(torch.float64)
    sp = sigma_prev.to(torch.float64)
    dt = sp - s
    if sde_type == "sde":
        if sigma_max is None:
            require_all(s != 1, "sigma_max is required when sigma == 1 (FlowGRPO substitutes the scheduler's "
                        "second grid value, sigmas[1], to avoid dividing by zero)")
        denominator = torch.where(s == 1, torch.full_like(s, sigma_max or 0.0), s)
        std = noise_level * torch.sqrt(s / (1 - denominator))
        a_x = 1 + std.square() * dt / (2 * s)
        a_v = (1 + std.square() * (1 - s) / (2 * s)) * dt
        step_std = std * torch.sqrt(-dt)
        if noise_level == 0:  # the deterministic step: no density (sde_step_log_prob returns NaN)
            w, c = torch.zeros_like(s), torch.zeros_like(s)
        else:
            w = 1 / (2 * step_std.square())
            c = -torch.log(step_std) - 0.5 * math.log(2 * math.pi)
    else:
        std = sp * math.sin(noise_level * math.pi / 2)
        root = torch.sqrt(sp.square() - std.square())
        a_x = (1 - sp) + root
        a_v = -s * (1 - sp) + (1 - s) * root
        step_std = std
        w = torch.ones_like(s)
        c = torch.zeros_like(s)
    return torch.stack([a_x, a_v, w, c], dim=1), std, step_std


def sde_step_log_prob(
    v: torch.Tensor,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    sigma,
    sigma_prev,
    *,
    noise_level: float = 0.7,
    sde_type: str = "sde",
    sigma_max: Optional[float] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlowGRPO's SDE step log-probability on the fused kernel (formulas in the module docstring).

    Args:
        v: model velocity at (x, sigma), [N, *S], any latent rank; float16/bfloat16/float32/float64.
        x: the current latent x_sigma, [N, *S], dtype and device of v.
        x_prev: the next latent x_{sigma_prev} actually taken, [N, *S].
        sigma, sigma_prev: [N] tensors (or floats) with 0 <= sigma_prev < sigma <= 1.
        noise_level: FlowGRPO's eta (>= 0; 0 is the deterministic Euler step, module docstring).
        sde_type: "sde" or "cps".
        sigma_max: substitute for sigma in 1 - sigma where sigma == 1 ("sde" only; FlowGRPO uses sigmas[1]).
        backend: "auto", "torch", "cpu", "cuda" or "triton".
    Returns:
        (log_prob [N] float32 (float64 for float64 inputs), prev_mean [N, *S] in the same
        precision, std [N] FlowGRPO's std_dev_t). Gradients flow to v (through log_prob and prev_mean).
        With noise_level = 0 and "sde", log_prob is NaN (no density; as FlowGRPO) and carries no
        gradient; prev_mean still does.
    Raises:
        TypeError / ValueError naming the argument for mismatched shapes, dtypes or devices,
        non-finite inputs, sigmas out of range, or an unknown sde_type / backend.
    """
    check_tensor("v", v)
    check_same_layout("v", v, x=x, x_prev=x_prev)
    check_choice("sde_type", sde_type, SDE_TYPES)
    check_positive("noise_level", noise_level, allow_zero=True)
    n = v.shape[0]
    sigma = check_per_draw("sigma", sigma, n, v.device)
    sigma_prev = check_per_draw("sigma_prev", sigma_prev, n, v.device)
    check_finite("sigma", sigma)
    check_finite("sigma_prev", sigma_prev)
    require_all((sigma > 0) & (sigma <= 1), "sigma must lie in (0, 1]", lambda: values_range(sigma))
    require_all((sigma_prev >= 0) & (sigma_prev < sigma), "sigma_prev must satisfy 0 <= sigma_prev < sigma for every row")
    if sigma_max is not None and not 0 < sigma_max < 1:
        raise ValueError(f"sigma_max must lie in (0, 1), got {sigma_max!r}")
    coef, std, _ = sde_step_coefficients(
        sigma, sigma_prev, noise_level=noise_level, sde_type=sde_type, sigma_max=sigma_max
    )
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    backend = resolve_backend(backend, v.device)
    log_prob, prev_mean = sde_step_op(v, x, x_prev, coef.to(acc), backend=backend)
    check_finite_through(log_prob, "the step log-probability", v=v, x=x, x_prev=x_prev)
    if noise_level == 0 and sde_type == "sde":
        log_prob = torch.full_like(log_prob, float("nan"))
    return log_prob, prev_mean, std.to(acc)
