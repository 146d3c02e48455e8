"""Peak memory, in MiB: of one call (torch's allocations) and of a long block (a whole training run).

- `peak_mem_mb(fn, device)`: on CUDA the allocator's `max_memory_allocated` above what was allocated before; on CPU
  torch keeps no such counter, so `cpu_memory_mb` replays the profiler's allocation events of one untimed run (the
  profiler distorts timings, so it never runs while timing).
- `peak_memory(device)`: for a block where the profiler is far too slow (training), CUDA's allocator peak or, on
  CPU, the process's resident-set high-water mark (Linux VmHWM).

Imports only torch and the standard library: the benchmark's worker processes, which import another checkout's
`ultra_vil`, load this file by its path (ultra_vil/bench/workers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Kineto (the profiler's C++ backend) reads its log level once, when the profiler first starts in a process. Its
# levels run from VERBOSE = 0 to USDT = 5; at its default it prints `USDT: profiler_start` / `profiler_stop` for
# every profiled call and, on a machine without a GPU, `ERROR: gpuGetDeviceCount failed`. 6 is above them all.
KINETO_LOG_ENV, KINETO_QUIET = "KINETO_LOG_LEVEL", "6"


@contextmanager
def quiet_kineto() -> Iterator[None]:
    """KINETO_LOG_LEVEL=6 while the block runs (kineto's first start in the process reads it), then unset again;
    a level the user set is left as it is. Errors of the profiler itself still raise in Python."""
    if KINETO_LOG_ENV in os.environ:
        yield
        return
    os.environ[KINETO_LOG_ENV] = KINETO_QUIET
    try:
        yield
    finally:
        os.environ.pop(KINETO_LOG_ENV, None)


def cpu_memory_mb(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(peak, net at the end) of torch's CPU allocations while `fn` runs, in MiB, and fn's result.

    From the profiler's raw allocation events ([memory], +bytes / -bytes) in time order: the per-op
    self_cpu_memory_usage undercounts allocations made inside a custom autograd.Function (its frees are booked on
    the enclosing op), which is where the mLSTM's forward and backward run.
    """
    from torch.profiler import ProfilerActivity, profile

    with quiet_kineto(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
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
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
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
    """The `key:` line of /proc/self/status (in kB there) in MiB; None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
