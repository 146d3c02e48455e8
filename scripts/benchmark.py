#!/usr/bin/env python3
"""Speed and memory of ViL against attention and against other implementations, side by side on one device.

Examples:
    python scripts/benchmark.py --quick --out-dir runs/bench-quick                # 2-core CPU, under 3 minutes
    python scripts/benchmark.py --out-dir runs/bench \\
        --baseline-src ../ultra-vil-old --official-src ../vision-lstm             # the CPU tables, all contenders
    python scripts/benchmark.py --device cuda --out-dir runs/bench-gpu            # GPU: everything, one command
    python scripts/benchmark.py --only mlstm,dispatch --update-dispatch --out-dir runs/bench   # auto's thresholds

Sections (--only picks some); every comparison is interleaved (A, B, A, B, ... in one process, or across worker
processes for other checkouts) and reports the minimum and the median over rounds:
    mlstm       mLSTM backends (parallel, chunkwise, recurrent at small S, triton on CUDA, auto) vs PyTorch SDPA,
                fwd+bwd, NH=4 DH=64, B=1 on CPU / 8 on CUDA, S = 196 ... 6400 (25600 on CUDA); time, peak memory
    dispatch    parallel vs chunkwise (vs triton) over an S grid per dtype: the thresholds of `auto`, written to
                mlstm_dispatch.json; checks `auto` is within 10% of the fastest backend at every S
    block       ViLBlockPair(256), SequencerBlock(256), two VimBlock(256) (a mixer unit of one YOLO slot) vs
                nn.TransformerEncoderLayer(256, 4, 1024, norm_first=True, batch_first=True) (dropout 0.1, and 0),
                batch 1, image 320 ... 1280 px at stride 16 (400 ... 6400 tokens), fwd+bwd time and peak memory
    classifier  ViL-T at 224 px, batch 8: training step (fwd + bwd + AdamW) and inference, img/s; this checkout vs
                --baseline-src (another ultra-vil checkout) vs --official-src (a folder holding NX-AI's
                `vision_lstm` package), each in its own worker process, rounds interleaved across them
    yolo        stock YOLOv8n vs YOLOv8n-ViL: batch-1 fused inference at 640 (PyTorch, and ONNX Runtime when
                installed), fwd+bwd at 640 batch 4: time and peak memory

--device cuda first runs the Triton kernel's correctness check on the GPU (ultra_vil.mlstm.triton.check_on_device);
a kernel that fails it is not timed. Every mLSTM backend is checked against the float64 recurrence before timing.
Writes benchmark.csv (one row per contender and size), benchmark.md (the targets table first, then every
section), benchmark.png and mlstm_dispatch.json into --out-dir; --update-dispatch also writes the package copy
ultra_vil/mlstm/mlstm_dispatch.json that `mlstm(backend="auto")` reads. Nothing is downloaded. The measuring code
is ultra_vil/bench/; this script parses the arguments and calls it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ultra_vil.bench.guard import triton_status
from ultra_vil.bench.mlstm_sections import bench_dispatch, bench_mlstm, save_dispatch
from ultra_vil.bench.model_sections import bench_block, bench_classifier, bench_yolo
from ultra_vil.bench.sizes import make_preset, source_version
from ultra_vil.bench.report import SECTIONS, merge, write_outputs
from ultra_vil.device import device_name, resolve_device
from ultra_vil.errors import UserError

LOGGER = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or N")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: < 3 min on a 2-core CPU")
    size.add_argument("--tiny", action="store_true", help="toy sizes for tests (seconds; the numbers mean nothing)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmark"))
    p.add_argument("--rounds", type=int, help="timed rounds per comparison (default: by preset)")
    p.add_argument("--max-seconds", type=float, help="per comparison, stop adding rounds after this long")
    p.add_argument("--baseline-src", type=Path, help="another ultra-vil checkout to time in the classifier section")
    p.add_argument("--official-src", type=Path, help="a folder holding NX-AI's vision_lstm package (vision_lstm2.py)")
    p.add_argument("--yolo-cfg", default="cfg/yolov8n-vil.yaml",
                   help="the ViL model of the yolo section (Ultralytics' scale-in-the-name rule: yolov8n-vil.yaml "
                        "builds cfg/yolov8-vil.yaml at scale n)")  # fmt: skip
    p.add_argument("--classifier-batch", type=int, help="batch of the classifier section (default 8; 256 on CUDA)")
    p.add_argument("--yolo-batch", type=int, help="batch of the yolo fwd+bwd (default 4; 64 on CUDA)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                   help="no measuring: join the benchmark.csv of runs in DIR... (e.g. one per section) into --out-dir")
    p.add_argument("--note", default="", help="appended to the report's header (e.g. which commit was measured)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads here and in the worker processes (default: torch's, the core count)")
    p.add_argument("--update-dispatch", action="store_true",
                   help="also write the measured thresholds to ultra_vil/mlstm/mlstm_dispatch.json (what auto reads)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        return merge(args.merge, args.out_dir, args.note)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        raise SystemExit(f"error: --only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the classifier section's worker processes inherit it
    try:
        return run(args, only)
    except UserError as e:  # a bad device or source folder: one line
        raise SystemExit(f"error: {e}") from None


def run(args, only: list[str]) -> int:
    """The sections in `only`, measured with the parsed arguments, then the report in --out-dir."""
    device = resolve_device(args.device)
    name = "tiny" if args.tiny else "quick" if args.quick else "full"
    preset = make_preset(name, device, rounds=args.rounds, max_seconds=args.max_seconds,
                         classifier_batch=args.classifier_batch, yolo_batch=args.yolo_batch)  # fmt: skip
    machine = f"{device} ({device_name(device)}), {torch.get_num_threads()} threads"
    header = f"{machine}, torch {torch.__version__}, python {platform.python_version()}, preset {name}"
    header += f", code {source_version(REPO)}" + (f", {args.note}" if args.note else "")
    LOGGER.info(header)
    t0 = time.perf_counter()
    notes: list[str] = []
    triton = False
    if {"mlstm", "dispatch"} & set(only):
        triton, why = triton_status(device)
        notes.append(why)
        LOGGER.info(why)
    rows, dispatch = [], None
    if "mlstm" in only:
        rows += bench_mlstm(preset, device, triton, notes)
    if "dispatch" in only:
        drows, measured = bench_dispatch(preset, device, triton, notes)
        rows += drows
        dispatch = save_dispatch(measured, args.out_dir, preset, name, machine, args.update_dispatch, notes)
    if "block" in only:
        rows += bench_block(preset, device)
    if "classifier" in only:
        rows += bench_classifier(preset, device, args.baseline_src, args.official_src)
    if "yolo" in only:
        rows += bench_yolo(preset, device, args.yolo_cfg)
    write_outputs(rows, args.out_dir, header + f", total {time.perf_counter() - t0:.0f} s", notes, dispatch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
