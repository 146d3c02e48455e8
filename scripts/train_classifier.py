#!/usr/bin/env python3
"""Train the ViL image classifier on an ImageFolder, from one CPU to many GPUs (torchrun).

Examples:
    # Smoke run on CPU, on the embedded Fashion-MNIST subset (python scripts/build_fashion_mnist.py first)
    python scripts/train_classifier.py --config cfg/classifier/vil_fashion_mnist.yaml

    # ViL-T on ImageNet-1K with the paper's recipe, 8 GPUs; any key of the config can be overridden by a flag
    torchrun --nproc_per_node=8 scripts/train_classifier.py --config cfg/classifier/vil_t_imagenet.yaml \
        --data /data/imagenet --out-dir runs/vil_t_in1k

    # Continue after an interruption; evaluate a checkpoint
    python scripts/train_classifier.py --config <same> --resume
    python scripts/train_classifier.py --data /data/imagenet --eval-only --resume runs/vil_t_in1k/best.pt

Writes into --out-dir (rank 0 only): config.yaml (every resolved argument), metrics.csv (one row per epoch),
last.pt (full training state, every epoch and every --save-every-steps steps), best.pt (weights with the
best val top-1), curves.png, and tensorboard/ if tensorboard is installed. The engine is ultra_vil.train.

An error you can fix (a missing, empty, truncated or foreign checkpoint, a flag that does not fit, bad data, a NaN
loss) is one line, `error: <file>: <cause>`, with exit status 2; --debug adds the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from tqdm import tqdm

from ultra_vil.errors import UserError, describe
from ultra_vil.train.config import parse_args
from ultra_vil.train.distributed import env_rank
from ultra_vil.train.engine import run


def progress(iterable, **kwargs):
    """A tqdm bar on a terminal; nothing when output goes to a file (the per-epoch log line remains)."""
    return tqdm(iterable, dynamic_ncols=True, disable=None, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if env_rank() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
    )
    try:
        results = run(args, progress=progress)
    except (UserError, OSError) as e:  # the user can act on these: a file, a flag, the data; anything else is a bug
        if args.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e) else ""
        print(f"error: {where}{describe(e)}", file=sys.stderr)
        return 2
    if args.eval_only and env_rank() == 0:
        for name, m in results.items():
            print(f"{name}: top-1 {m['val_top1']:.2f}  top-5 {m['val_top5']:.2f}  "
                  f"({m['val_images']} images, loss {m['val_loss']:.4f})")
    return 0


def exit_worker(code: int) -> None:
    """Leave a torchrun worker without the interpreter's shutdown: with gloo, torch 2.14's process group can abort
    in its C++ destructors at exit ("terminate called without an active exception", SIGABRT) after
    destroy_process_group, though the run is finished and saved, and torchrun then reports the whole job failed.
    Outputs are flushed first; everything written to disk was written atomically (fsync, rename) before."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_worker(code)
    sys.exit(code)
