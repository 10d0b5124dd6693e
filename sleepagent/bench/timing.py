"""Timing helpers every benchmark shares: a median timer that waits for the GPU, and percentiles.

A CUDA kernel returns before it finishes, so each timed call synchronises the device first and
last; without that the numbers measure the launch, not the work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["percentile_ms", "sync", "timeit"]


def percentile_ms(xs: list[float], q: float) -> float:
    """The q-quantile of seconds ``xs``, in milliseconds (0 for no samples)."""
    return 1e3 * sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], *, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
