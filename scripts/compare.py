#!/usr/bin/env python3
"""Train stock YOLO and ViL models under identical settings and say whether ViL helps (a verdict per pair).

Examples:
    # CPU, the embedded default data (minutes)
    python scripts/compare.py --data datasets/neon-trees.yaml --scale n --models cfg/yolov8-vil.yaml \
        --epochs 5 --seeds 0 --img-size 320 --batch-size 8 --device cpu --out-dir runs/compare-quick

    # YOLOv8, YOLO11 and YOLO26 with ViL, each against its own stock model, five seeds
    python scripts/compare.py --data datasets/neon-trees.yaml --scale n --seeds 0 1 2 3 4 --epochs 25 \
        --models cfg/yolov8-vil.yaml cfg/yolo11-vil.yaml cfg/yolo26-vil.yaml --device cpu --out-dir runs/compare-gens

    # a committed study rerun from scratch with its own settings (the CPU study; its GPU twin at 640 px), into a
    # new folder: the protocol's out_dir holds the committed results, where every run is finished already
    python scripts/compare.py --protocol cfg/compare/neon-trees-cpu.yaml --out-dir runs/neon-trees-cpu
    python scripts/compare.py --protocol cfg/compare/neon-trees-gpu.yaml --out-dir runs/neon-trees-gpu

    # GPU, your own data, three seeds, two placements
    python scripts/compare.py --data datasets/aircraft.yaml --scale s \
        --models cfg/yolov8-vil.yaml cfg/yolov8-vil-p5.yaml --epochs 100 --seeds 0 1 2 \
        --img-size 640 --batch-size 16 --device cuda --out-dir runs/aircraft-s

For each model (the stock baseline of every --models YAML, i.e. its generation at --scale from Ultralytics'
package: cfg/yolo11-vil.yaml -> yolo11{scale}.yaml (--baseline); then every --models YAML at the same scale,
picked by Ultralytics' file-name mechanism: cfg/yolov8-vil.yaml -> yolov8{scale}-vil.yaml) and each
seed, one run in a fresh process: train from scratch (pretrained=False) with the same seed, epochs, image
size, batch, augmentation (Ultralytics defaults), optimizer and learning rate (pinned: 'auto' would depend on
the iteration count) and deterministic=True; validate last.pt (the final weights: no checkpoint is picked
on the val split) with the same settings; time batch-1 inference in PyTorch and ONNX Runtime (CPU).

Writes into --out-dir:
    compare.csv   one row per (model, seed): model, seed, params, gflops, map50, map50_95, precision, recall,
                  latency_ms_torch, latency_ms_onnx, train_s_per_epoch, peak_mem_mb, ap50_<class>...,
                  ap50_95_<class>... ; `n/a` where a value cannot apply (compare.md says why)
    compare.md    first the verdicts: per ViL model vs its baseline, the paired (by seed) mAP50-95 and mAP50
                  differences with 95% t-intervals, "better" / "worse" / "no difference detectable with N seeds",
                  and the cost ratios (latency, train time per epoch, peak memory) with their spread; then mean
                  +- std over seeds, the settings, how each column was measured, the reproduce command
    compare.png   bars (mean, error bar = std over seeds) and every seed as a point
    costs.json    with --costs: every model timed side by side in one process (rounds interleaved, so the ratios
                  hold on a busy machine where each run's own timings do not); compare.md shows those ratios too
    settings.json the settings every run shares (the data YAML by its sha, and by its path relative to the
                  repository, so a clone elsewhere resumes or reports the same study); runs/<model>_seed<k>/
                  Ultralytics' run folders;
    rows/<model>_seed<k>.json one finished run (resumable: a run with a row is not trained again; a row that
                  cannot be read is named in a warning and trained again, and with --report it is an error)
    logs/<model>_seed<k>.log  the output of that run's process
    jobs/<model>_seed<k>.lock held (flock) by the process that trains the run, so that processes sharing the
                  out-dir train each run once; freed by the kernel when that process dies, and a run's process
                  dies with the compare.py that started it

The work (jobs, workers, measurements, statistics, reports) is the package ultra_vil/study/; this file parses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ultra_vil.errors import UserError, describe
from ultra_vil.study import read_protocol, run, worker_main


# --------------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--protocol", type=Path, metavar="YAML",
        help="a study's settings (cfg/compare/*.yaml: keys are these flags' names); flags given as well override it",
    )
    parser.add_argument("--data", help="Ultralytics data YAML (e.g. datasets/neon-trees.yaml)")
    parser.add_argument("--scale", default="n", choices=list("nsmlx"), help="model scale for every model")
    parser.add_argument(
        "--models", nargs="*", default=["cfg/yolov8-vil.yaml"],
        help="ViL model YAMLs without a scale letter (each one's stock baseline is always trained); none: stock only",
    )
    parser.add_argument(
        "--baseline", default="auto",
        help="stock model per ViL YAML: 'auto' (the YAML's generation at --scale: yolo11-vil.yaml -> yolo11{scale}), "
        "or a generation for all of them (yolov8, yolo11, yolo26)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or N")
    parser.add_argument("--out-dir", type=Path, help="the study folder (e.g. runs/<study>; a protocol names its own)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader worker processes (0: in the main process)")
    parser.add_argument("--optimizer", default="AdamW", choices=["SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp"])
    parser.add_argument("--lr0", type=float, default=0.001, help="initial learning rate (pinned for every model)")
    parser.add_argument(
        "--extra", nargs="*", default=[], metavar="KEY=VALUE",
        help="more Ultralytics train arguments, the same for every model (e.g. amp=False cache=ram close_mosaic=0)",
    )
    parser.add_argument("--latency-runs", type=int, default=50, help="timed batch-1 runs (median reported)")
    parser.add_argument("--latency-warmup", type=int, default=10, help="untimed batch-1 runs before timing")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and its latency (n/a)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the runs' output (it is still in logs/)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the reports from the runs finished so far (e.g. while others run)")
    parser.add_argument("--costs", action="store_true",
                        help="after the runs, time every model side by side in one process (fwd+bwd, batch-1 "
                        "latency, memory) into costs.json, unless it already holds them all; the reports show both")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one job (JSON) in this process
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, 1 if a run failed, 2 for an error the user can fix (a UserError: one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.protocol:  # the file's values become the defaults, so a flag on the command line still wins
            parser.set_defaults(**read_protocol(args.protocol, parser))
            args = parser.parse_args(argv)
        if args.worker:  # a job process, as `python -m ultra_vil.study.worker --worker JOB` runs it
            return worker_main(args.worker)
        return run(args, argv)
    except UserError as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
