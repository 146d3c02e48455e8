#!/usr/bin/env python3
"""Build the embedded default classifier data: Fashion-MNIST as an ImageFolder, offline.

Needs Debian's package (once): apt-get install dataset-fashion-mnist

Examples:
    python scripts/build_fashion_mnist.py                       # 1,000 train + 200 val images per class
    python scripts/build_fashion_mnist.py --train-per-class 0 --val-per-class 0   # all 60,000 + 10,000

Writes datasets/fashion-mnist/{train,val}/<label>_<name>/*.png (git-ignored) and a README.txt there.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ultra_vil.train.fashion_mnist import DEFAULT_SOURCE, build_image_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the package's IDX files")
    p.add_argument("--out", type=Path, default=Path("datasets/fashion-mnist"), help="ImageFolder root to write")
    p.add_argument("--train-per-class", type=int, default=1000, help="0 = all 6,000")
    p.add_argument("--val-per-class", type=int, default=200, help="0 = all 1,000 (official test split)")
    args = p.parse_args(argv)
    if args.train_per_class < 0 or args.val_per_class < 0:
        p.error("--train-per-class and --val-per-class must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        counts = build_image_folder(args.out, args.source, args.train_per_class, args.val_per_class)
    except (FileNotFoundError, ValueError) as e:
        print(f"build_fashion_mnist.py: error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    print(f"wrote {counts['train']} train + {counts['val']} val images to {args.out} in {seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
