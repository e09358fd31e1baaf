"""Timing of one GPU (or CPU) call for the kernel benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def mean_ms(run: Callable[[], object], warmup: int, steps: int, device: torch.device) -> float:
    """Mean milliseconds of ``run()`` over ``steps`` calls after ``warmup`` calls. On CUDA it is timed
    with events around the whole loop, so the host's launch overhead overlaps the kernels as in training."""
    for _ in range(warmup):
        run()
    if device.type != "cuda":
        started = time.perf_counter()
        for _ in range(steps):
            run()
        return (time.perf_counter() - started) * 1e3 / steps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps
