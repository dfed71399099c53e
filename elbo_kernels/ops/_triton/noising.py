"""Triton noising x_t = (1 - t) x0 + t eps (math and bytes in elbo_kernels/ops/noising.py).

``noising_forward(x0, t, noise?, draws_per_sample, seed, offset) -> x_t`` is the body of
``elbo_kernels::noising_triton``, which elbo_kernels/ops/noising.py registers with its fake
kernel and autograd: one pass over a (N rows, chunks of D) grid, x0 row n // K read in place, eps
loaded or regenerated from (seed, offset) when ``noise`` is None. x_t has x0's
dtype and shape [N, *S]; arithmetic in float32 (float64 for float64 x0),
without FMA fusion (``_common.EXACT``): x_t equals torch's
``(1 - t) * x0 + t * eps`` in the same dtype bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common


@triton.autotune(configs=_common.autotune_configs(), key=["D", "HAS_NOISE"])
@triton.jit(do_not_specialize=["seed", "offset"])
def _noising_fwd_kernel(
    out_ptr, x0_ptr, t_ptr, eps_ptr,
    seed, offset, D, chunk, K,
    stride_x0, stride_t, stride_eps,
    HAS_NOISE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    t = tl.load(t_ptr + row * stride_t).to(ACC)
    for step in range(0, chunk, BLOCK):
        cols = part * chunk + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < D
        x0 = tl.load(x0_ptr + (row // K) * stride_x0 + cols, mask=mask, other=0.0).to(ACC)
        if HAS_NOISE:
            eps = tl.load(eps_ptr + row * stride_eps + cols, mask=mask, other=0.0).to(ACC)
        else:
            eps = tl.randn(seed, offset + row * D + cols).to(ACC)
        x_t = (1.0 - t) * x0 + t * eps
        tl.store(out_ptr + row * D + cols, _common.cast_to(x_t, out_ptr.dtype.element_ty), mask=mask)


def noising_forward(x0, t, noise, draws_per_sample, seed, offset) -> torch.Tensor:
    guard = _common.device_guard("noising_triton", x0=x0, t=t, noise=noise)
    k = int(draws_per_sample)
    n = x0.shape[0] * k
    if k < 1 or t.shape != (n,):
        raise ValueError(
            f"noising_triton: t must have shape [B * draws_per_sample] = [{n}], got {tuple(t.shape)} "
            f"(draws_per_sample={k})"
        )
    shape = (n,) + tuple(x0.shape[1:])
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noising_triton: noise must have shape {shape}, got {tuple(noise.shape)}")
    out = torch.empty(shape, dtype=x0.dtype, device=x0.device)
    x0_rows = _common.rows(x0)
    d = x0_rows.shape[1]
    if d == 0:
        return out
    eps = _common.rows(noise) if noise is not None else x0_rows
    chunk, n_chunks = _common.plan_chunks(n, d)
    with guard:
        _noising_fwd_kernel[(n, n_chunks)](
            out, x0_rows, t, eps,
            int(seed), int(offset), d, chunk, k,
            _common.row_stride(x0_rows), t.stride(0) if n > 1 else 1,
            _common.row_stride(eps) if noise is not None else 0,
            HAS_NOISE=noise is not None, ACC=_common.tl_acc(x0.dtype), enable_fp_fusion=_common.EXACT,
        )
    return out
