"""Validate a YOLO detection data set the way Ultralytics 8.4 will read it, and report by file and line.

Errors (the set cannot be used as it is): an invalid data YAML, a split path that does not exist, an empty
split, a listed image that is missing, an image that cannot be read (not an image, truncated, under 10 px),
a malformed label row (wrong number of values, not a number, a non-integer class), a class id outside
0..nc-1, a coordinate outside [0, 1].
Warnings (usable, but look): duplicate rows (Ultralytics drops them), zero-size boxes, boxes reaching past
the image border, JPEGs without an end marker (Ultralytics re-saves those *in place*), label files without
an image, images in both train and val.
Images without a label file, or with an empty one, are valid background images and are counted; an image whose
label file has errors is counted as invalid, never as background (its rows are not what training will see).

Ultralytics is not imported here (only ultra_vil.yolo may): a relative `path:` that is not found from the current
folder is looked up in the `datasets_dir` the caller passes (scripts/convert_dataset.py reads Ultralytics'
setting only then), or in that of an Ultralytics already imported by the program.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from ultra_vil.data.issues import DatasetError, Issues
from ultra_vil.data.yolo_format import SPLITS, is_image, label_path, load_yaml_with_lines, parse_names_value

LOGGER = logging.getLogger(__name__)
MIN_IMAGE_SIDE = 10  # Ultralytics' verify_image_label rejects images with a side under 10 px
# Ultralytics' datasets_dir setting, or a function that returns it (called only when a relative `path:` needs it).
DatasetsDir = Union[Path, str, Callable[[], Union[Path, str]], None]


@dataclass
class DataSpec:
    """A data YAML resolved to image files, as Ultralytics' check_det_dataset + get_img_files would."""

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[tuple[Path, Path | None, int | None]]]  # split -> (image, list file, line in it)
    issues: Issues


@dataclass
class SplitStats:
    images: int = 0
    labelled: int = 0
    backgrounds: int = 0
    invalid: int = 0  # images whose label file has errors (neither labelled nor background)
    boxes: int = 0
    per_class: Counter = field(default_factory=Counter)


@dataclass
class CheckReport:
    data_yaml: Path
    names: list[str]
    stats: dict[str, SplitStats]
    issues: Issues

    @property
    def ok(self) -> bool:
        return not self.issues.errors

    def format(self, max_each: int | None = 50) -> str:
        classes = f"{len(self.names)} classes" if self.names else "no valid class list"
        lines = [f"Checked {self.data_yaml} ({classes})"]
        for split, st in self.stats.items():
            invalid = f", {st.invalid} with invalid labels" if st.invalid else ""
            lines.append(
                f"  {split:5s}: {st.images} images ({st.labelled} labelled, {st.backgrounds} background{invalid}), "
                f"{st.boxes} boxes"
            )
        per_class = Counter()
        for st in self.stats.values():
            per_class.update(st.per_class)
        if self.names and per_class:
            counts = ", ".join(f"{i}:{n}={per_class.get(i, 0)}" for i, n in enumerate(self.names))
            lines.append(f"  boxes per class: {counts}")
        details = self.issues.format(max_each)
        if details:
            lines.append(details)
        n_err, n_warn = len(self.issues.errors), len(self.issues.warnings)
        lines.append(f"result: {'OK' if self.ok else 'INVALID'} ({n_err} errors, {n_warn} warnings)")
        return "\n".join(lines)


def read_data_yaml(path: Path | str, lenient: tuple[str, ...] = (), datasets_dir: DatasetsDir = None) -> DataSpec:
    """Parse and resolve a data YAML; problems go to `DataSpec.issues` (nothing is raised for bad data).

    train and val are required; a split that is missing, not found or empty is an error, unless it is in
    `lenient` (then a warning: e.g. a set that has no val split yet, about to be split). `datasets_dir`: where
    Ultralytics looks for a relative `path:` that does not exist from the current folder (see the module doc).
    """
    path = Path(path)
    issues = Issues()
    spec = DataSpec(path, path.parent, [], {}, issues)
    if not path.is_file():
        issues.error(path, None, "data YAML not found")
        return spec
    try:
        data, lines = load_yaml_with_lines(path)
    except DatasetError as e:
        issues.errors += e.issues.errors
        return spec
    if not isinstance(data, dict):
        issues.error(path, 1, f"a data YAML is a mapping (train:, val:, names:), got {type(data).__name__}")
        return spec

    if data.get("names") is None and isinstance(data.get("nc"), int) and data["nc"] > 0:
        spec.names = [f"class_{i}" for i in range(data["nc"])]
        issues.warn(path, lines.get("nc"), "no 'names': classes are called class_0..; add 'names' to label them")
    else:
        spec.names = parse_names_value(data.get("names"), path, lines.get("names"), issues)
    if "nc" in data and spec.names and data["nc"] != len(spec.names):
        issues.error(path, lines.get("nc"), f"nc: {data['nc']} but 'names' has {len(spec.names)} entries")

    root = data.get("path")
    if root:
        spec.root = Path(str(root))
        if not spec.root.exists() and not spec.root.is_absolute():
            spec.root = _datasets_dir(datasets_dir) / spec.root
        if not Path(str(root)).is_absolute():
            issues.warn(
                path,
                lines.get("path"),
                f"relative 'path: {root}' is resolved against the current folder, else Ultralytics' datasets_dir "
                f"(here: {spec.root.resolve()}); an absolute path, or no 'path' (= this file's folder), is safer",
            )
        if not spec.root.is_dir():
            issues.error(path, lines.get("path"), f"'path' folder not found: {spec.root}")
            return spec
    spec.root = spec.root.resolve()

    for split in SPLITS:
        if split == "val" and "val" not in data and "validation" in data:
            data["val"], lines["val"] = data["validation"], lines.get("validation")
        value = data.get(split)
        if not value:
            if split in ("train", "val"):
                (issues.warn if split in lenient else issues.error)(
                    path, lines.get(split), f"'{split}' is missing or empty: train and val are required"
                )
            continue
        found = Issues()
        images = []
        for entry in value if isinstance(value, list) else [value]:
            images += _resolve_entry(str(entry), spec.root, path, lines.get(split), split, found)
        if not images and not found.errors:
            found.error(path, lines.get(split), f"split '{split}' is empty: no images in {value}")
        issues.warnings += found.warnings + (found.errors if split in lenient else [])
        issues.errors += [] if split in lenient else found.errors
        spec.splits[split] = images
    return spec


def _resolve_entry(
    entry: str, root: Path, yaml_path: Path, line: int | None, split: str, issues: Issues
) -> list[tuple[Path, Path | None, int | None]]:
    p = (root / entry).resolve()
    if not p.exists() and entry.startswith("../"):
        p = (root / entry[3:]).resolve()  # Ultralytics' fallback for '../' paths
    if p.is_dir():
        found = [Path(x) for x in _walk_images(p)]
        return [(x, None, None) for x in sorted(found)]
    if p.is_file():
        if is_image(p):
            issues.error(yaml_path, line, f"'{split}' points at a single image {p}; give a folder or a .txt list")
            return []
        out = []
        text = p.read_text(encoding="utf-8-sig").strip().splitlines()
        for i, x in enumerate(text, start=1):
            x = x.strip()
            if not x or not is_image(x):
                continue
            image = Path(x.replace("./", str(p.parent) + os.sep, 1) if x.startswith("./") else x)
            out.append((image.resolve() if image.is_absolute() or x.startswith("./") else image, p, i))
        return out
    issues.error(yaml_path, line, f"'{split}' path not found: {p}")
    return []


def _walk_images(folder: Path) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        found += [os.path.join(dirpath, f) for f in files if is_image(f)]
    return found


def _datasets_dir(given: DatasetsDir) -> Path:
    """`given` (called if it is a function), else the DATASETS_DIR of an Ultralytics the program already imported,
    else the current folder (then an absolute `path:` or none at all is what works)."""
    if callable(given):
        given = given()
    if given is not None:
        return Path(given)
    loaded = sys.modules.get("ultralytics.utils")  # never imported from here: only ultra_vil.yolo may
    return Path(getattr(loaded, "DATASETS_DIR", None) or Path.cwd())


def check_yolo_dataset(data_yaml: Path | str, decode: bool = True, datasets_dir: DatasetsDir = None) -> CheckReport:
    """Check every split, image and label row of a data set. `decode=False` reads image headers only (faster,
    but misses truncated files). `datasets_dir`: as for `read_data_yaml`."""
    spec = read_data_yaml(data_yaml, datasets_dir=datasets_dir)
    issues = spec.issues
    stats: dict[str, SplitStats] = {}
    # Without a valid class list (read_data_yaml reported why) the ids cannot be checked: said once, not per row.
    nc = len(spec.names) if spec.names else None
    if nc is None and spec.splits:
        issues.warn(spec.yaml_path, None, "class ids were not checked against 'names', which is invalid (see the "
                    "error); the rows were checked for everything else")  # fmt: skip
    seen_in: dict[Path, str] = {}
    for split, images in spec.splits.items():
        st = stats[split] = SplitStats()
        labels_seen: set[Path] = set()
        for image, list_file, line in images:
            st.images += 1
            if image in seen_in and seen_in[image] != split:
                where = (list_file, line) if list_file else (image, None)
                issues.warn(*where, f"image is in both '{seen_in[image]}' and '{split}': val results would be inflated")
            seen_in.setdefault(image, split)
            if not image.exists():
                where = (list_file, line) if list_file else (image, None)
                issues.error(*where, f"image not found: {image}")
                st.invalid += 1
                continue
            before = len(issues.errors)
            _check_image(image, list_file, line, decode, issues)
            lp = label_path(image)
            labels_seen.add(lp.resolve())
            rows = _check_label_file(lp, nc, issues) if lp.is_file() else []
            if len(issues.errors) > before:  # Ultralytics drops such an image with all its rows
                st.invalid += 1  # a broken image or label file: not a background image, whatever rows were valid
            elif rows:
                st.labelled += 1
                st.boxes += len(rows)
                st.per_class.update(rows)
            else:
                st.backgrounds += 1
        for orphan in _orphan_labels(spec, split, labels_seen):
            issues.warn(orphan, None, "label file without an image (ignored by training)")
    return CheckReport(Path(data_yaml), spec.names, stats, issues)


def _check_image(image: Path, list_file: Path | None, line: int | None, decode: bool, issues: Issues) -> None:
    from PIL import Image

    where = f" (listed at {list_file}:{line})" if list_file else ""
    try:
        with Image.open(image) as im:
            im.verify()
        with Image.open(image) as im:
            w, h = im.size
            if decode:
                im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        issues.error(image, None, f"unreadable image ({type(e).__name__}: {e}){where}")
        return
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        issues.error(image, None, f"image is {w}x{h}; Ultralytics needs at least {MIN_IMAGE_SIDE} px a side{where}")
    if image.suffix.lower() in (".jpg", ".jpeg"):
        with open(image, "rb") as f:
            f.seek(-2, 2)
            if f.read() != b"\xff\xd9":
                issues.warn(
                    image,
                    None,
                    "JPEG has no end marker (truncated or trailing bytes); Ultralytics will re-save it in place",
                )


def _check_label_file(path: Path, nc: int | None, issues: Issues) -> list[int]:
    """Class ids of the valid rows; every bad row is reported with its line, values as written in the file.

    `nc` None: the class list is invalid, so class ids are checked only for being integers of at least 0."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        issues.error(path, None, f"unreadable label file ({e})")
        return []
    classes: list[int] = []
    first_line: dict[tuple[float, ...], int] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split()
        if not parts:
            continue
        n = len(parts)
        if n < 5 or (n > 5 and (n % 2 == 0 or n < 7)):
            hint = " (a 6th value is often a confidence score from predictions)" if n == 6 else ""
            issues.error(
                path, i, f"malformed row: {n} values, expected 5 (class x_center y_center width height) "
                f"or a polygon (class x1 y1 x2 y2 x3 y3 ...){hint}"
            )
            continue
        try:
            values = [float(x) for x in parts]
        except ValueError:
            issues.error(path, i, f"malformed row: not all values are numbers: {raw.strip()!r}")
            continue
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            issues.error(path, i, f"malformed row: NaN or infinite value: {raw.strip()!r}")
            continue
        cls = values[0]
        if cls != int(cls):
            issues.error(path, i, f"malformed row: class id {parts[0]} is not an integer")
            continue
        if cls < 0 or (nc is not None and cls >= nc):
            given = parts[0] if len(parts[0]) <= 20 else f"{cls:g}"  # never int(1e308), a 309-digit number
            ids = f"{nc} classes, ids 0..{nc - 1}" if nc is not None else "ids start at 0"
            issues.error(path, i, f"class id {given} out of range: {ids}")
            continue
        bad = [x for x in parts[1:] if not 0.0 <= float(x) <= 1.0]
        if bad:
            issues.error(path, i, f"coordinates must be normalised to [0, 1], got {' '.join(bad)}")
            continue
        key = tuple(values)
        if key in first_line:
            issues.warn(path, i, f"duplicate of line {first_line[key]} (Ultralytics drops duplicates)")
            continue
        first_line[key] = i
        if n == 5:
            xc, yc, w, h = values[1:]
            if w == 0 or h == 0:
                issues.warn(path, i, "zero-size box")
            elif xc - w / 2 < -1e-6 or xc + w / 2 > 1 + 1e-6 or yc - h / 2 < -1e-6 or yc + h / 2 > 1 + 1e-6:
                issues.warn(path, i, "box reaches past the image border (Ultralytics clips it)")
        classes.append(int(cls))
    return classes


def _orphan_labels(spec: DataSpec, split: str, labels_seen: set[Path]) -> list[Path]:
    """Label files under the labels folder of a folder-based split that belong to no image."""
    out = []
    for folder in {image.parent for image, list_file, _ in spec.splits[split] if list_file is None}:
        labels = label_path(folder / "x.jpg").parent
        if labels == folder or not labels.is_dir():
            continue
        out += [p for p in labels.glob("*.txt") if p.resolve() not in labels_seen]
    return sorted(set(out))
