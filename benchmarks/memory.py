"""Peak memory a callable allocates beyond what is live when it starts.

On CUDA: the caching allocator's peak statistic. On CPU, where torch keeps no
such statistic, the profiler's allocation events are replayed in time order and
the running total's maximum is taken (allocations and frees of the call only).
"""

from __future__ import annotations

from typing import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
