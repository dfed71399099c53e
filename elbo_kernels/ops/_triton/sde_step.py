"""Triton fused SDE step (math and bytes in elbo_kernels/ops/sde_step.py): kernels and launchers.

The launchers are the bodies of the ops that elbo_kernels/ops/sde_step.py
registers, with their fake kernels and autograd (gradient to v only):

    sde_step_forward(v, x, x_prev, coef) -> (log_prob [N], prev_mean [N, *S])
    sde_step_backward(grad_log_prob, grad_prev_mean?, v, x, x_prev, coef) -> dL/dv

coef [N, 4] = (a_x, a_v, w, c) per row. Forward: grid (N rows, chunks of D);
each program writes its slice of prev_mean (float32, float64 for float64 v)
and the partial sum of (x_prev - prev_mean)^2 to [N, chunks]; then
log_prob = c - w * (fixed-order sum over chunks) / D. Backward: one
elementwise pass, prev_mean recomputed rather than read.

The forward is a reduction: one pinned config, not autotuned, and no FMA
fusion (``_common.EXACT``), so prev_mean equals torch's
``a_x * x + a_v * v`` in the accumulation dtype bit for bit and log_prob is
reproducible across processes. The backward has no bitwise contract (its tests
allow the dtype's tolerance) and is autotuned with fusion on (``_common.FAST``).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .._base import accumulation_dtype
from . import _common


@triton.jit
def _sde_step_fwd_kernel(
    mean_ptr, partial_ptr, v_ptr, x_ptr, x_prev_ptr, coef_ptr,
    D, chunk, n_chunks, stride_v, stride_x, stride_x_prev,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    a_x = tl.load(coef_ptr + row * 4 + 0).to(ACC)
    a_v = tl.load(coef_ptr + row * 4 + 1).to(ACC)
    sq = tl.zeros([BLOCK], dtype=ACC)
    for step in range(0, chunk, BLOCK):
        cols = part * chunk + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < D
        v = tl.load(v_ptr + row * stride_v + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
        x_prev = tl.load(x_prev_ptr + row * stride_x_prev + cols, mask=mask, other=0.0).to(ACC)
        prev_mean = a_x * x + a_v * v
        tl.store(mean_ptr + row * D + cols, prev_mean, mask=mask)
        dev = x_prev - prev_mean  # 0 on masked lanes: every operand loaded as 0
        sq += dev * dev
    tl.store(partial_ptr + row * n_chunks + part, tl.sum(sq, axis=0))


@triton.autotune(configs=_common.autotune_configs(), key=["D", "HAS_GRAD_MEAN"])
@triton.jit
def _sde_step_bwd_kernel(
    grad_v_ptr, grad_log_prob_ptr, grad_mean_ptr, v_ptr, x_ptr, x_prev_ptr, coef_ptr,
    D, chunk, stride_glp, stride_gm, stride_v, stride_x, stride_x_prev,
    HAS_GRAD_MEAN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    a_x = tl.load(coef_ptr + row * 4 + 0).to(ACC)
    a_v = tl.load(coef_ptr + row * 4 + 1).to(ACC)
    w = tl.load(coef_ptr + row * 4 + 2).to(ACC)
    scale = tl.load(grad_log_prob_ptr + row * stride_glp).to(ACC) * 2.0 * w
    for step in range(0, chunk, BLOCK):
        cols = part * chunk + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < D
        v = tl.load(v_ptr + row * stride_v + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
        x_prev = tl.load(x_prev_ptr + row * stride_x_prev + cols, mask=mask, other=0.0).to(ACC)
        prev_mean = a_x * x + a_v * v
        g = scale * (x_prev - prev_mean) / D
        if HAS_GRAD_MEAN:
            g += tl.load(grad_mean_ptr + row * stride_gm + cols, mask=mask, other=0.0).to(ACC)
        tl.store(grad_v_ptr + row * D + cols, _common.cast_to(a_v * g, grad_v_ptr.dtype.element_ty), mask=mask)


def _prepare(op, v, x, x_prev, coef, **more):
    guard = _common.device_guard(op, v=v, x=x, x_prev=x_prev, coef=coef, **more)
    for name, other in (("x", x), ("x_prev", x_prev)):
        if other.shape != v.shape:
            raise ValueError(f"{op}: {name} must have v's shape {tuple(v.shape)}, got {tuple(other.shape)}")
    n = v.shape[0]
    if coef.shape != (n, 4):
        raise ValueError(f"{op}: coef must have shape [{n}, 4] (a_x, a_v, w, c), got {tuple(coef.shape)}")
    acc = accumulation_dtype(v.dtype)
    return guard, acc, coef.to(acc).contiguous(), _common.rows(v), _common.rows(x), _common.rows(x_prev)


def sde_step_forward(v, x, x_prev, coef) -> Tuple[torch.Tensor, torch.Tensor]:
    guard, acc, coef, v2, x2, xp2 = _prepare("sde_step_triton", v, x, x_prev, coef)
    n, d = v2.shape
    prev_mean = torch.empty(v.shape, dtype=acc, device=v.device)
    if d == 0:
        return coef[:, 3] - coef[:, 2] * float("nan"), prev_mean  # mean over zero elements, as torch
    chunk, n_chunks = _common.plan_chunks(n, d)
    partial = torch.empty(n, n_chunks, dtype=acc, device=v.device)
    with guard:
        _sde_step_fwd_kernel[(n, n_chunks)](
            prev_mean, partial, v2, x2, xp2, coef,
            d, chunk, n_chunks, _common.row_stride(v2), _common.row_stride(x2), _common.row_stride(xp2),
            ACC=_common.tl_acc(v.dtype), enable_fp_fusion=_common.EXACT, **_common.reduce_launch(v.dtype),
        )
    log_prob = coef[:, 3] - coef[:, 2] * (partial.sum(dim=1) / d)
    return log_prob, prev_mean


def sde_step_backward(grad_log_prob, grad_prev_mean, v, x, x_prev, coef) -> torch.Tensor:
    guard, acc, coef, v2, x2, xp2 = _prepare(
        "sde_step_backward_triton", v, x, x_prev, coef, grad_log_prob=grad_log_prob, grad_prev_mean=grad_prev_mean
    )
    n, d = v2.shape
    if grad_log_prob.shape != (n,):
        raise ValueError(f"grad_log_prob must have shape [{n}], got {tuple(grad_log_prob.shape)}")
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if d == 0:
        return grad_v
    if grad_prev_mean is not None:
        if grad_prev_mean.shape != v.shape:
            raise ValueError(f"grad_prev_mean must have v's shape {tuple(v.shape)}, got {tuple(grad_prev_mean.shape)}")
        gm = _common.rows(grad_prev_mean)
    else:
        gm = v2
    chunk, n_chunks = _common.plan_chunks(n, d)
    with guard:
        _sde_step_bwd_kernel[(n, n_chunks)](
            grad_v, grad_log_prob, gm, v2, x2, xp2, coef,
            d, chunk, grad_log_prob.stride(0) if n > 1 else 1,
            _common.row_stride(gm) if grad_prev_mean is not None else 0,
            _common.row_stride(v2), _common.row_stride(x2), _common.row_stride(xp2),
            HAS_GRAD_MEAN=grad_prev_mean is not None, ACC=_common.tl_acc(v.dtype), enable_fp_fusion=_common.FAST,
        )
    return grad_v
