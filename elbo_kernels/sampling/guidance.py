"""Classifier-free guidance for velocity functions."""

from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def apply_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """v_uncond + guidance_scale * (v_cond - v_uncond); same shape as the inputs."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def cfg_velocity(
    velocity_fn_cond: VelocityFn, velocity_fn_uncond: VelocityFn, guidance_scale: float
) -> VelocityFn:
    """A velocity function with classifier-free guidance.

    guidance_scale == 1.0 returns ``velocity_fn_cond`` itself: one forward per
    step, no unconditional pass. Otherwise each call evaluates both functions
    on the same (x, t) and combines them with :func:`apply_guidance`.

    The unconditional branch is a stop-gradient, as in FlowGRPO's training: it is
    evaluated under ``torch.no_grad()`` (no activations kept), so a policy gradient
    through the guided velocity is guidance_scale * d(v_cond) only.

    Raises:
        TypeError: a velocity function is not callable.
    """
    if not callable(velocity_fn_cond):
        raise TypeError(f"velocity_fn_cond must be callable, got {type(velocity_fn_cond).__name__}")
    if guidance_scale == 1.0:
        return velocity_fn_cond
    if not callable(velocity_fn_uncond):
        raise TypeError(f"velocity_fn_uncond must be callable, got {type(velocity_fn_uncond).__name__}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond = velocity_fn_cond(x, t)
        with torch.no_grad():
            v_uncond = velocity_fn_uncond(x, t)
        return apply_guidance(v_cond, v_uncond, guidance_scale)

    return guided
