"""Timing shared by the benchmarks."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 1, wall: bool = False) -> tuple[float, Any]:
    """Fastest time of `repeat` calls of `fn` (process CPU time on the CPU, robust to a shared machine; wall time
    with a GPU or with `wall`), and its last result."""
    clock = time.perf_counter if device.type == "cuda" or wall else time.process_time
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return best, out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for a benchmark's printout (the machines are shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
