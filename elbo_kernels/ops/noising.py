"""Fused noising: x_t = (1 - t) x0 + t eps, for N = B * K draws with x0 broadcast over K.

Reads x0 (B D E) and eps (N D E; nothing when eps comes from a NoiseSeed), writes
x_t (N D E). Eager PyTorch also materialises the repeated x0 and two products.

Gradient (plain torch; x0 and t are data in RL, so it is rarely needed):

    dL/dx0[b] = sum over the K draws of sample b of (1 - t) g
    dL/dt     = sum_D (eps - x0) g              (eps regenerated for a NoiseSeed)
    dL/deps   = t g                              (a noise tensor only)

This file owns the op on every backend: the reference, the fake kernel and the
autograd formula, registered for the C++/CUDA op ``elbo_kernels::noising``
(csrc/) and for ``elbo_kernels::noising_triton``, defined here with its body in
ops/_triton/noising.py.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._backends import fused_op
from ._base import accumulation_dtype, draws_per_sample, on_cpp_load
from .noise import NoiseSeed, generate_noise, generate_noise_triton


def noising_reference(x0: torch.Tensor, t: torch.Tensor, noise: Union[torch.Tensor, NoiseSeed]) -> torch.Tensor:
    """x_t in x0's dtype, computed in float32 (float64 for float64 x0)."""
    n = t.shape[0]
    k = draws_per_sample(n, x0)
    acc = accumulation_dtype(x0.dtype)
    shape = (n,) + tuple(x0.shape[1:])
    if isinstance(noise, NoiseSeed):
        noise = generate_noise(shape, noise, device=x0.device, dtype=acc, backend="torch")
    x0r = x0.to(acc).repeat_interleave(k, dim=0) if k > 1 else x0.to(acc)
    tt = t.to(acc).reshape((n,) + (1,) * (x0.dim() - 1))
    return ((1 - tt) * x0r + tt * noise.to(acc)).to(x0.dtype)


def noising_op(x0, t, noise, *, backend="torch"):
    """x_t [N, *S] on a concrete backend; inputs validated by the caller."""
    op = fused_op("noising", backend)
    if op is None:  # the torch backend
        return noising_reference(x0, t, noise)
    seed, offset = (noise.seed, noise.offset) if isinstance(noise, NoiseSeed) else (0, 0)
    tensor_noise = None if isinstance(noise, NoiseSeed) else noise
    t_acc = t.to(accumulation_dtype(x0.dtype))
    return op(x0, t_acc, tensor_noise, draws_per_sample(t.shape[0], x0), int(seed), int(offset))


# ---------------------------------------------------------------- registrations on every backend


def _noising_fake(x0, t, noise, draws_per_sample, seed, offset):
    return x0.new_empty((x0.shape[0] * draws_per_sample,) + tuple(x0.shape[1:]))


def _register_autograd(op_name: str, generate_noise_op) -> None:
    """The gradient of the module docstring for a backend's noising op ``op_name``; ``generate_noise_op``
    is the same backend's generator, which regenerates eps for dL/dt when the noise was a NoiseSeed."""

    def setup_context(ctx, inputs, output):
        x0, t, noise, draws_per_sample, seed, offset = inputs
        ctx.save_for_backward(x0, t, noise)
        ctx.scalars = (draws_per_sample, seed, offset)

    def backward(ctx, grad_x_t):
        x0, t, noise = ctx.saved_tensors
        k, seed, offset = ctx.scalars
        acc = accumulation_dtype(x0.dtype)
        n = t.shape[0]
        tt = t.to(acc).reshape((n,) + (1,) * (x0.dim() - 1))
        g = grad_x_t.to(acc)
        grad_x0 = grad_t = grad_noise = None
        if ctx.needs_input_grad[0]:
            grad_x0 = ((1 - tt) * g).reshape((x0.shape[0], k) + tuple(x0.shape[1:])).sum(1).to(x0.dtype)
        if ctx.needs_input_grad[1]:
            if noise is None:
                # The generators read only like's shape, device and dtype (float32 eps cast to acc).
                like = torch.empty((), dtype=acc, device=grad_x_t.device).expand(grad_x_t.shape)
                eps = generate_noise_op(like, seed, offset)
            else:
                eps = noise
            x0_rows = x0.to(acc).repeat_interleave(k, dim=0) if k > 1 else x0.to(acc)
            grad_t = ((eps.to(acc) - x0_rows) * g).reshape(n, -1).sum(1).to(t.dtype)
        if noise is not None and ctx.needs_input_grad[2]:
            grad_noise = (tt * g).to(noise.dtype)
        return grad_x0, grad_t, grad_noise, None, None, None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def _register_cpp() -> None:
    """The C++/CUDA op (schema in csrc/elbo_ops.cpp) gets its fake and autograd once loaded."""
    torch.library.register_fake("elbo_kernels::noising", _noising_fake)
    _register_autograd("elbo_kernels::noising", torch.ops.elbo_kernels.generate_noise)


on_cpp_load(_register_cpp)


@torch.library.custom_op(
    "elbo_kernels::noising_triton",
    mutates_args=(),
    schema="(Tensor x0, Tensor t, Tensor? noise, int draws_per_sample, int seed, int offset) -> Tensor",
)
def noising_triton(
    x0: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor], draws_per_sample: int, seed: int, offset: int
) -> torch.Tensor:
    from ._triton import noising as kernels  # imports triton on first use

    return kernels.noising_forward(x0, t, noise, draws_per_sample, seed, offset)


noising_triton.register_fake(_noising_fake)
_register_autograd("elbo_kernels::noising_triton", generate_noise_triton)
