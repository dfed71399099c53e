"""Fused Gaussian SDE step: mean, log-density and its reduction, with the gradient in v.

Every SDE step of a flow sampler (FlowGRPO's "sde" and "cps" variants) is,
per draw n, an affine mean and a Gaussian log-density with per-row scalars
coef[n] = (a_x, a_v, w, c):

    prev_mean = a_x * x + a_v * v
    log_prob  = c - w * mean_D (x_prev - prev_mean)^2

The scalars come from the sampler's sigmas in a tiny prologue
(:func:`elbo_kernels.estimators.trajectory.sde_step_coefficients`); the kernels
never see which variant they run. Everything is computed in float32 (float64
for float64 inputs), and prev_mean is returned in that precision.

Gradient (v only): dL/dv = a_v * (g_mean + g_logp * 2 w (x_prev - prev_mean) / D).

Bytes: forward reads v, x, x_prev (3 N D E) and writes prev_mean (N D 4);
backward reads v, x, x_prev, g_mean and writes dL/dv.

This file owns the op on every backend: the reference, the fake kernels and the
autograd formula, registered for the C++/CUDA op ``elbo_kernels::sde_step``
(csrc/) and for ``elbo_kernels::sde_step_triton``, defined here with its body
in ops/_triton/sde_step.py.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._backends import fused_op
from ._base import accumulation_dtype, on_cpp_load

COEF_NAMES = ("a_x", "a_v", "w", "c")


def sde_step_reference(
    v: torch.Tensor, x: torch.Tensor, x_prev: torch.Tensor, coef: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log_prob [N], prev_mean [N, *S]); differentiable in v through autograd."""
    acc = accumulation_dtype(v.dtype)
    shape = (v.shape[0],) + (1,) * (v.dim() - 1)
    a_x, a_v, w, c = (coef[:, i].to(acc) for i in range(4))
    prev_mean = a_x.reshape(shape) * x.to(acc) + a_v.reshape(shape) * v.to(acc)
    sq = (x_prev.to(acc).detach() - prev_mean).square().reshape(v.shape[0], -1).mean(1)
    return c - w * sq, prev_mean


def sde_step_op(
    v: torch.Tensor,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    coef: torch.Tensor,
    *,
    backend: str = "torch",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log_prob, prev_mean) on a concrete backend; inputs validated by the caller."""
    op = fused_op("sde_step", backend)
    if op is None:  # the torch backend
        return sde_step_reference(v, x, x_prev, coef)
    return op(v, x, x_prev, coef.to(accumulation_dtype(v.dtype)).contiguous())


def sde_step_backward_reference(
    grad_log_prob: torch.Tensor,
    grad_prev_mean: Optional[torch.Tensor],
    v: torch.Tensor,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    coef: torch.Tensor,
) -> torch.Tensor:
    """dL/dv in v's dtype, from the closed form in the module docstring."""
    acc = accumulation_dtype(v.dtype)
    n = v.shape[0]
    d = v[0].numel()
    shape = (n,) + (1,) * (v.dim() - 1)
    a_x, a_v, w, _ = (coef[:, i].to(acc).reshape(shape) for i in range(4))
    prev_mean = a_x * x.to(acc) + a_v * v.to(acc)
    g = grad_log_prob.to(acc).reshape(shape) * 2 * w * (x_prev.to(acc) - prev_mean) / d
    if grad_prev_mean is not None:
        g = g + grad_prev_mean.to(acc)
    return (a_v * g).to(v.dtype)


# ---------------------------------------------------------------- registrations on every backend


def _sde_step_fake(v, x, x_prev, coef):
    acc = accumulation_dtype(v.dtype)
    return v.new_empty((v.shape[0],), dtype=acc), v.new_empty(v.shape, dtype=acc)


def _sde_step_backward_fake(grad_log_prob, grad_prev_mean, v, x, x_prev, coef):
    return v.new_empty(v.shape)


def _register_autograd(op_name: str, backward_op) -> None:
    """Gradient of a backend's SDE-step op ``op_name`` (outputs log_prob, prev_mean): one call of
    its ``backward_op``, to v only; either output's gradient may be absent."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_log_prob, grad_prev_mean):
        v, x, x_prev, coef = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        if grad_log_prob is None:
            grad_log_prob = v.new_zeros((v.shape[0],), dtype=accumulation_dtype(v.dtype))
        return backward_op(grad_log_prob, grad_prev_mean, v, x, x_prev, coef), None, None, None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def _register_cpp() -> None:
    """The C++/CUDA ops (schemas in csrc/elbo_ops.cpp) get their fakes and autograd once loaded."""
    torch.library.register_fake("elbo_kernels::sde_step", _sde_step_fake)
    torch.library.register_fake("elbo_kernels::sde_step_backward", _sde_step_backward_fake)
    _register_autograd("elbo_kernels::sde_step", torch.ops.elbo_kernels.sde_step_backward)


on_cpp_load(_register_cpp)


@torch.library.custom_op(
    "elbo_kernels::sde_step_triton",
    mutates_args=(),
    schema="(Tensor v, Tensor x, Tensor x_prev, Tensor coef) -> (Tensor, Tensor)",
)
def sde_step_triton(
    v: torch.Tensor, x: torch.Tensor, x_prev: torch.Tensor, coef: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    from ._triton import sde_step as kernels  # imports triton on first use

    return kernels.sde_step_forward(v, x, x_prev, coef)


@torch.library.custom_op(
    "elbo_kernels::sde_step_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_log_prob, Tensor? grad_prev_mean, Tensor v, Tensor x, Tensor x_prev, "
    "Tensor coef) -> Tensor",
)
def sde_step_backward_triton(
    grad_log_prob: torch.Tensor,
    grad_prev_mean: Optional[torch.Tensor],
    v: torch.Tensor,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    coef: torch.Tensor,
) -> torch.Tensor:
    from ._triton import sde_step as kernels

    return kernels.sde_step_backward(grad_log_prob, grad_prev_mean, v, x, x_prev, coef)


sde_step_triton.register_fake(_sde_step_fake)
sde_step_backward_triton.register_fake(_sde_step_backward_fake)
_register_autograd("elbo_kernels::sde_step_triton", sde_step_backward_triton)
