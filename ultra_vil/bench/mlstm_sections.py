"""The benchmark's mLSTM sections: (a) every backend against PyTorch SDPA over S, and the dispatch grid that
chooses the thresholds of `mlstm(backend="auto")` and writes them in mlstm_dispatch.json's one format.

Every backend passes the float64 guard (ultra_vil.bench.guard) before it is timed. Timed steps are fwd + bwd of
q, k, v (B, NH, S, DH) and gates (B, NH, S); on CUDA in bfloat16, on CPU in float32.
"""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ultra_vil.bench import guard
from ultra_vil.bench.memory import peak_mem_mb
from ultra_vil.bench.sizes import Preset, compare
from ultra_vil.bench.report import row
from ultra_vil.bench.timing import ratios
from ultra_vil.mlstm.dispatch import DISPATCH_TABLE_PATH, pick_backend, read_dispatch, write_dispatch

LOGGER = logging.getLogger(__name__)


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the dtype's key in the dispatch table."""
    return str(dtype).removeprefix("torch.")


def mlstm_dtype(device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def auto_choice(S, device, dtype) -> str:
    """The backend `auto` runs at S with the package table as loaded ("?" where select_backend cannot say)."""
    from ultra_vil.mlstm import select_backend

    try:
        return select_backend(S, device, dtype)
    except TypeError:  # a changed signature: report what we can
        return "?"


def mlstm_step(ins, backend):
    """fwd + bwd of `guard.mlstm` on the inputs `ins` (q, k, v, i, f) with `backend`."""
    def step():
        guard.mlstm(*ins, backend=backend).float().sum().backward()

    return step


def sdpa_step(q, k, v):
    """Non-causal softmax attention (a ViT block's token mixer), fwd + bwd."""
    F.scaled_dot_product_attention(q, k, v).float().sum().backward()


# ------------------------------------------------------------------------------------------------ (a) mLSTM
def bench_mlstm(preset: Preset, device, triton: bool, notes: list[str]) -> list[dict]:
    """(a) fwd+bwd of each backend and of SDPA over S, interleaved at each S; peak memory of one untimed run."""
    Bsz, NH, DH = preset.mlstm_shape
    dtype = mlstm_dtype(device)
    budget = torch.cuda.get_device_properties(device).total_memory * 0.5 if device.type == "cuda" else 3 * 2**30
    backends = guard.guarded_backends(["parallel", "chunkwise", "recurrent"] + (["triton"] if triton else []), NH,
                                      DH, device, dtype, notes)  # fmt: skip
    rows = []
    for S in preset.mlstm_seqs:
        fns, skipped = {}, {}
        for be in [*backends, "auto"]:
            chosen = auto_choice(S, device, dtype) if be == "auto" else be
            if chosen == "parallel" and Bsz * NH * S * S * 4 * 6 > budget:
                skipped[be] = "skipped: O(S^2) memory"
            elif chosen == "recurrent" and S > preset.recurrent_max_seq:
                skipped[be] = "skipped: step loop too slow at this S"
            else:
                fns[be] = mlstm_step(guard.mlstm_inputs(Bsz, NH, S, DH, dtype, device), be)
        q, k, v = (torch.randn(Bsz, NH, S, DH, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        fns["sdpa"] = lambda q=q, k=k, v=v: sdpa_step(q, k, v)
        res = compare(fns, preset, device)
        for name, r in res.items():
            mem = peak_mem_mb(fns[name], device)
            note = f"B={Bsz} NH={NH} DH={DH} {dtype_name(dtype)}"
            note += f", -> {auto_choice(S, device, dtype)}" if name == "auto" else ""
            rows.append(row("mlstm", name, S, r, mem, vs="sdpa", ratio=ratios(res, name, "sdpa"), note=note))
            LOGGER.info("mlstm %-9s S=%5d min %9.2f ms median %9.2f ms  %7.1f MiB", name, S, r["min"], r["median"], mem)
        rows += [row("mlstm", name, S, note=why) for name, why in skipped.items()]
    return rows


# --------------------------------------------------------------------------------------------- dispatch table
def pick_thresholds(grid: dict[int, dict[str, dict]], stat: str = "min") -> dict:
    """Thresholds that make the dispatch rule (`ultra_vil.mlstm.dispatch.pick_backend`) fastest over a grid.

    Args:
        grid: {S: {backend: {"min": ms, "median": ms, ...}}} from interleaved runs; missing backends were not run.
        stat: "min" (default: noise on a shared machine only ever adds time) or "median".

    Returns:
        {"parallel_max_seq": N, "triton_min_seq": N or None}: of all thresholds at grid points (0 = never
        parallel, None = never triton) the pair with the smallest summed slowdown vs the fastest backend at
        each S; ties go to the smaller parallel threshold (its memory grows as S^2).
    """
    seqs = sorted(grid)
    has_triton = any("triton" in grid[S] for S in seqs)
    best = {S: min(v[stat] for k, v in grid[S].items() if k in ("parallel", "chunkwise", "triton")) for S in seqs}
    choice, choice_cost = None, math.inf
    for pmax in [0, *seqs]:
        for tmin in ([None, *seqs] if has_triton else [None]):
            entry = {"parallel_max_seq": pmax, "triton_min_seq": tmin}
            cost = 0.0
            for S in seqs:
                picked = grid[S].get(pick_backend(S, entry, triton=has_triton))
                cost += math.inf if picked is None else picked[stat] / best[S]
            if cost < choice_cost - 1e-9:
                choice, choice_cost = entry, cost
    if choice is None:  # nothing comparable was measured (e.g. only chunkwise ran): never parallel
        choice = {"parallel_max_seq": 0, "triton_min_seq": None}
    return choice


def bench_dispatch(preset: Preset, device, triton: bool, notes: list[str]) -> tuple[list[dict], dict]:
    """Thresholds of `auto` per dtype from an interleaved grid; `auto` (as dispatched now) timed alongside.

    Returns (rows, {device type: {dtype name: entry}}), the measured part of a dispatch table."""
    Bsz, NH, DH = preset.dispatch_shape
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if device.type == "cuda" else [torch.float32]
    rows, measured = [], {}
    for dtype in dtypes:
        backends = guard.guarded_backends(["parallel", "chunkwise"] + (["triton"] if triton else []), NH, DH,
                                          device, dtype, notes)  # fmt: skip
        grid = {}
        for S in preset.dispatch_seqs:
            fns = {be: mlstm_step(guard.mlstm_inputs(Bsz, NH, S, DH, dtype, device), be)
                   for be in [*backends, "auto"]}  # fmt: skip
            grid[S] = compare(fns, preset, device)
        entry = pick_thresholds({S: {k: v for k, v in r.items() if k != "auto"} for S, r in grid.items()})
        measured[dtype_name(dtype)] = entry
        for S, res in grid.items():
            fastest = min((k for k in res if k != "auto"), key=lambda k: res[k]["min"])
            picked = pick_backend(S, entry, triton="triton" in res)
            for name, r in res.items():
                note = f"-> {auto_choice(S, device, dtype)} (package table)" if name == "auto" else ""
                if name == picked:
                    note = (note + "; " if note else "") + "picked by the measured table"
                rows.append(row("dispatch", f"{name} {dtype_name(dtype)}", S, r, vs=f"fastest ({fastest})",
                                ratio=ratios(res, name, fastest), note=note))  # fmt: skip
        LOGGER.info("dispatch %s %s: %s", device.type, dtype_name(dtype), entry)
    return rows, {device.type: measured}


def save_dispatch(measured: dict, out_dir: Path, preset: Preset, preset_name: str, machine: str, update: bool,
                  notes: list[str]) -> dict:
    """Write the measured thresholds over the package table's other entries to out_dir/mlstm_dispatch.json and,
    with `update`, to the package copy that `auto` reads (DISPATCH_TABLE_PATH). Returns the table written."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    shape = "B={} NH={} DH={}".format(*preset.dispatch_shape)
    comment = (f"mlstm(backend='auto') thresholds, fwd+bwd {shape}, preset {preset_name}: measured by "
               f"scripts/benchmark.py on {machine}, {stamp}")
    base = read_dispatch(DISPATCH_TABLE_PATH)
    table = write_dispatch(out_dir / "mlstm_dispatch.json", measured, comment, base)
    if update:
        write_dispatch(DISPATCH_TABLE_PATH, measured, comment, base)
        where = Path(*DISPATCH_TABLE_PATH.parts[-3:])  # ultra_vil/mlstm/mlstm_dispatch.json
        notes.append(f"wrote {where} (auto above ran with the previous table)")
    return table
