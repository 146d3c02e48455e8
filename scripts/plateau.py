#!/usr/bin/env python3
"""Where does accuracy stop rising? The epoch count of a study, measured from long runs' validation curves.

Example (the measurement behind cfg/compare/neon-trees-cpu.yaml):
    for g in yolov8 yolo11; do python scripts/compare.py --data datasets/neon-trees.yaml --scale n --models \\
        --baseline $g --seeds 0 --epochs 60 --img-size 320 --batch-size 4 --device cpu --workers 0 \\
        --optimizer AdamW --lr0 0.002 --extra nbs=4 val=True --no-onnx --out-dir results/neon-trees-plateau/$g; done
    python scripts/plateau.py results/neon-trees-plateau/*/runs/* --out-dir results/neon-trees-plateau

Reads each Ultralytics run folder's results.csv (val mAP per epoch: train with val=True), smooths mAP50-95 with a
trailing mean over --window epochs, and calls the plateau the first epoch whose smoothed value reaches --fraction
of the best smoothed value of the run. Writes plateau.csv (epoch, model, mAP50, mAP50-95, smoothed), plateau.md
and plateau.png. Caveat, stated in plateau.md: Ultralytics decays the learning rate linearly over the run's own
epoch count, so a shorter run ends at a lower rate than the long run had at that epoch; the long curve is a
conservative guide, not the shorter run's curve.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

COLUMNS = {"map50": "metrics/mAP50(B)", "map50_95": "metrics/mAP50-95(B)"}


def read_curve(run: Path) -> list[dict]:
    """[{epoch, map50, map50_95}] from an Ultralytics run folder (or its results.csv); errors name the file."""
    path = run if run.suffix == ".csv" else run / "results.csv"
    try:
        with open(path, newline="") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    except OSError as e:
        raise SystemExit(f"error: {path}: {e.strerror or e}") from None
    missing = [c for c in ("epoch", *COLUMNS.values()) if rows and c not in rows[0]]
    if not rows or missing:
        raise SystemExit(f"error: {path}: no validation curve (missing {missing or 'rows'}; train with val=True)")
    curve = [{"epoch": int(float(r["epoch"])), **{k: float(r[c]) for k, c in COLUMNS.items()}} for r in rows]
    if all(p["map50_95"] == 0 for p in curve):
        raise SystemExit(f"error: {path}: mAP is 0 at every epoch (was it trained with val=False?)")
    return curve


def smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plateau_epoch(curve: list[dict], window: int = 5, fraction: float = 0.95) -> tuple[int, float]:
    """(first epoch whose smoothed mAP50-95 reaches fraction x the best smoothed value, that best value)."""
    s = smooth([p["map50_95"] for p in curve], window)
    best = max(s)
    for p, v in zip(curve, s):
        if v >= fraction * best:
            return p["epoch"], best
    return curve[-1]["epoch"], best  # unreachable: the best itself qualifies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("runs", nargs="+", type=Path, help="Ultralytics run folders (or results.csv files)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--window", type=int, default=5, help="trailing-mean window (epochs)")
    p.add_argument("--fraction", type=float, default=0.95, help="plateau: smoothed mAP50-95 >= this x its best")
    args = p.parse_args(argv)
    if args.window < 1 or not 0 < args.fraction <= 1:
        raise SystemExit("error: --window must be >= 1 and --fraction in (0, 1]")
    curves = {(r.parent.name if r.name == "results.csv" else r.name): read_curve(r) for r in args.runs}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "plateau.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "epoch", "map50", "map50_95", "map50_95_smoothed"])
        for name, curve in curves.items():
            for point, s in zip(curve, smooth([q["map50_95"] for q in curve], args.window)):
                w.writerow([name, point["epoch"], point["map50"], point["map50_95"], f"{s:.5f}"])
    lines = ["# Where stock accuracy stops rising", "",
             f"Plateau = first epoch whose trailing {args.window}-epoch mean of val mAP50-95 reaches "
             f"{args.fraction:.0%} of that mean's best over the run.", "",
             "| run | epochs run | plateau epoch | best smoothed mAP50-95 | final mAP50-95 |", "|---|---|---|---|---|"]
    plateaus = {}
    for name, curve in curves.items():
        epoch, best = plateau_epoch(curve, args.window, args.fraction)
        plateaus[name] = epoch
        lines.append(f"| {name} | {curve[-1]['epoch']} | {epoch} | {best:.4f} | {curve[-1]['map50_95']:.4f} |")
    lines += ["", "Caveat: Ultralytics decays the learning rate linearly over a run's own epoch count, so a shorter "
              "run ends at a lower rate than this curve had at that epoch: the curve is a conservative guide.", ""]
    (args.out_dir / "plateau.md").write_text("\n".join(lines))
    plot(curves, plateaus, args.window, args.out_dir / "plateau.png")
    print("\n".join(lines))
    return 0


def plot(curves: dict, plateaus: dict, window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, curve) in enumerate(curves.items()):
        color = f"C{i}"
        xs = [q["epoch"] for q in curve]
        ax.plot(xs, [q["map50_95"] for q in curve], ".", color=color, alpha=0.4)
        ax.plot(xs, smooth([q["map50_95"] for q in curve], window), "-", color=color,
                label=f"{name} ({window}-epoch mean)")  # fmt: skip
        ax.axvline(plateaus[name], color=color, ls="--", lw=1, label=f"{name} plateau: epoch {plateaus[name]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
