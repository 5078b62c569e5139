"""The measured peak of tensor memory while a function runs: what the estimates in `memory` are checked against.

On CUDA it is the caching allocator's own peak. On CPU, where torch keeps no such counter, the profiler
records every allocation and free with its address and size; the running sum of those made inside the
window, in time order, peaks where the allocator held the most. Process RSS would add the interpreter,
the libraries and freed-but-kept pages.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch


def _allocations(prof) -> Iterator[tuple[int, int, int]]:
    """(time, address, bytes) of each allocation (bytes > 0) and free (bytes < 0) the profiler saw."""
    allocation = torch._C._profiler._EventType.Allocation
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == allocation and node.extra_fields.device.type == "cpu":
            yield node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size


def _cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """A free counts only when its block was allocated inside the window: once the profiler has run in a process,
    the allocator knows the size of blocks from earlier windows, and the garbage collector may free them in this one."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    inside: dict[int, int] = {}
    live = peak = 0
    for _, _, address, size in sorted((time, size < 0, address, size) for time, address, size in _allocations(prof)):
        if size > 0:
            inside[address] = size
            live += size
        elif address in inside:
            live -= inside.pop(address)
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
