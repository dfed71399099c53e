"""Triton residual sums (math and bytes in elbo_kernels/ops/residual_sums.py): kernels and launchers.

The launchers are the bodies of the ops that elbo_kernels/ops/residual_sums.py
registers, with their fake kernels and autograd:

    residual_sums_forward(v, x0, noise?, v_old?, v_ref?, nft_beta, seed, offset) -> [N, 11]
    residual_sums_backward(grad_sums, v, x0, noise?, v_old?, v_ref?, nft_beta, seed, offset) -> dL/dv

Forward: grid (N rows, chunks of D); each program writes its 11 partial sums to
[N, chunks, 11], then a fixed-order torch sum over chunks gives the result (no
atomics). The forward runs one pinned config, never autotuned, so its bits do
not depend on which config a process happened to time fastest
(``_common`` explains what "deterministic" covers). With ``noise`` None, eps
is regenerated from (seed, offset) in-kernel. x0 row n // K is read in place
(no repeat). Backward: one elementwise pass over the same grid (autotuned: an
elementwise result does not depend on the config).

Both kernels compile without FMA fusion (``_common.EXACT``): with fusion, the
regenerated eps = radius * cos(theta) would fold into u = eps - x0 as one
fused multiply-add, while a stored eps tensor is rounded first, and a NoiseSeed
would no longer give the bits of the tensor generated from it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._base import accumulation_dtype, draws_per_sample
from . import _common

# Columns of the output: ops/residual_sums.py SUM_NAMES (tests/ops check the two agree).
NUM_SUMS = 11

@triton.jit(do_not_specialize=["seed", "offset"])
def _residual_sums_fwd_kernel(
    partial_ptr, v_ptr, x0_ptr, eps_ptr, old_ptr, ref_ptr, beta_ptr,
    seed, offset, D, chunk, n_chunks, K,
    stride_v, stride_x0, stride_eps, stride_old, stride_ref,
    HAS_NOISE: tl.constexpr, HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, HAS_NFT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    x0_row = row // K
    s1 = tl.zeros([BLOCK], dtype=ACC)
    s2 = tl.zeros([BLOCK], dtype=ACC)
    o1 = tl.zeros([BLOCK], dtype=ACC)
    o2 = tl.zeros([BLOCK], dtype=ACC)
    k2 = tl.zeros([BLOCK], dtype=ACC)
    r1 = tl.zeros([BLOCK], dtype=ACC)
    r2 = tl.zeros([BLOCK], dtype=ACC)
    p1 = tl.zeros([BLOCK], dtype=ACC)
    p2 = tl.zeros([BLOCK], dtype=ACC)
    m1 = tl.zeros([BLOCK], dtype=ACC)
    m2 = tl.zeros([BLOCK], dtype=ACC)
    if HAS_NFT:
        beta = tl.load(beta_ptr + 0)
        one_minus_beta = tl.load(beta_ptr + 1)
        one_plus_beta = tl.load(beta_ptr + 2)
    for step in range(0, chunk, BLOCK):
        cols = part * chunk + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < D
        v = tl.load(v_ptr + row * stride_v + cols, mask=mask, other=0.0).to(ACC)
        x0 = tl.load(x0_ptr + x0_row * stride_x0 + cols, mask=mask, other=0.0).to(ACC)
        if HAS_NOISE:
            eps = tl.load(eps_ptr + row * stride_eps + cols, mask=mask, other=0.0).to(ACC)
        else:
            # Masked lanes must contribute 0, and a regenerated eps is not 0 there.
            eps = tl.where(mask, tl.randn(seed, offset + row * D + cols).to(ACC), 0.0)
        u = eps - x0
        r = u - v
        s1 += tl.abs(r)
        s2 += r * r
        if HAS_OLD:
            old = tl.load(old_ptr + row * stride_old + cols, mask=mask, other=0.0).to(ACC)
            r_old = u - old
            o1 += tl.abs(r_old)
            o2 += r_old * r_old
            if HAS_NFT:
                r_plus = beta * r + one_minus_beta * r_old
                r_minus = one_plus_beta * r_old - beta * r
                p1 += tl.abs(r_plus)
                p2 += r_plus * r_plus
                m1 += tl.abs(r_minus)
                m2 += r_minus * r_minus
        if HAS_REF:
            ref = tl.load(ref_ptr + row * stride_ref + cols, mask=mask, other=0.0).to(ACC)
            diff = v - ref
            k2 += diff * diff
            r_ref = u - ref
            r1 += tl.abs(r_ref)
            r2 += r_ref * r_ref
    out = partial_ptr + (row * n_chunks + part) * 11
    tl.store(out + 0, tl.sum(s1, axis=0))
    tl.store(out + 1, tl.sum(s2, axis=0))
    tl.store(out + 2, tl.sum(o1, axis=0))
    tl.store(out + 3, tl.sum(o2, axis=0))
    tl.store(out + 4, tl.sum(k2, axis=0))
    tl.store(out + 5, tl.sum(r1, axis=0))
    tl.store(out + 6, tl.sum(r2, axis=0))
    tl.store(out + 7, tl.sum(p1, axis=0))
    tl.store(out + 8, tl.sum(p2, axis=0))
    tl.store(out + 9, tl.sum(m1, axis=0))
    tl.store(out + 10, tl.sum(m2, axis=0))


# The backward reads v_old only for the NFT blends, so it has no HAS_OLD flag
# (one compiled variant fewer per flag combination).
@triton.autotune(configs=_common.autotune_configs(), key=["D", "HAS_NOISE", "HAS_REF", "HAS_NFT"])
@triton.jit(do_not_specialize=["seed", "offset"])
def _residual_sums_bwd_kernel(
    grad_v_ptr, grad_sums_ptr, v_ptr, x0_ptr, eps_ptr, old_ptr, ref_ptr, beta_ptr,
    seed, offset, D, chunk, K,
    stride_g_row, stride_g_col, stride_v, stride_x0, stride_eps, stride_old, stride_ref,
    HAS_NOISE: tl.constexpr, HAS_REF: tl.constexpr, HAS_NFT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    x0_row = row // K
    g_row = grad_sums_ptr + row * stride_g_row
    g_s2 = tl.load(g_row + 1 * stride_g_col).to(ACC)
    if HAS_REF:
        g_k2 = tl.load(g_row + 4 * stride_g_col).to(ACC)
    if HAS_NFT:
        g_p2 = tl.load(g_row + 8 * stride_g_col).to(ACC)
        g_m2 = tl.load(g_row + 10 * stride_g_col).to(ACC)
        beta = tl.load(beta_ptr + 0)
        one_minus_beta = tl.load(beta_ptr + 1)
        one_plus_beta = tl.load(beta_ptr + 2)
    for step in range(0, chunk, BLOCK):
        cols = part * chunk + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < D
        v = tl.load(v_ptr + row * stride_v + cols, mask=mask, other=0.0).to(ACC)
        x0 = tl.load(x0_ptr + x0_row * stride_x0 + cols, mask=mask, other=0.0).to(ACC)
        if HAS_NOISE:
            eps = tl.load(eps_ptr + row * stride_eps + cols, mask=mask, other=0.0).to(ACC)
        else:
            eps = tl.randn(seed, offset + row * D + cols).to(ACC)
        u = eps - x0
        r = u - v
        grad = g_s2 * (-2.0 * r)
        if HAS_REF:
            ref = tl.load(ref_ptr + row * stride_ref + cols, mask=mask, other=0.0).to(ACC)
            grad += g_k2 * 2.0 * (v - ref)
        if HAS_NFT:
            old = tl.load(old_ptr + row * stride_old + cols, mask=mask, other=0.0).to(ACC)
            r_old = u - old
            r_plus = beta * r + one_minus_beta * r_old
            r_minus = one_plus_beta * r_old - beta * r
            grad += g_p2 * (-2.0 * beta) * r_plus + g_m2 * (2.0 * beta) * r_minus
        tl.store(grad_v_ptr + row * D + cols, _common.cast_to(grad, grad_v_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=64)
def _blend_coefficients(g: float, acc: torch.dtype, device: torch.device) -> torch.Tensor:
    """(g, 1 - g, 1 + g) rounded once from Python doubles, as the reference does, in the
    accumulation dtype (a kernel's float argument would be float32). Cached per device: building
    it from a list is a blocking host-to-device copy, which every call would otherwise pay."""
    return torch.tensor([g, 1.0 - g, 1.0 + g], dtype=acc, device=device)


class _Launch:
    """Row views, strides, flags and the beta scalars shared by forward and backward."""

    def __init__(self, op, v, x0, noise, v_old, v_ref, nft_beta, **more):
        self.guard = _common.device_guard(op, v=v, x0=x0, noise=noise, v_old=v_old, v_ref=v_ref, **more)
        self.n = v.shape[0]
        if x0.shape[0] == 0 or self.n % x0.shape[0] != 0:
            raise ValueError(f"{op}: v has {self.n} rows, not a multiple of x0's {x0.shape[0]}")
        self.draws_per_sample = draws_per_sample(self.n, x0)
        self.acc = accumulation_dtype(v.dtype)
        self.v = _common.rows(v)
        self.d = self.v.shape[1]
        self.x0 = _common.rows(x0)
        if self.x0.shape[1] != self.d:
            raise ValueError(f"{op}: x0 rows have {self.x0.shape[1]} elements, v rows {self.d}")
        self.optional = {}
        for name, x in (("noise", noise), ("v_old", v_old), ("v_ref", v_ref)):
            if x is not None:
                if x.shape != v.shape:
                    raise ValueError(f"{op}: {name} must have v's shape {tuple(v.shape)}, got {tuple(x.shape)}")
                x = _common.rows(x)
            self.optional[name] = x
        self.has_nft = v_old is not None and nft_beta > 0
        self.beta = _blend_coefficients(float(nft_beta), self.acc, v.device)

    def ptr_and_stride(self, name):
        x = self.optional[name]
        return (x, _common.row_stride(x)) if x is not None else (self.v, 0)

    def flags(self):
        return dict(
            HAS_NOISE=self.optional["noise"] is not None,
            HAS_REF=self.optional["v_ref"] is not None,
            HAS_NFT=self.has_nft,
            ACC=_common.tl_acc(self.v.dtype),
            enable_fp_fusion=_common.EXACT,
        )


def residual_sums_forward(v, x0, noise, v_old, v_ref, nft_beta, seed, offset) -> torch.Tensor:
    """[N, 11] sums (float32, float64 for float64 v); see the module docstring."""
    launch = _Launch("residual_sums_triton", v, x0, noise, v_old, v_ref, nft_beta)
    if launch.d == 0:
        return torch.zeros(launch.n, NUM_SUMS, dtype=launch.acc, device=v.device)
    chunk, n_chunks = _common.plan_chunks(launch.n, launch.d)
    partial = torch.empty(launch.n, n_chunks, NUM_SUMS, dtype=launch.acc, device=v.device)
    eps, s_eps = launch.ptr_and_stride("noise")
    old, s_old = launch.ptr_and_stride("v_old")
    ref, s_ref = launch.ptr_and_stride("v_ref")
    with launch.guard:
        _residual_sums_fwd_kernel[(launch.n, n_chunks)](
            partial, launch.v, launch.x0, eps, old, ref, launch.beta,
            int(seed), int(offset), launch.d, chunk, n_chunks, launch.draws_per_sample,
            _common.row_stride(launch.v), _common.row_stride(launch.x0), s_eps, s_old, s_ref,
            HAS_OLD=launch.optional["v_old"] is not None, **launch.flags(), **_common.reduce_launch(v.dtype),
        )
    # Fixed-order reduction over chunks (a tiny [N, chunks, 11] tensor): deterministic.
    return partial.sum(dim=1)


def residual_sums_backward(grad_sums, v, x0, noise, v_old, v_ref, nft_beta, seed, offset) -> torch.Tensor:
    """dL/dv in v's dtype and shape (contiguous); one elementwise pass."""
    launch = _Launch("residual_sums_backward_triton", v, x0, noise, v_old, v_ref, nft_beta, grad_sums=grad_sums)
    if grad_sums.shape != (launch.n, NUM_SUMS):
        raise ValueError(f"grad_sums must have shape [{launch.n}, {NUM_SUMS}], got {tuple(grad_sums.shape)}")
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if launch.d == 0:
        return grad_v
    chunk, n_chunks = _common.plan_chunks(launch.n, launch.d)
    eps, s_eps = launch.ptr_and_stride("noise")
    old, s_old = launch.ptr_and_stride("v_old")
    ref, s_ref = launch.ptr_and_stride("v_ref")
    with launch.guard:
        _residual_sums_bwd_kernel[(launch.n, n_chunks)](
            grad_v, grad_sums, launch.v, launch.x0, eps, old, ref, launch.beta,
            int(seed), int(offset), launch.d, chunk, launch.draws_per_sample,
            grad_sums.stride(0), grad_sums.stride(1),
            _common.row_stride(launch.v), _common.row_stride(launch.x0), s_eps, s_old, s_ref,
            **launch.flags(),
        )
    return grad_v
