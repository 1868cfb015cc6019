"""Shared timing helper of the benchmark scripts in eval/."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall time of fn() in milliseconds over ``reps`` runs, after one warm-up run
    (CUDA work is synchronised before and after each run)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
