"""Peak memory a callable allocates beyond what is live when it starts.

On CUDA: the caching allocator's peak statistic. On CPU, where torch keeps no
such statistic, the profiler's allocation events are replayed in time order and
the running total's maximum is taken (allocations and frees of the call only).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch


@contextlib.contextmanager
def _native_stderr_silenced():
    """The CPU profiler (kineto) writes "USDT: ... profiler_start/stop" lines straight to file
    descriptor 2 on every use, with no setting to turn them off: point the descriptor at /dev/null
    while it runs (Python errors still raise, and are printed after it is restored)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Raw allocator events (signed byte counts), not the per-op aggregates of prof.events().
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    total = peak = 0
    for _, delta in events:
        total += delta
        peak = max(peak, total)
    return peak
