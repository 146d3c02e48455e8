"""Read COCO JSON detection annotations into `Sample`s.

`src` is a .json file or a folder; in a folder every .json below it is read. A JSON file whose path names a
split (a folder or file name containing train / val / valid / validation / test, e.g. Roboflow's
`valid/_annotations.coco.json` or `annotations/instances_val2017.json`) gives that split. Images are
looked up beside the JSON, in `images/<split>/`, `<split>/`, `images/`, then anywhere below the source
folder. `bbox` is [x, y, width, height] in pixels (0-based); crowd annotations (`iscrowd: 1`) are skipped,
as Ultralytics' own COCO converter does. Errors name the JSON file and line (found by a second, slower
parse that runs only when something is wrong). A `file_name` that is absolute or climbs out of the source with
`..` is an error (ultra_vil.data.base.ImageFinder).
"""

from __future__ import annotations

import bisect
import functools
import json
import json.decoder
import json.scanner
import re
from pathlib import Path
from typing import Any

from ultra_vil.data.base import Box, ImageFinder, Sample
from ultra_vil.data.issues import Issues
from ultra_vil.data.yolo_format import image_size

_SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class _PosDict(dict):
    """A JSON object that remembers where it starts in the text."""

    pos = -1


def _load_with_positions(text: str) -> Any:
    decoder = json.JSONDecoder(object_pairs_hook=_PosDict)

    def parse_object(s_and_end, *args):
        obj, end = json.decoder.JSONObject(s_and_end, *args)
        obj.pos = s_and_end[1] - 1
        return obj, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the pure-Python scanner calls parse_object
    return decoder.decode(text)


class _Lines:
    """Line of `section[index]` in a JSON file, computed on first use only."""

    def __init__(self, path: Path, text: str):
        self.path, self.text, self._data, self._newlines = path, text, None, None

    def __call__(self, section: str, index: int | None) -> int | None:
        if index is None:
            return None
        if self._data is None:
            self._data = _load_with_positions(self.text)
            self._newlines = [i for i, c in enumerate(self.text) if c == "\n"]
        try:
            pos = self._data[section][index].pos
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return bisect.bisect_left(self._newlines, pos) + 1


def _split_of(json_path: Path, src: Path) -> str | None:
    rel = json_path.relative_to(src) if json_path.is_relative_to(src) else Path(json_path.name)
    for part in reversed(rel.parts):
        for word in re.split(r"[^a-z]+", part.lower()):
            if word in _SPLIT_WORDS:
                return _SPLIT_WORDS[word]
    return None


def read_coco(
    src: Path, issues: Issues, names: list[str] | None = None, allow_outside_src: bool = False
) -> tuple[list[Sample], list[Path], list[str]]:
    """(samples, JSON files read, class names used in category-id order). Problems go to `issues`.

    An image that resolves outside the source folder is an error, or with `allow_outside_src` a warning.

    With `names` (the user's class list), categories are matched to it by name and a category used by an
    annotation but missing from it is an error. Without, the class list is the categories that have
    annotations, in category-id order (a category that is only the supercategory of others and has no
    annotation of its own, like Roboflow's data-set-level category, is left out).
    """
    src = Path(src)
    root = src.parent if src.is_file() else src
    files = [src] if src.is_file() else sorted(src.rglob("*.json"))
    if not files:
        issues.error(src, None, "no .json annotation files found")
        return [], [], []
    finder = ImageFinder(root, allow_outside=allow_outside_src)
    samples: list[Sample] = []
    categories: dict[int, str] = {}
    used: set[int] = set()
    supers: set[str] = set()
    for path in files:
        split = _split_of(path, root) if len(files) > 1 else None
        samples += _read_file(path, root, split, finder, categories, used, supers, issues)
    if names is None:
        names = [categories[c] for c in sorted(categories) if c in used or categories[c] not in supers]
        dropped = [categories[c] for c in sorted(categories) if c not in used and categories[c] in supers]
        if dropped:
            issues.warn(files[0], None, f"categories without annotations that only group others, left out: {dropped}")
    return samples, files, names


def _read_file(
    path: Path,
    root: Path,
    split: str | None,
    finder: ImageFinder,
    categories: dict[int, str],
    used: set[int],
    supers: set[str],
    issues: Issues,
) -> list[Sample]:
    """The samples of one COCO JSON file, in 'images' order; problems go to `issues`.

    `categories` (id -> name), `used` (ids with an annotation) and `supers` (supercategory names) are shared by
    all the files of a source and filled in here: this file's categories are read first, so its annotations may
    name categories defined here or in a file read before.
    """
    loaded = _load_json(path, issues)
    if loaded is None:
        return []
    data, text = loaded
    line = _Lines(path, text)
    _read_categories(path, data, line, categories, supers, issues)
    by_id, samples = _read_images(path, root, split, finder, data, line, issues)
    _read_annotations(path, data, line, by_id, categories, used, issues)
    return samples


def _load_json(path: Path, issues: Issues) -> tuple[dict, str] | None:
    """(parsed JSON, its text) of a file that looks like COCO detection annotations, else None (an error)."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        issues.error(path, e.lineno, f"malformed JSON: {e.msg} (column {e.colno})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        issues.error(path, 1, "not COCO detection annotations: expected 'images', 'annotations' and 'categories'")
        return None
    return data, text


def _read_categories(
    path: Path, data: dict, line: _Lines, categories: dict[int, str], supers: set[str], issues: Issues
) -> None:
    """Add the file's 'categories' to `categories` (id -> name) and their supercategory names to `supers`.

    A category without a valid id and name, or whose id another file (or entry) gave another name, is an error
    and is skipped; a file that leaves `categories` empty is an error.
    """
    for i, cat in enumerate(data.get("categories") or []):
        try:
            cid, name = int(cat["id"]), str(cat["name"]).strip()
        except (KeyError, TypeError, ValueError):
            issues.error(path, line("categories", i), "category without a valid 'id' and 'name'")
            continue
        if cid in categories and categories[cid] != name:
            issues.error(
                path, line("categories", i), f"category id {cid} is '{name}' here but '{categories[cid]}' elsewhere"
            )
            continue
        categories[cid] = name
        if cat.get("supercategory") not in (None, "", "none", name):
            supers.add(str(cat["supercategory"]))
    if not categories:
        issues.error(path, 1, "no 'categories': cannot name the classes")


def _read_images(
    path: Path, root: Path, split: str | None, finder: ImageFinder, data: dict, line: _Lines, issues: Issues
) -> tuple[dict[Any, Sample], list[Sample]]:
    """(image id -> sample, the samples in 'images' order) of the file's 'images', still without boxes.

    Each image is looked up (`finder`) beside the JSON, in `images/<split>/`, `<split>/`, `images/`, then below
    the source; its size is read from the image file. An entry without id and file_name, a repeated id, an image
    not found (or refused) or unreadable is an error and gives no sample; an image outside the source (let in by
    allow_outside_src) or a declared width/height that differs from the file's is a warning.
    """
    by_id: dict[Any, Sample] = {}
    samples = []
    near = [path.parent] + ([root / "images" / split, root / split] if split else []) + [root / "images"]
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            issues.error(path, line("images", i), "image entry without 'id' and 'file_name'")
            continue
        if im["id"] in by_id:
            issues.error(path, line("images", i), f"image id {im['id']} appears twice")
            continue
        image, why = finder.find(str(im["file_name"]), near)
        if image is None:
            issues.error(path, line("images", i), f"{why} (images[{i}])")
            continue
        if finder.outside(image):
            issues.warn(path, line("images", i), f"image {image} lies outside the source {root} (images[{i}])")
        try:
            width, height = image_size(image)
        except Exception as e:
            issues.error(path, line("images", i), f"unreadable image {image} ({e})")
            continue
        declared = (im.get("width"), im.get("height"))
        if None not in declared and tuple(declared) != (width, height):
            issues.warn(
                path, line("images", i), f"width/height say {declared[0]}x{declared[1]}, image is {width}x{height}"
            )
        sample = Sample(image, width, height, path, functools.partial(line, "images", i), split=split)
        by_id[im["id"]] = sample
        samples.append(sample)
    return by_id, samples


def _read_annotations(
    path: Path,
    data: dict,
    line: _Lines,
    by_id: dict[Any, Sample],
    categories: dict[int, str],
    used: set[int],
    issues: Issues,
) -> None:
    """Append a `Box` to its sample (`by_id`) for each annotation of the file, adding its category id to `used`.

    Crowd annotations are skipped. One that is not an object, names an image id not in 'images' or a category
    not in `categories`, or whose bbox is not four numbers or is empty, is an error and gives no box; one whose
    image entry was itself an error is skipped silently (that error was reported).
    """
    for i, ann in enumerate(data["annotations"] or []):
        if not isinstance(ann, dict):
            issues.error(path, line("annotations", i), "annotation is not an object")
            continue
        if ann.get("iscrowd", 0):
            continue
        sample = by_id.get(ann.get("image_id"))
        if sample is None:
            if not any(im.get("id") == ann.get("image_id") for im in data["images"] if isinstance(im, dict)):
                issues.error(path, line("annotations", i), f"image_id {ann.get('image_id')} is not in 'images'")
            continue  # else the image itself was reported
        cid = ann.get("category_id")
        if cid not in categories:
            issues.error(path, line("annotations", i), f"category_id {cid} is not in 'categories'")
            continue
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            issues.error(path, line("annotations", i), f"bbox must be [x, y, width, height] numbers, got {bbox}")
            continue
        if not w > 0 or not h > 0:
            issues.error(path, line("annotations", i), f"empty bbox {bbox}: width and height must be > 0")
            continue
        used.add(cid)
        sample.boxes.append(Box(categories[cid], x, y, x + w, y + h, functools.partial(line, "annotations", i)))
