"""Speed and memory measurements behind scripts/benchmark.py (time in ms, memory in MiB).

Timing: warm-up runs, then the median of repeated runs (CUDA synchronised). Memory: on CUDA the peak of
`torch.cuda.max_memory_allocated` above what was allocated before; on CPU the peak of torch's own allocations
during one untimed run, from the profiler's allocation events (the profiler would distort the timings).
Every mLSTM backend is checked against the float64 recurrence on the same head dims at a short sequence before
it is timed; a backend that disagrees is refused, not timed.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ultra_vil.mlstm import mlstm

LOGGER = logging.getLogger(__name__)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeat: int = 5,
            max_seconds: float = 20.0) -> float:
    """Median wall time of `fn` in ms; stops repeating early once `max_seconds` is spent."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times)


def peak_mem_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated by torch while `fn` runs, above what was allocated before, in MiB."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # self_cpu_memory_usage: an op's own allocations (+) and frees (-), without its children's, so nothing is
    # counted twice; summed in time order it is the live total
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def mlstm_inputs(B, NH, S, DH, dtype, device, requires_grad=True, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, NH, S, DH, generator=g) for _ in range(3))
    i = torch.randn(B, NH, S, generator=g)
    f = torch.randn(B, NH, S, generator=g) + 3.0
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v, i, f)]


def check_backend(backend: str, NH: int, DH: int, device: torch.device, dtype: torch.dtype, S: int = 130,
                  chunk_size: int = 64) -> float:
    """Relative error of `backend` (forward and the q-gradient) against the float64 recurrence at a short S.

    Raises RuntimeError when it exceeds the dtype's tolerance (1e-4 float32, 2e-2 bf16/fp16).
    """
    ins = mlstm_inputs(1, NH, S, DH, dtype, device)
    ref_ins = [t.detach().double().cpu().requires_grad_() for t in ins]
    h = mlstm(*ins, backend=backend, chunk_size=chunk_size)
    h.float().sum().backward()
    h_ref = mlstm(*ref_ins, backend="recurrent")
    h_ref.sum().backward()
    err = max(
        ((h.double().cpu() - h_ref).norm() / h_ref.norm()).item(),
        ((ins[0].grad.double().cpu() - ref_ins[0].grad).norm() / ref_ins[0].grad.norm()).item(),
    )
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not math.isfinite(err) or err > tol:
        raise RuntimeError(f"backend {backend!r} disagrees with the float64 reference: rel. error {err:.2e} > {tol}")
    return err


def sdpa_step(q, k, v):
    """Non-causal softmax attention (a ViT block's token mixer), fwd + bwd."""
    F.scaled_dot_product_attention(q, k, v).float().sum().backward()


class TransformerBlock(nn.Module):
    """Pre-norm ViT block (SDPA attention + MLP 4x): (B, S, D) -> (B, S, D). Width-matched baseline."""

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        B, S, D = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, NH, S, DH)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))
        return x + self.mlp(self.norm2(x))
