"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], runs: int, warmup: bool = True) -> float:
    """Median wall seconds of ``runs`` calls of ``fn``, after one untimed warm-up call
    (imports, FFT plans, JIT) unless ``warmup`` is False."""
    if warmup:
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: list[Callable[[], object]], runs: int) -> list[float]:
    """Median wall seconds of each of ``fns``, called in turn (A, B, A, B, ...) ``runs`` times
    after one warm-up call each: an A/B comparison that a loaded machine slows alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
