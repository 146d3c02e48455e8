#!/usr/bin/env python3
"""Print the README tables of the mixer YAMLs: layers, parameters and GFLOPs next to the stock model of their
generation (YOLOv8, YOLO11, YOLO26).

Every number comes from Ultralytics itself: `YOLO(cfg).info()` (the same call that prints the
"summary: ... layers, ... parameters, ... GFLOPs" line). GFLOPs are at imgsz 640 and nc 80.

Ultralytics counts FLOPs on small stride-sized proxy images and extrapolates to 640 with a fitted quadratic.
The mLSTM runs its quadratic (parallel) form on those short proxy sequences but its linear chunkwise form on
the long sequences of a 640 image (`ultra_vil.mlstm.select_backend`), so for ViL layers at P3/P4 the printed
number overstates the real cost. The column "GFLOPs direct" counts one real 640 x 640 forward pass with the
same counter (thop) and no extrapolation.

Examples:
    python scripts/model_table.py                       # all cfg/yolov8-vil*.yaml at scales n and s
    python scripts/model_table.py --scales n s m l x --summaries   # also the per-scale summary lines for YAML headers
    python scripts/model_table.py --cfg cfg/yolo11-vil.yaml cfg/yolo26-vil.yaml --scales n s m l x --no-direct
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def direct_gflops(model: torch.nn.Module, imgsz: int = 640) -> float:
    """thop count of one imgsz x imgsz forward pass, without Ultralytics' proxy-image extrapolation."""
    import thop

    p = next(model.parameters())
    im = torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device)
    return thop.profile(model, inputs=[im], verbose=False)[0] / 1e9 * 2  # MACs -> FLOPs, as Ultralytics does


def describe(cfg: str, direct: bool) -> dict:
    """Layers, parameters and GFLOPs of one model YAML (scale letter in the name, e.g. yolov8n-vil.yaml)."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    import ultra_vil.yolo  # noqa: F401  registers the ViL modules even without the start-up hook

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # keep the model tables out of the output; info() still returns its numbers
    try:
        model = YOLO(cfg)
        layers, params, gradients, gflops = model.info(verbose=True)  # the numbers of Ultralytics' summary line
    finally:
        LOGGER.setLevel(level)
    row = dict(model=Path(cfg).stem, layers=layers, params=params, gradients=gradients, gflops=gflops)
    if direct:
        row["direct"] = direct_gflops(model.model.eval())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["n", "s"], help="scale letters")
    parser.add_argument(
        "--cfg", nargs="+", type=Path, help="model YAMLs without scale letter (default: cfg/yolov8-vil*.yaml)"
    )
    parser.add_argument("--no-direct", action="store_true", help="skip the direct 640 px FLOP count (faster)")
    parser.add_argument("--summaries", action="store_true", help="also print each YAML's per-scale summary lines")
    args = parser.parse_args(argv)
    from ultra_vil.study.models import generation_of, scaled_model

    cfgs = [c.resolve() for c in args.cfg] if args.cfg else sorted((ROOT / "cfg").glob("yolov8-vil*.yaml"))
    for cfg in cfgs:
        if not cfg.is_file():
            raise SystemExit(f"error: --cfg {cfg}: file not found")
        if generation_of(cfg.stem) is None:
            raise SystemExit(f"error: --cfg {cfg}: the name must start with a YOLO generation (e.g. yolov8-vil.yaml)")
    # the stock model of every generation in use (yolo11-vil.yaml -> yolo11), then each YAML at each scale, scaled
    # by Ultralytics' name rule (yolo11-vil.yaml -> yolo11s-vil.yaml), as compare.py does
    gens = list(dict.fromkeys(generation_of(c.stem) for c in cfgs))
    rows = [(f"stock {g}", s, describe(f"{g}{s}.yaml", not args.no_direct)) for g in gens for s in args.scales]
    for cfg in cfgs:
        for s in args.scales:
            _, scaled = scaled_model(cfg, s)
            rows.append((cfg.name, s, describe(str(scaled), not args.no_direct)))

    print("| model | YAML | scale | layers | parameters | GFLOPs (Ultralytics) | GFLOPs direct |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name, s, r in rows:
        direct = f"{r['direct']:.1f}" if "direct" in r else "-"
        yaml_name = f"ultralytics {name[6:]}.yaml" if name.startswith("stock ") else f"cfg/{name}"
        print(f"| {r['model']} | {yaml_name} | {s} | {r['layers']} | {r['params']:,} | {r['gflops']:.1f} | {direct} |")
    if args.summaries:
        print()
        for name, s, r in rows:
            print(
                f"{name} {s}: # {r['model']} summary: {r['layers']} layers, {r['params']} parameters, "
                f"{r['gradients']} gradients, {r['gflops']:.1f} GFLOPs"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
