"""Write detection samples (from ultra_vil.data.voc / ultra_vil.data.coco) as a YOLO data set.

Output, in `out_dir`:
    images/{train,val[,test]}/   copies of (or, with link=True, symlinks to) the source images
    labels/{train,val[,test]}/   one .txt per image: `class x_center y_center width height`, normalised, 6 decimals
    data.yaml                    Ultralytics data YAML; class order = `names`
    .ultra_vil_dataset           marker: every file written here, with its size and sha256 (ultra_vil.data.base)

Everything is checked before anything is written: on any error nothing is written and `DatasetError` lists
every problem by file and line. The source is never written to: `out_dir` may not be the source folder, lie
inside it, be a parent of it, or contain any source file. Replacing an earlier output deletes only the files
its marker lists, and no file this tool did not write is ever overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ultra_vil.data.base import (  # Box, Sample and MARKER are also imported from here by older code
    MARKER,
    Box,
    Sample,
    begin_output,
    check_out_dir,
    finish_output,
    yolo_row,
)
from ultra_vil.data.issues import DatasetError, Issues, resolve_line
from ultra_vil.data.split import assign_val
from ultra_vil.data.yolo_format import SPLITS, dump_data_yaml

__all__ = ["MARKER", "Box", "Converted", "Sample", "class_order", "write_yolo"]
LOGGER = logging.getLogger(__name__)
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class Converted:
    """What `write_yolo` wrote."""

    data_yaml: Path
    names: list[str]
    images: dict[str, int]  # split -> images
    boxes: dict[str, int]  # split -> boxes
    backgrounds: dict[str, int]  # split -> images without objects
    warnings: Issues


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
    out_dir = Path(out_dir)
    earlier = check_out_dir(out_dir, [src_root], [s.image for s in samples] + list(annotation_files), overwrite)
    issues = issues if issues is not None else Issues()
    if not samples and not issues.errors:
        raise DatasetError(f"no annotated images found in {src_root}")
    rows = _label_rows(samples, names, issues)
    if issues.errors:
        raise DatasetError(f"not converted: the annotations in {src_root} have errors (nothing was written)", issues)

    splits = _assign_splits(samples, list(rows), src_root, val_fraction, seed, issues)
    _warn_unused(samples, names, src_root, issues)

    # --- plan every output path, then write (nothing above touched the file system)
    plan = _plan_paths(samples, rows, splits)
    written = [rel for _, _, im, lab in plan for rel in (im, lab)] + ["data.yaml"]
    info = begin_output(out_dir, earlier, written, Path(src_root), "convert")
    images, boxes, backgrounds = _write_pairs(out_dir, plan, samples, rows, link)
    data_yaml = out_dir / "data.yaml"
    header = _yaml_header(description, src_root, out_dir, data_yaml)
    dump_data_yaml(data_yaml, names, {s: f"images/{s}" for s in images}, header)
    finish_output(out_dir, written, info)
    return Converted(data_yaml, list(names), images, boxes, backgrounds, issues)


def _label_rows(samples: list[Sample], names: list[str], issues: Issues) -> dict[int, list[str]]:
    """The YOLO label rows of every sample kept: sample index -> rows (`yolo_row` strings, one per box).

    A sample whose image an earlier sample already describes is left out (an error naming both places). A box is
    clipped to its image (a warning); one of a class not in `names`, or one left empty by clipping, is an error and
    gets no row. Errors and warnings go to `issues`.
    """
    index = {n: i for i, n in enumerate(names)}  # class name -> class id
    seen: dict[Path, Sample] = {}  # image -> the sample that first describes it
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
            rows[k].append(yolo_row(index[b.name], x1, y1, x2, y2, s.width, s.height))
    return rows


def _warn_unused(samples: list[Sample], names: list[str], src_root: Path, issues: Issues) -> None:
    """A warning (on `src_root`) listing the classes of `names` that no box of `samples` has."""
    used_names = {b.name for s in samples for b in s.boxes}
    unused = [n for n in names if n not in used_names]
    if unused:
        issues.warn(src_root, None, f"{len(unused)} class(es) have no objects: {unused}")


def _plan_paths(
    samples: list[Sample], rows: dict[int, list[str]], splits: dict[int, str]
) -> list[tuple[str, int, str, str]]:
    """Where each kept sample goes: (split, sample index, image path, label path), paths relative to out_dir.

    Split by split in `SPLITS` order, samples in index order; an image name already taken in its split gets a
    `_1`, `_2`, ... suffix (`_unique_name`), and its label file the same stem.
    """
    plan: list[tuple[str, int, str, str]] = []
    for split in SPLITS:
        taken: set[str] = set()  # image and label file names used in this split
        for k in (k for k in rows if splits[k] == split):
            name = _unique_name(samples[k].image, taken)
            plan.append((split, k, f"images/{split}/{name}", f"labels/{split}/{Path(name).stem}.txt"))
    return plan


def _write_pairs(
    out_dir: Path, plan: list[tuple[str, int, str, str]], samples: list[Sample], rows: dict[int, list[str]],
    link: bool,
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Copy (or with `link`, symlink) each planned image and write its label file, in `plan` order.

    Returns:
        (images, boxes, backgrounds): split -> number of images, of boxes, of images without boxes, for the
        splits that have images.
    """
    images, boxes, backgrounds = {}, {}, {}
    for split, k, image_rel, label_rel in plan:
        s = samples[k]
        dst = out_dir / image_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (out_dir / label_rel).parent.mkdir(parents=True, exist_ok=True)
        if link:
            os.symlink(s.image, dst)
        else:
            shutil.copy2(s.image, dst)
        (out_dir / label_rel).write_text("\n".join(rows[k]) + "\n" if rows[k] else "")
        images[split] = images.get(split, 0) + 1
        boxes[split] = boxes.get(split, 0) + len(rows[k])
        backgrounds[split] = backgrounds.get(split, 0) + (not rows[k])
    return images, boxes, backgrounds


def _yaml_header(description: str, src_root: Path, out_dir: Path, data_yaml: Path) -> str:
    """The data YAML's header comment: `description`, where the set came from, how to check it, its layout."""
    return (
        f"{description}\nConverted by ultra_vil.data (scripts/convert_dataset.py) from {src_root.resolve()}\n"
        f"Check with: python scripts/convert_dataset.py --check {data_yaml}\n\n"
        f"{out_dir.name}/\n  data.yaml\n  images/{{train,val}}/  image files\n"
        "  labels/{train,val}/  one .txt per image"
    )


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
