#!/usr/bin/env python3
"""Largest |value| per Ultralytics checkpoint, and the tensors at float16's limit (65504).

Ultralytics saves last.pt / best.pt with the EMA model in float16. A tensor that outgrew float16's range in fp32
training (a BatchNorm running_var behind a mixer whose activations are large, say) is saturated in the file, and
the reloaded model differs from the one the trainer validated.

    python scripts/checkpoint_range.py results/neon-trees-cpu/runs/*/weights/last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

FP16_MAX = float(torch.finfo(torch.float16).max)


def tensor_range(state: dict) -> list[tuple[str, float]]:
    """(name, max |value|) of every floating tensor, largest first."""
    out = [(n, t.float().abs().max().item()) for n, t in state.items() if t.is_floating_point() and t.numel()]
    return sorted(out, key=lambda x: -x[1])


def checkpoint_state(path: Path) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = ck.get("ema") or ck.get("model") if isinstance(ck, dict) else ck
    if model is None:
        raise SystemExit(f"error: {path}: no 'ema' or 'model' entry (not an Ultralytics checkpoint)")
    return model.state_dict() if hasattr(model, "state_dict") else model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    args = p.parse_args(argv)
    print("| checkpoint | largest max abs value | tensor | tensors at the float16 limit |\n|---|---|---|---|")
    for path in args.checkpoints:
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found")
        ranges = tensor_range(checkpoint_state(path))
        at_limit = [n for n, v in ranges if v >= FP16_MAX]
        name, top = ranges[0]
        print(f"| {path} | {top:.4g} | {name} | {', '.join(at_limit) or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
