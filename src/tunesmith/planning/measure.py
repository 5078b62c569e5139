"""The measured peak of tensor memory while a function runs: what the estimates in `memory` are checked against.

On CUDA it is the caching allocator's own peak. On CPU, where torch keeps no such counter, the profiler
records every allocation and free with its size; their running sum in time order peaks where the
allocator held the most. Process RSS would add the interpreter, the libraries and freed-but-kept pages.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def _cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return result, peak


def peak_tensor_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """`fn()`'s result and the most bytes of tensors alive at once while it ran (those made before it count on CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device)
    return _cpu_peak(fn)
