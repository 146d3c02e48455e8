"""ViL block pair vs a transformer block (and vs the ViL code of another checkout): time, memory, profile.

    python scripts/profile_vil.py                               # 400 / 1600 / 6400 tokens, fwd+bwd, batch 1
    python scripts/profile_vil.py --baseline-src /work/baseline-3c73528   # + that checkout's ViLBlockPair
    python scripts/profile_vil.py --profile 1600                # torch.profiler table of our pair, by self CPU

Models: `ViLBlockPair(dim)` of this checkout ("vil"), `nn.TransformerEncoderLayer(dim, 4, 4 dim,
norm_first=True, batch_first=True, dropout=0)` ("attn", SDPA inside; dropout off so that it does not pay for
a mask ViL does not have), and optionally `ViLBlockPair(dim)` of `--baseline-src` with that checkout's own
mlstm.py ("base"). Each round runs every model once (A, B, C, A, B, C, ...) in this one process, so slow
phases of a shared machine hit all of them alike; the table gives min and median over rounds, and ratios of
the mins and of the medians. Peak memory: torch's own allocations during one extra fwd+bwd (parameter
gradients included), from `peak_mem_mb` of the package's measuring module.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ultra_vil.vil import ViLBlockPair

try:  # the package's one measuring module (issue 9); older checkouts keep it in ultra_vil.benchmark
    from ultra_vil.measure import peak_mem_mb
except ImportError:  # pragma: no cover
    from ultra_vil.benchmark import peak_mem_mb


def load_baseline_pair(src: Path, own_cell: bool = True) -> type[nn.Module]:
    """ViLBlockPair of another checkout, bound to that checkout's own mlstm (loaded under private names), or to
    this checkout's (`own_cell=False`: then the two differ only in the layer around the cell)."""
    mods = {}
    if not own_cell:
        mods["mlstm"] = importlib.import_module("ultra_vil.mlstm")  # the module (the package exports the function)
    for name in ("mlstm", "vil") if own_cell else ("vil",):
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", src / "ultra_vil" / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        if name == "vil":  # its `from ultra_vil.mlstm import mlstm` must find the baseline's cell
            saved = sys.modules.get("ultra_vil.mlstm")
            sys.modules["ultra_vil.mlstm"] = mods["mlstm"]
            try:
                spec.loader.exec_module(mods[name])
            finally:
                sys.modules["ultra_vil.mlstm"] = saved
        else:
            spec.loader.exec_module(mods[name])
    return mods["vil"].ViLBlockPair


def make_step(model: nn.Module, x: torch.Tensor, grid: tuple[int, int] | None, forward_only: bool = False):
    """One fwd+bwd with fresh parameter gradients (so every step allocates them, as a real step does)."""

    def step():
        if forward_only:
            with torch.no_grad():
                return model(x) if grid is None else model(x, grid)
        for p in model.parameters():
            p.grad = None
        y = model(x) if grid is None else model(x, grid)
        y.square().mean().backward()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, nargs="+", default=[400, 1600, 6400], help="square grids only")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-src", type=Path, help="another checkout of ultra-vil to time beside this one")
    parser.add_argument("--baseline-cell", choices=("own", "ours"), default="own",
                        help="run the baseline's layer on its own mlstm.py or on this checkout's")
    parser.add_argument("--no-attn", action="store_true", help="skip the transformer block")
    parser.add_argument("--no-grad", action="store_true", help="time forward only, under torch.no_grad")
    parser.add_argument("--profile", type=int, metavar="TOKENS", help="print a profile of our pair and stop")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time.process_time instead of wall time: the work done, on a machine others load "
                             "too (meaningful with --threads 1; worker threads' spinning counts as work)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {"vil": (ViLBlockPair(args.dim), True)}
    if not args.no_attn:
        attn = nn.TransformerEncoderLayer(args.dim, 4, 4 * args.dim, dropout=0.0, norm_first=True, batch_first=True)
        models["attn"] = (attn, False)
    if args.baseline_src:
        base = load_baseline_pair(args.baseline_src, args.baseline_cell == "own")(args.dim)
        base.load_state_dict(models["vil"][0].state_dict())  # same weights: the checkpoint contract
        models["base"] = (base, True)

    if args.profile:
        side = int(round(args.profile**0.5))
        x = torch.randn(args.batch, side * side, args.dim)
        step = make_step(models["vil"][0], x, (side, side))
        for _ in range(2):
            step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return

    print(f"# dim {args.dim}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds, "
          f"{'forward (no_grad)' if args.no_grad else 'fwd+bwd'}, fp32, {'CPU' if args.cpu_time else 'wall'} ms")
    names = list(models)
    cols = ["tokens"] + [f"{n} min / med ms" for n in names] + [f"vil/{r} min, med" for r in names if r != "vil"]
    cols += [f"{n} peak MiB" for n in names] + [f"vil/{r} MiB" for r in names if r != "vil"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for tokens in args.tokens:
        side = int(round(tokens**0.5))
        grid = (side, side)
        x = torch.randn(args.batch, side * side, args.dim)
        steps = {}
        for n, (model, is_vil) in models.items():
            steps[n] = make_step(model, x, grid if is_vil else None, args.no_grad)
            steps[n]()  # warm-up
        times = {n: [] for n in names}
        clock = time.process_time if args.cpu_time else time.perf_counter
        for _ in range(args.rounds):
            for n in names:
                t0 = clock()
                steps[n]()
                times[n].append((clock() - t0) * 1e3)
        mem = {n: peak_mem_mb(steps[n], torch.device("cpu")) for n in names}
        mins = {n: min(t) for n, t in times.items()}
        meds = {n: statistics.median(t) for n, t in times.items()}
        row = [str(side * side)] + [f"{mins[n]:.1f} / {meds[n]:.1f}" for n in names]
        row += [f"{mins['vil'] / mins[r]:.2f}x, {meds['vil'] / meds[r]:.2f}x" for r in names if r != "vil"]
        row += [f"{mem[n]:.1f}" for n in names] + [f"{mem['vil'] / mem[r]:.2f}x" for r in names if r != "vil"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
