#!/usr/bin/env python3
"""Eager against torch.compile: ViLBlockPair(dim) and the width-matched transformer layer (dropout 0), fwd+bwd.

    python scripts/compile_speed.py                          # 400 and 1600 tokens, dim 256, batch 1, 1 thread
    python scripts/compile_speed.py --tokens 400 --rounds 10 --out-dir runs/compile-speed

All four contenders (pair and layer, each eager and compiled with inductor) run in turns in one process (A, B, C, D,
A, ...), so they share the machine's noise; the table gives min and median over rounds and the ratios the targets
name (compiled pair / compiled layer, eager pair / eager layer, compiled / eager of each). Compile time (the first
call's extra time, forward and backward) is reported apart. Writes compile_speed.csv and compile_speed.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ultra_vil.bench.timing import compare_interleaved
from ultra_vil.vil import ViLBlockPair


def side(tokens: int) -> tuple[int, int]:
    """A near-square grid with H * W = tokens."""
    h = int(tokens**0.5)
    while tokens % h:
        h -= 1
    return h, tokens // h


def contenders(dim: int, tokens: int, batch: int) -> tuple[dict, dict]:
    """{name: fwd+bwd step} for pair / layer, eager / compiled; and {name: compile seconds} of the compiled ones."""
    torch.manual_seed(0)
    grid = side(tokens)
    pair = ViLBlockPair(dim)
    layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, norm_first=True, batch_first=True)
    x = torch.randn(batch, tokens, dim, requires_grad=True)
    fns = {"pair": lambda t: pair(t, grid), "layer": layer}
    steps, compile_s = {}, {}
    for name, fn in fns.items():
        for mode in ("eager", "compiled"):
            f = torch.compile(fn, dynamic=False) if mode == "compiled" else fn

            def step(f=f):
                f(x).sum().backward()

            if mode == "compiled":
                t0 = time.perf_counter()
                step()  # the compile: forward and backward graphs
                compile_s[f"{name}_{mode}"] = time.perf_counter() - t0
            steps[f"{name}_{mode}"] = step
    return steps, compile_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--tokens", type=int, nargs="+", default=[400, 1600])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=Path("runs/compile-speed"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for tokens in args.tokens:
        steps, compile_s = contenders(args.dim, tokens, args.batch)
        res = compare_interleaved(steps, rounds=args.rounds, warmup=1)
        for name, r in res.items():
            rows.append({"tokens": tokens, "name": name, "min_ms": round(r["min"], 2), "median_ms": round(r["median"], 2),
                         "compile_s": round(compile_s.get(name, 0.0), 1)})  # fmt: skip
        print(f"{tokens} tokens: " + ", ".join(f"{n} {r['min']:.1f} ms" for n, r in res.items()), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "compile_speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = {(r["tokens"], r["name"]): r for r in rows}
    lines = [f"# Eager vs torch.compile, fwd+bwd, dim {args.dim}, batch {args.batch}, {args.threads} thread(s)", "",
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.rounds} interleaved "
             "rounds; ratios min/min and median/median.", "",
             "| tokens | ms (min): pair eager / compiled, layer eager / compiled | compiled pair / compiled layer | "
             "eager pair / eager layer | pair compiled / eager | layer compiled / eager | compile s (pair, layer) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for tokens in args.tokens:
        g = {n: by[(tokens, n)] for n in ("pair_eager", "pair_compiled", "layer_eager", "layer_compiled")}

        def ratio(a, b):
            return f"{g[a]['min_ms'] / g[b]['min_ms']:.2f}x / {g[a]['median_ms'] / g[b]['median_ms']:.2f}x"

        lines.append(f"| {tokens} | {g['pair_eager']['min_ms']} / {g['pair_compiled']['min_ms']}, "
                     f"{g['layer_eager']['min_ms']} / {g['layer_compiled']['min_ms']} | "
                     f"{ratio('pair_compiled', 'layer_compiled')} | {ratio('pair_eager', 'layer_eager')} | "
                     f"{ratio('pair_compiled', 'pair_eager')} | {ratio('layer_compiled', 'layer_eager')} | "
                     f"{g['pair_compiled']['compile_s']}, {g['layer_compiled']['compile_s']} |")  # fmt: skip
    (args.out_dir / "compile_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
