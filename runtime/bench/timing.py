"""Timing a call many times, and the percentiles every table reports."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int = 10) -> np.ndarray:
    """Seconds per call of `fn`, `iterations` samples after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations, np.float64)
    clock = time.perf_counter
    for i in range(iterations):
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return samples


def summary(samples: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples, np.float64)
    if len(values) == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "n": int(len(values)),
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "mean_ms": float(values.mean() * 1e3),
    }
