"""Wall-clock timing of callables, in ms: repeated calls, and contenders interleaved round by round.

`compare_interleaved` runs contenders in turns (A, B, A, B, ...) so that each sees the same machine noise (a shared
2-core CPU drifts by 2x within a minute); ratios are min/min and median/median, never one run of A against a later
run of B. CUDA work is synchronised around every timed call (kernels are asynchronous).

Imports only torch and the standard library: the benchmark's worker processes, which import another checkout's
`ultra_vil`, load this file by its path (ultra_vil/bench/workers.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work (kernels are asynchronous: without this a timer measures the launch only)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timings_ms(fn: Callable[[], object], device: torch.device | str | None = None, warmup: int = 2, repeat: int = 5,
               max_seconds: float | None = None) -> list[float]:
    """Wall times of `repeat` calls of `fn` after `warmup` untimed ones (CUDA synchronised around each call).

    With `max_seconds`, stops repeating once that much time is spent (at least one timed call).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return times


def time_ms(fn: Callable[[], object], device: torch.device | str | None = None, warmup: int = 2, repeat: int = 5,
            max_seconds: float | None = None) -> float:
    """Median of `timings_ms` (the median, not the mean: one descheduled run must not move it)."""
    return statistics.median(timings_ms(fn, device, warmup, repeat, max_seconds))


def compare_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1,
                        device: torch.device | str | None = None, max_seconds: float | None = None,
                        min_rounds: int = 2) -> dict[str, dict]:
    """Time contenders in turns: warm-up A, B, ...; then rounds of A, B, ... (one call each per round).

    Returns {name: {"min": ms, "median": ms, "times": [ms per round]}}. With `max_seconds`, stops after the round
    in which that much time was spent (but runs at least `min_rounds`), so a slow machine still finishes.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and r + 1 >= min_rounds and time.perf_counter() - start > max_seconds:
            break
    return {name: {"min": min(t), "median": statistics.median(t), "times": t} for name, t in times.items()}


def ratios(results: dict[str, dict], a: str, b: str) -> tuple[float, float]:
    """(min_a / min_b, median_a / median_b): how many times slower a is than b, by both statistics."""
    return results[a]["min"] / results[b]["min"], results[a]["median"] / results[b]["median"]
