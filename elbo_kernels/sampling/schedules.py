"""Noise-level grids for flow samplers."""

from __future__ import annotations

from typing import Optional

import torch


def timestep_grid(
    num_steps: int, shift: float = 1.0, device: Optional[torch.device] = None
) -> torch.Tensor:
    """The sampler's noise levels, ``num_steps + 1`` values from 1 down to 0.

    A uniform grid t_i = 1 - i / num_steps, optionally warped by SD3's shift
    sigma = shift * t / (1 + (shift - 1) * t), which spends more steps at high
    noise when shift > 1 (SD3.5 uses shift 3).

    Args:
        num_steps: number of sampler steps (>= 1).
        shift: SD3 time shift (> 0); 1.0 leaves the grid uniform.
        device: device of the result.
    Returns:
        sigmas [num_steps + 1] float32, sigmas[0] = 1, sigmas[-1] = 0, strictly decreasing.
    Raises:
        ValueError: num_steps < 1 or shift <= 0.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigmas = shift * t / (1 + (shift - 1) * t)
    return sigmas.to(device=device, dtype=torch.float32)


def check_sigmas(sigmas: torch.Tensor) -> None:
    """Shared by the samplers: a 1-D, strictly decreasing grid inside [0, 1], at least 2 values."""
    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(f"sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    if float(sigmas[0]) > 1 or float(sigmas[-1]) < 0:
        raise ValueError(
            f"sigmas must lie in [0, 1], got [{float(sigmas[-1]):g}, {float(sigmas[0]):g}]"
        )
