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
