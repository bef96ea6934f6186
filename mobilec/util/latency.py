"""Timing one invocation of a model, the same way for every runtime (and in runtime child
processes, which import this and numpy only: a child's start-up is part of what it costs)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def measure_latency(invoke: Callable[[], Any], warmup: int = 5, runs: int = 50,
                    budget_s: float = 2.0) -> dict[str, float]:
    """Median and p90 of single invocations, after warm-up; stops early past budget_s."""
    for _ in range(warmup):
        invoke()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median": round(statistics.median(times), 4), "p90": round(p90, 4), "runs": len(times)}
