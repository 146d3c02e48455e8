"""Fashion-MNIST as an ImageFolder: the embedded default data of classifier training.

Source: Debian's `dataset-fashion-mnist` package (Zalando Research, MIT/Expat licence), which installs the
original IDX files under /usr/share/datasets/fashion-mnist: 60,000 training and 10,000 test images, 28 x 28
grey, 10 classes. Nothing is downloaded at run time:

    apt-get install dataset-fashion-mnist
    python scripts/build_fashion_mnist.py            # -> datasets/fashion-mnist/{train,val}/<k_name>/*.png

The official test split becomes val/. By default the first 1,000 training and 200 test images of each class
(in file order, so the subset is the same on every machine) are written: enough for a CPU smoke run in about a
minute; `--train-per-class 0 --val-per-class 0` writes all 70,000. Class folders are named `<label>_<name>`
so that their sorted order is the official label order.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle_boot")
FILES = {  # split -> (images, labels), as the package installs them
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = "install Debian's package with: apt-get install dataset-fashion-mnist"


def class_folder(label: int) -> str:
    return f"{label}_{CLASS_NAMES[label]}"


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes: labels (N,) or images (N, rows, cols)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} = {expected} bytes, file has {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def build_image_folder(
    out_dir: str | Path,
    source: str | Path = DEFAULT_SOURCE,
    train_per_class: int | None = 1000,
    val_per_class: int | None = 200,
) -> dict[str, int]:
    """Write `out_dir/{train,val}/<label>_<name>/<split>_<index>.png` (grey PNG); returns images per split.

    `*_per_class` None or 0 keeps every image. train/ and val/ under `out_dir` are replaced; nothing else
    there is touched.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST source {source} does not exist: {INSTALL_HINT}")
    counts = {}
    for split, (image_file, label_file) in FILES.items():
        images, labels = read_idx(source / image_file), read_idx(source / label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{source}: {image_file} {images.shape} and {label_file} {labels.shape} do not pair up")
        if labels.max() >= len(CLASS_NAMES):
            raise ValueError(f"{source / label_file}: label {labels.max()} out of range 0-{len(CLASS_NAMES) - 1}")
        limit = train_per_class if split == "train" else val_per_class
        split_dir = out_dir / split
        if split_dir.exists():
            shutil.rmtree(split_dir)
        written = 0
        for label in range(len(CLASS_NAMES)):
            folder = split_dir / class_folder(label)
            folder.mkdir(parents=True)
            indices = np.flatnonzero(labels == label)
            for i in indices[:limit] if limit else indices:
                if not cv2.imwrite(str(folder / f"{split}_{i:05d}.png"), images[i]):
                    raise OSError(f"cannot write {folder / f'{split}_{i:05d}.png'}")
                written += 1
        counts[split] = written
        LOGGER.info("%s: %d images in %s", split, written, split_dir)
    (out_dir / "README.txt").write_text(
        "Fashion-MNIST (Zalando Research, MIT licence) as an ImageFolder, built by scripts/build_fashion_mnist.py\n"
        f"from {source} (Debian package dataset-fashion-mnist). val/ is the official test split.\n"
        f"Per class: train {train_per_class or 'all'}, val {val_per_class or 'all'} (the first ones in file "
        f"order). Images: {counts}.\n"
    )
    return counts
