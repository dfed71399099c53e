"""Fused noising: x_t = (1 - t) x0 + t eps, for N = B * K draws with x0 broadcast over K.

Reads x0 (B D E) and eps (N D E; nothing when eps comes from a NoiseSeed), writes
x_t (N D E). Eager PyTorch also materialises the repeated x0 and two products.
"""

from __future__ import annotations

from typing import Union

import torch

from ._dispatch import fused_op
from .noise import NoiseSeed, generate_noise


def noising_reference(x0: torch.Tensor, t: torch.Tensor, noise: Union[torch.Tensor, NoiseSeed]) -> torch.Tensor:
    """x_t in x0's dtype, computed in float32 (float64 for float64 x0)."""
    n = t.shape[0]
    k = n // x0.shape[0]
    acc = torch.float64 if x0.dtype == torch.float64 else torch.float32
    shape = (n,) + tuple(x0.shape[1:])
    if isinstance(noise, NoiseSeed):
        noise = generate_noise(shape, noise, device=x0.device, dtype=acc, backend="torch")
    x0r = x0.to(acc).repeat_interleave(k, dim=0) if k > 1 else x0.to(acc)
    tt = t.to(acc).reshape((n,) + (1,) * (x0.dim() - 1))
    return ((1 - tt) * x0r + tt * noise.to(acc)).to(x0.dtype)


def noising_op(x0, t, noise, *, backend="torch"):
    """x_t [N, *S] on a concrete backend; inputs validated by the caller."""
    if backend == "torch":
        return noising_reference(x0, t, noise)
    k = t.shape[0] // x0.shape[0]
    seed, offset = (noise.seed, noise.offset) if isinstance(noise, NoiseSeed) else (0, 0)
    tensor_noise = None if isinstance(noise, NoiseSeed) else noise
    t32 = t.to(torch.float64 if x0.dtype == torch.float64 else torch.float32)
    op = fused_op("noising", backend)
    return op(x0, t32, tensor_noise, int(k), int(seed), int(offset))
