"""Train/val splits by a seed: the same keys, fraction and seed always give the same split."""

from __future__ import annotations

import os
import random
from pathlib import Path

from ultra_vil.data.base import begin_output, check_out_dir, finish_output
from ultra_vil.data.issues import DatasetError
from ultra_vil.data.yolo_check import read_data_yaml
from ultra_vil.data.yolo_format import dump_data_yaml

SPLIT_FILES = ("train.txt", "val.txt", "test.txt", "data.yaml")


def assign_val(keys: list[str], val_fraction: float, seed: int) -> set[str]:
    """The keys that go to val: round(n * val_fraction) of them, at least 1, at most n - 1.

    Independent of the order of `keys` (they are sorted first), so a split can be reproduced from the
    file names alone.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise DatasetError(f"cannot split {len(unique)} image(s) into train and val: need at least 2")
    order = unique[:]
    random.Random(seed).shuffle(order)
    n_val = min(max(round(len(order) * val_fraction), 1), len(order) - 1)
    return set(order[:n_val])


def split_yolo_dataset(
    data_yaml: Path, out_dir: Path, val_fraction: float = 0.2, seed: int = 0, overwrite: bool = False
) -> Path:
    """Re-split an existing YOLO data set into train/val without moving or copying any image.

    Pools the images of its `train` and `val` splits, draws val by `seed`, and writes into `out_dir`:
    train.txt and val.txt (image paths relative to the list, `./...`), test.txt if the set has a test
    split, and a data.yaml with the same class names in the same order. Returns the new data.yaml. `out_dir`
    obeys the converter's rule (ultra_vil.data.base.check_out_dir); `overwrite` replaces an earlier output of
    this tool there.
    """
    spec = read_data_yaml(data_yaml, lenient=("val", "test"))  # a set with only a train split is what this is for
    if spec.issues.errors:
        raise DatasetError(f"cannot split {data_yaml}", spec.issues)
    out_dir = Path(out_dir)
    listed = sorted({im for images in spec.splits.values() for im, _, _ in images})
    list_files = sorted({f for images in spec.splits.values() for _, f, _ in images if f is not None})
    # The same rule as conversion: not the data set's root or the YAML's folder, not inside, not a parent of them.
    earlier = check_out_dir(out_dir, [spec.root, Path(data_yaml).parent], [Path(data_yaml), *list_files, *listed],
                            overwrite)  # fmt: skip

    pool = sorted({im for split in ("train", "val") for im, _, _ in spec.splits.get(split, [])})
    keys = {os.path.relpath(im, spec.root): im for im in pool}
    val = assign_val(list(keys), val_fraction, seed)
    written = [f"{split}.txt" for split in ("train", "val", "test") if split != "test" or spec.splits.get("test")]
    written.append("data.yaml")
    info = begin_output(out_dir, earlier, written, Path(data_yaml), "split")
    lists = {
        "train": [im for k, im in sorted(keys.items()) if k not in val],
        "val": [im for k, im in sorted(keys.items()) if k in val],
    }
    if spec.splits.get("test"):
        lists["test"] = sorted({im for im, _, _ in spec.splits["test"]})
    for split, images in lists.items():
        rel = ["./" + Path(os.path.relpath(im, out_dir.resolve())).as_posix() for im in images]
        (out_dir / f"{split}.txt").write_text("\n".join(rel) + "\n")
    out_yaml = out_dir / "data.yaml"
    header = (
        f"Split of {Path(data_yaml).resolve()} by ultra_vil.data (scripts/convert_dataset.py --split):\n"
        f"val_fraction={val_fraction}, seed={seed}; {len(lists['train'])} train, {len(lists['val'])} val images.\n"
        "The lists hold image paths relative to this folder; labels stay where they are (/images/ -> /labels/)."
    )
    dump_data_yaml(out_yaml, spec.names, {s: f"{s}.txt" for s in lists}, header)
    finish_output(out_dir, written, info)
    return out_yaml
