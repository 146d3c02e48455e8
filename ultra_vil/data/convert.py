"""Write detection samples (from ultra_vil.data.voc / ultra_vil.data.coco) as a YOLO data set.

Output, in `out_dir`:
    images/{train,val[,test]}/   copies of (or, with link=True, symlinks to) the source images
    labels/{train,val[,test]}/   one .txt per image: `class x_center y_center width height`, normalised, 6 decimals
    data.yaml                    Ultralytics data YAML; class order = `names`
    .ultra_vil_dataset           marker: this folder was written by this tool (only such a folder is ever cleared)

Everything is checked before anything is written: on any error nothing is written and `DatasetError` lists
every problem by file and line. The source is never written to: `out_dir` may not be the source folder,
lie inside it, or contain any source file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ultra_vil.data.issues import DatasetError, Issues, Line, resolve_line
from ultra_vil.data.split import assign_val
from ultra_vil.data.yolo_format import SPLITS, dump_data_yaml

LOGGER = logging.getLogger(__name__)
MARKER = ".ultra_vil_dataset"
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class Box:
    """An object in pixel coordinates of the image as Ultralytics loads it (0-based, continuous)."""

    name: str
    x1: float
    y1: float
    x2: float
    y2: float
    line: Line  # where the box is defined in `Sample.source`
    name_line: Line = None  # where its class name is, if elsewhere


@dataclass
class Sample:
    """One annotated image, as read from the source annotations."""

    image: Path  # the source image (resolved)
    width: int
    height: int
    source: Path  # annotation file that describes the image
    line: Line  # where in `source`
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None  # split given by the source (VOC ImageSets, COCO file per split), if any


@dataclass
class Converted:
    """What `write_yolo` wrote."""

    data_yaml: Path
    names: list[str]
    images: dict[str, int]  # split -> images
    boxes: dict[str, int]  # split -> boxes
    backgrounds: dict[str, int]  # split -> images without objects
    warnings: Issues


def check_out_dir(out_dir: Path, src_root: Path, source_files: list[Path], overwrite: bool) -> None:
    """Refuse any out_dir whose use could change the source; refuse a non-empty one unless it is ours."""
    out, src = out_dir.resolve(), src_root.resolve()
    if out == src or src in out.parents:
        raise DatasetError(f"--out-dir {out_dir} is the source folder {src_root} or inside it; choose another folder")
    inside = next((f for f in source_files if out in f.resolve().parents), None)
    if inside is not None:
        raise DatasetError(f"--out-dir {out_dir} contains source file {inside}; choose a folder outside the source")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out-dir {out_dir} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DatasetError(
                f"--out-dir {out_dir} is not empty and was not written by this tool; choose an empty or new folder"
            )
        if not overwrite:
            raise DatasetError(f"--out-dir {out_dir} holds an earlier conversion; pass --overwrite to replace it")


def class_order(used: list[str], names: list[str] | None, origin: str) -> list[str]:
    """The class list to write: `names` when given, else `used` (with a warning that the order is a guess)."""
    if names is not None:
        return list(names)
    LOGGER.warning(
        "class order taken from %s: %s. If your labels or models use another order, pass --data-yaml "
        "(your data YAML) or --names.",
        origin,
        used,
    )
    return list(used)


def write_yolo(
    samples: list[Sample],
    names: list[str],
    out_dir: Path,
    src_root: Path,
    *,
    annotation_files: list[Path],
    val_fraction: float | None = None,
    seed: int = 0,
    link: bool = False,
    overwrite: bool = False,
    description: str = "",
    issues: Issues | None = None,
) -> Converted:
    """Validate `samples` against `names`, split them, and write the YOLO data set into `out_dir`.

    Args:
        samples: Annotated images; `Sample.split` is used when val_fraction is None and some sample is in 'val'.
        names: Class names; a box's class id is the index of its name here.
        out_dir: Output folder (new, empty, or an earlier output of this tool with overwrite=True).
        src_root: The source folder; out_dir may not be inside it.
        annotation_files: Source annotation files (out_dir may not contain them either).
        val_fraction: Share of images for 'val' (by `seed`); None keeps the source's split, or uses 0.2 if
            the source has no 'val' split.
        seed: Seed of the train/val split.
        link: Symlink images instead of copying them.
        overwrite: Replace an earlier output of this tool in out_dir.
        description: First lines of the data YAML's header comment.
        issues: Problems the reader found; they are reported together with those found here.
    """
    check_out_dir(out_dir, src_root, [s.image for s in samples] + list(annotation_files), overwrite)
    issues = issues if issues is not None else Issues()
    if not samples and not issues.errors:
        raise DatasetError(f"no annotated images found in {src_root}")
    index = {n: i for i, n in enumerate(names)}
    seen: dict[Path, Sample] = {}
    rows: dict[int, list[str]] = {}  # sample index -> label rows
    for k, s in enumerate(samples):
        if s.image in seen:
            first = seen[s.image]
            also = f"{first.source}:{resolve_line(first.line)}"
            issues.error(s.source, s.line, f"image {s.image.name} is described twice (also at {also})")
            continue
        seen[s.image] = s
        rows[k] = []
        for b in s.boxes:
            if b.name not in index:
                where = b.name_line if b.name_line is not None else b.line
                issues.error(s.source, where, f"class '{b.name}' is not in the class list {names}")
                continue
            x1, y1 = min(max(b.x1, 0.0), s.width), min(max(b.y1, 0.0), s.height)
            x2, y2 = min(max(b.x2, 0.0), s.width), min(max(b.y2, 0.0), s.height)
            if x2 <= x1 or y2 <= y1:
                issues.error(
                    s.source,
                    b.line,
                    f"box ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) lies outside the {s.width}x{s.height} image",
                )
                continue
            if (x1, y1, x2, y2) != (b.x1, b.y1, b.x2, b.y2):
                issues.warn(s.source, b.line, f"box clipped to the {s.width}x{s.height} image")
            xc, yc = (x1 + x2) / 2 / s.width, (y1 + y2) / 2 / s.height
            w, h = (x2 - x1) / s.width, (y2 - y1) / s.height
            rows[k].append(f"{index[b.name]} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    if issues.errors:
        raise DatasetError(f"not converted: the annotations in {src_root} have errors (nothing was written)", issues)

    splits = _assign_splits(samples, list(rows), src_root, val_fraction, seed, issues)
    used_names = {b.name for s in samples for b in s.boxes}
    unused = [n for n in names if n not in used_names]
    if unused:
        issues.warn(src_root, None, f"{len(unused)} class(es) have no objects: {unused}")

    # --- write (nothing above touched the file system)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MARKER).is_file():
        for stale in ("images", "labels"):
            if (out_dir / stale).is_dir():
                shutil.rmtree(out_dir / stale)
        for stale in ("data.yaml", MARKER):
            (out_dir / stale).unlink(missing_ok=True)
    (out_dir / MARKER).write_text(json.dumps({"source": str(src_root.resolve()), "tool": "ultra_vil.data"}) + "\n")
    images, boxes, backgrounds = {}, {}, {}
    for split in SPLITS:
        ks = [k for k in rows if splits[k] == split]
        if not ks:
            continue
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
        taken: set[str] = set()
        for k in ks:
            s = samples[k]
            name = _unique_name(s.image, taken)
            dst = out_dir / "images" / split / name
            if link:
                os.symlink(s.image, dst)
            else:
                shutil.copy2(s.image, dst)
            text = "\n".join(rows[k]) + "\n" if rows[k] else ""
            (out_dir / "labels" / split / (Path(name).stem + ".txt")).write_text(text)
        images[split] = len(ks)
        boxes[split] = sum(len(rows[k]) for k in ks)
        backgrounds[split] = sum(not rows[k] for k in ks)
    data_yaml = out_dir / "data.yaml"
    header = (
        f"{description}\nConverted by ultra_vil.data (scripts/convert_dataset.py) from {src_root.resolve()}\n"
        f"Check with: python scripts/convert_dataset.py --check {data_yaml}\n\n"
        f"{out_dir.name}/\n  data.yaml\n  images/{{train,val}}/  image files\n"
        "  labels/{train,val}/  one .txt per image"
    )
    dump_data_yaml(data_yaml, names, {s: f"images/{s}" for s in images}, header)
    return Converted(data_yaml, list(names), images, boxes, backgrounds, issues)


def _assign_splits(
    samples: list[Sample], keep: list[int], src_root: Path, val_fraction: float | None, seed: int, issues: Issues
) -> dict[int, str]:
    """Sample index -> 'train' | 'val' | 'test'."""
    given = {samples[k].split for k in keep}
    if val_fraction is None and "val" in given:
        return {k: samples[k].split or "train" for k in keep}
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
        if given - {None}:
            issues.warn(src_root, None, f"the source has no 'val' split; {val_fraction:.0%} of it goes to val")
    out = {k: "test" for k in keep if samples[k].split == "test"}
    pool = [k for k in keep if k not in out]
    root = src_root.resolve()
    keys = {}  # split key: the image path relative to the source, so the split does not depend on where it lies
    for k in pool:
        image = samples[k].image
        keys[str(image.relative_to(root)) if image.is_relative_to(root) else str(image)] = k
    val = assign_val(list(keys), val_fraction, seed)
    out.update({k: "val" if key in val else "train" for key, k in keys.items()})
    return out


def _unique_name(image: Path, taken: set[str]) -> str:
    name, i = image.name, 1
    while name in taken or Path(name).stem + ".txt" in taken:
        name, i = f"{image.stem}_{i}{image.suffix}", i + 1
    taken.update({name, Path(name).stem + ".txt"})
    return name
