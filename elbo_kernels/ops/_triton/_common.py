"""Shared launch plumbing for the Triton kernels: configs, row views, chunking.

Every kernel here runs over a grid (rows, chunks of D): a program owns CHUNK
consecutive elements of one row and walks them BLOCK at a time. CHUNK is chosen
by the launcher as a multiple of the largest autotuned BLOCK, so the grid and
the partial-sum buffers do not depend on the config autotuning picks: every
config writes every partial slot, and a trial run leaves no stale entries.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from . import interpreting

# GPU: a few vector widths and warp counts to tune over. Interpreter: exactly one
# config (multi-config autotune needs a GPU driver); its BLOCK is small enough
# that the in-chunk loop and its tail mask are exercised by tests with D ~ 300.
_GPU_BLOCKS = ((512, 4), (1024, 4), (2048, 8), (4096, 8))
_INTERPRET_BLOCK = 256
# On a GPU, aim for this many programs in flight so that small N still fills
# the device (132 SMs on an H100, several programs each).
_GPU_TARGET_PROGRAMS = 2048

# Tests set this to force several chunks per row (multi-program reductions).
CHUNK_OVERRIDE = None


def autotune_configs():
    if interpreting():
        return [triton.Config({"BLOCK": _INTERPRET_BLOCK}, num_warps=4)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in _GPU_BLOCKS]


def max_block() -> int:
    return _INTERPRET_BLOCK if interpreting() else max(b for b, _ in _GPU_BLOCKS)


def plan_chunks(n_rows: int, d: int) -> Tuple[int, int]:
    """(chunk, n_chunks): chunk is a multiple of every BLOCK; n_chunks * chunk >= d."""
    step = max_block()
    if CHUNK_OVERRIDE is not None:
        chunk = triton.cdiv(int(CHUNK_OVERRIDE), step) * step
    elif interpreting():
        # ~1.5 ms per program instance: one program per row, looping over D.
        chunk = triton.cdiv(max(d, 1), step) * step
    else:
        wanted = max(1, min(triton.cdiv(d, step), triton.cdiv(_GPU_TARGET_PROGRAMS, n_rows)))
        chunk = triton.cdiv(triton.cdiv(d, wanted), step) * step
    return chunk, triton.cdiv(d, chunk)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / scalar dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


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
