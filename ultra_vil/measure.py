"""Device resolution, timing and peak memory: the one copy, used by scripts/benchmark.py and scripts/compare.py.

Times are in ms, memory in MiB. Why the helpers look the way they do:
- `compare_interleaved` runs contenders in turns (A, B, A, B, ...) so that each sees the same machine noise
  (a shared 2-core CPU drifts by 2x within a minute); report min/min and median/median ratios, not one run
  of A against a later run of B.
- Peak memory on CUDA is `max_memory_allocated` above what was allocated before; on CPU torch keeps no such
  counter, so `peak_mem_mb` replays the profiler's allocation events of one untimed run (the profiler would
  distort timings, so it never runs while timing). For a whole training run (where the profiler is far too
  slow) `peak_memory` reads the process's resident-set high-water mark on CPU instead.

This module imports only torch and the standard library: scripts/benchmark.py loads it by file path in child
processes that import another checkout of ultra_vil (see ultra_vil/benchmark.py).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

try:  # the CLIs print UserError as one line; a child process of another checkout may not have it
    from ultra_vil.errors import UserError

    _BASES: tuple[type, ...] = (UserError, RuntimeError)
except ImportError:  # pragma: no cover - only in benchmark children of old checkouts
    _BASES = (RuntimeError,)


class DeviceError(*_BASES):
    """A device string that is malformed or names hardware this machine does not have.

    A RuntimeError too, which is what ultra_vil.train.distributed raised before it used this module.
    """


# ------------------------------------------------------------------------------------------------------- device
def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The torch.device for a user's device string.

    'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' -> cuda:<local_rank>; 'cpu'; 'cuda:N';
    and Ultralytics' single-device form 'N' (= cuda:N). Several devices ('0,1') are refused: one process drives
    one device here, and torchrun (or Ultralytics' own DDP launcher) starts one process per device.

    Raises:
        DeviceError: malformed, no CUDA on this machine, or N beyond the visible devices.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = str(spec).strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return torch.device("cpu")
    if "," in s:
        raise DeviceError(f"--device {spec}: several devices; give one (cpu, cuda, cuda:N or N); for several GPUs "
                          "start one process per device with torchrun")  # fmt: skip
    m = re.fullmatch(r"(?:cuda(?::(\d+))?|(\d+))", s)
    if not m:
        raise DeviceError(f"--device must be auto, cpu, cuda, cuda:N or N, got {spec!r}")
    number = m.group(1) or m.group(2)  # None for a bare 'cuda'
    index = int(number) if number is not None else local_rank
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: CUDA is not available on this machine")
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def ultralytics_device(device: torch.device | str) -> str:
    """Ultralytics' spelling of one device: 'cpu' or the CUDA index ('0'), as its `device=` argument wants."""
    device = torch.device(device)
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def device_name(device: torch.device) -> str:
    """A human name for the report: the GPU's name, else the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def sync(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work (kernels are asynchronous: without this a timer measures the launch only)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------- timing
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


# ------------------------------------------------------------------------------------------------------- memory
def cpu_memory_mb(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(peak, net at the end) of torch's CPU allocations while `fn` runs, in MiB, and fn's result.

    From the profiler's raw allocation events ([memory], +bytes / -bytes) in time order: the per-op
    self_cpu_memory_usage undercounts allocations made inside a custom autograd.Function (its frees are booked on
    the enclosing op), which is where the mLSTM's forward and backward run.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20, current / 2**20, out


def peak_mem_mb(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak memory allocated by torch while `fn` runs, above what was allocated before, in MiB."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return cpu_memory_mb(fn)[0]


class PeakMemory:
    """What `peak_memory` yields: `.mb` is the peak in MiB above the start (None where it cannot be read)."""

    mb: float | None = None
    kind: str = ""


@contextmanager
def peak_memory(device: torch.device | str) -> Iterator[PeakMemory]:
    """Peak memory of a long block (a whole training run): CUDA allocator peak, or on CPU the process's RSS peak.

    CPU: Linux's VmHWM is reset on entry (writing 5 to /proc/self/clear_refs) and read on exit, minus the RSS
    at entry; it counts everything resident (also non-torch memory), not only torch allocations.
    """
    device = torch.device(device)
    out = PeakMemory()
    if device.type == "cuda":
        out.kind = "cuda max_memory_allocated"
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        sync(device)
        out.mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    out.kind = "process peak RSS (VmHWM)"
    base = reset_peak_rss()
    yield out
    peak = peak_rss_mb()
    out.mb = None if peak is None else peak - base


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process, return the current RSS in MiB (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float | None:
    """This process's resident-set high-water mark in MiB (VmHWM; getrusage where /proc is missing)."""
    value = _status_mb("VmHWM")
    if value is None:
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:
            return None
    return value


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
