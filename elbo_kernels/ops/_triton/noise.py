"""Triton generator of the counter-based noise (spec in elbo_kernels/ops/noise.py).

``generate_noise_forward(like, seed, offset)`` is the body of
``elbo_kernels::generate_noise_triton(Tensor like, int seed, int offset) -> Tensor``,
which elbo_kernels/ops/noise.py registers with its fake kernel: eps with like's
shape, device and dtype (float32 values cast to like's dtype), flat index i
drawing ``tl.randn(seed, offset + i)``. Writes numel * E bytes.

Autotuned once per dtype and process (key=[]): a pure write kernel whose best
BLOCK does not follow the tensor size, so a new shape does not tune again.
Compiled without FMA fusion (``_common.EXACT``), like the kernels that
regenerate the same eps in place, so a NoiseSeed and the tensor generated from
it give the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common


@triton.autotune(configs=_common.autotune_configs(), key=[])
@triton.jit(do_not_specialize=["seed", "offset"])
def _generate_noise_kernel(out_ptr, seed, offset, numel, chunk, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * chunk
    for step in range(0, chunk, BLOCK):
        # int64 indices: tl.randn fills the counter's high word only from a 64-bit offset.
        index = start + step + tl.arange(0, BLOCK).to(tl.int64)
        mask = index < numel
        eps = tl.randn(seed, offset + index)
        tl.store(out_ptr + index, _common.cast_to(eps, out_ptr.dtype.element_ty), mask=mask)


def generate_noise_forward(like: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    guard = _common.device_guard("generate_noise_triton", like=like)
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    numel = out.numel()
    if numel == 0:
        return out
    chunk, n_chunks = _common.plan_chunks(1, numel)
    with guard:
        _generate_noise_kernel[(n_chunks,)](out, int(seed), int(offset), numel, chunk, enable_fp_fusion=_common.EXACT)
    return out
