"""Interleaved timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time


def time_interleaved(fns: dict, repeat: int, warmup: int = 3, budget_s: float = 8.0) -> dict:
    """{key: (median, min) seconds}: the functions are timed in interleaved rounds (one call
    of each per round, after warm-up), so load from other processes hits them alike; stops after
    ``budget_s`` once every function has 5 rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in fns}
    start = time.perf_counter()
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times[next(iter(fns))]) >= 5:
            break
    return {key: (statistics.median(v), min(v)) for key, v in times.items()}
