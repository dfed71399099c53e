"""Shared launch plumbing for the Triton kernels: configs, row views, chunking, device.

Every kernel here runs over a grid (rows, chunks of D): a program owns CHUNK
consecutive elements of one row and walks them BLOCK at a time. CHUNK is chosen
by the launcher as a multiple of the largest BLOCK, so the grid and the
partial-sum buffers do not depend on the config: every config writes every
partial slot, and an autotune trial leaves no stale entries.

Determinism. Elementwise kernels (noising, generate_noise, the backwards)
compute each output from its own inputs only, so any autotuned config gives the
same bits. Reductions (residual_sums, sde_step forward) are NOT autotuned: their
BLOCK and num_warps are pinned (``reduce_launch``), because both set the
order in which a program adds its elements (lanes of BLOCK, then tl.sum's
tree over the threads and warps), and autotuning times configs afresh in each
process, so two processes could otherwise pick different configs and give
different bits. With the pinned config, the chunking of ``plan_chunks`` (a
function of N and D only) and torch's fixed sum over chunks, the sums are
bitwise reproducible run to run and across processes for the same shape, GPU
architecture and triton version. They are not batch-invariant (a row's chunking
follows N) and need not match the "cpu" or "cuda" backends bit for bit.

FMA. Each launch passes ``enable_fp_fusion`` explicitly (triton 3.9 fuses
a * b + c into one rounding by default and warns that the default changes in
3.10). Kernels whose results users compare bitwise (noising against
``(1 - t) x0 + t eps`` in torch; a NoiseSeed against the eps tensor it
generates) use ``EXACT`` = no fusion: every product and sum rounds as torch
eager rounds it. These kernels are bound by memory traffic, so fusion would not
make them measurably faster; only the sde_step backward, which has no bitwise
contract, keeps fusion (``FAST``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from .._base import accumulation_dtype
from . import interpreting

# GPU: a few vector widths and warp counts to tune over. Interpreter: exactly one
# config (multi-config autotune needs a GPU driver); its BLOCK is small enough
# that the in-chunk loop and its tail mask are exercised by tests with D ~ 300.
_GPU_BLOCKS = ((512, 4), (1024, 4), (2048, 8), (4096, 8))
_INTERPRET_BLOCK = 256
# On a GPU, aim for this many programs in flight so that small N still fills
# the device (132 SMs on an H100, several programs each).
_GPU_TARGET_PROGRAMS = 2048

# Reductions: one pinned config per accumulation dtype (module docstring). BLOCK
# 1024 over 4 warps keeps the 11 float32 accumulators of residual_sums at 8
# values a thread, well inside 255 registers (the 4096 x 8-warp config used
# 198-255 registers and spilled); float64 accumulators take twice the
# registers, so they spread over 8 warps.
_GPU_REDUCE_BLOCK = 1024
_GPU_REDUCE_WARPS = {torch.float32: 4, torch.float64: 8}

# Launch option for enable_fp_fusion (module docstring).
EXACT = False
FAST = True

# Tests set this to force several chunks per row (multi-program reductions).
CHUNK_OVERRIDE = None


# ELBO_KERNELS_TRITON_AUTOTUNE=0: the elementwise kernels run one config (the first of
# _GPU_BLOCKS) instead of timing all of them per shape. Same bits (they are elementwise), a
# quarter of the compiles: what a correctness run that compiles hundreds of shapes wants
# (scripts/gpu_check.py sets it for its test step, never for its benchmark).
AUTOTUNE_ENV = "ELBO_KERNELS_TRITON_AUTOTUNE"


def autotune_configs():
    """Configs of the elementwise kernels (their results do not depend on the config)."""
    if interpreting():
        return [triton.Config({"BLOCK": _INTERPRET_BLOCK}, num_warps=4)]
    blocks = _GPU_BLOCKS[:1] if os.environ.get(AUTOTUNE_ENV, "1").strip() == "0" else _GPU_BLOCKS
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in blocks]


def reduce_launch(dtype: torch.dtype) -> dict:
    """BLOCK and num_warps of a reduction kernel for inputs of ``dtype`` (pinned, never tuned)."""
    if interpreting():
        return dict(BLOCK=_INTERPRET_BLOCK, num_warps=4)
    return dict(BLOCK=_GPU_REDUCE_BLOCK, num_warps=_GPU_REDUCE_WARPS[accumulation_dtype(dtype)])


def max_block() -> int:
    return _INTERPRET_BLOCK if interpreting() else max(b for b, _ in _GPU_BLOCKS)


def plan_chunks(num_rows: int, d: int) -> Tuple[int, int]:
    """(chunk, n_chunks): chunk is a multiple of every BLOCK; n_chunks * chunk >= d."""
    step = max_block()
    if CHUNK_OVERRIDE is not None:
        chunk = triton.cdiv(int(CHUNK_OVERRIDE), step) * step
    elif interpreting():
        # ~1.5 ms per program instance: one program per row, looping over D.
        chunk = triton.cdiv(max(d, 1), step) * step
    else:
        wanted = max(1, min(triton.cdiv(d, step), triton.cdiv(_GPU_TARGET_PROGRAMS, num_rows)))
        chunk = triton.cdiv(triton.cdiv(d, wanted), step) * step
    return chunk, triton.cdiv(d, chunk)


def tl_acc(dtype: torch.dtype):
    """The Triton type of ``accumulation_dtype(dtype)`` (ops/_base.py)."""
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


def rows(x: torch.Tensor) -> torch.Tensor:
    """Flat [rows, D] view with unit inner stride (a copy only when no such view exists).

    Row strides are passed to the kernels, so row-sliced batches (x[::2]) and
    x0 expanded over rows (stride 0) are read in place; anything else strided is
    made contiguous here rather than misread.
    """
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def row_stride(x2: torch.Tensor) -> int:
    return x2.stride(0) if x2.shape[0] > 1 else x2.shape[1]


def check_device(op: str, *tensors) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter."""
    for x in tensors:
        if x is None:
            continue
        if x.device.type == "cuda":
            continue
        if x.device.type == "cpu" and interpreting():
            continue
        raise ValueError(
            f"{op}: the Triton backend runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
            f"got a tensor on {x.device}"
        )


def device_guard(op: str, **tensors):
    """Checks the tensors' devices and returns a context that makes theirs the current one.

    Triton launches on the current CUDA device, not on the tensors' device, so
    without the guard tensors on cuda:1 would be read by a kernel running on
    cuda:0 (the CUDA backend has CUDAGuard for the same reason). Raises
    ValueError naming the first argument on another device than the first one.
    """
    present = {name: x for name, x in tensors.items() if x is not None}
    first_name, first = next(iter(present.items()))
    for name, x in present.items():
        if x.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {x.device} but {first_name} is on {first.device}; "
                "all tensors must be on one device"
            )
    check_device(op, first)
    if first.device.type == "cuda":
        return torch.cuda.device(first.device)
    return contextlib.nullcontext()


@triton.jit
def cast_to(x, DTYPE: tl.constexpr):
    """x (float32 / float64) cast to DTYPE, rounding to nearest even.

    bfloat16 is rounded by hand because the Triton interpreter (3.9) truncates
    float32 -> bfloat16 casts instead of rounding; the bit arithmetic below
    rounds to nearest even on every target, so GPU and interpreter agree with
    torch's ``.to(torch.bfloat16)``.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # keep NaN a NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)
