"""The YOLO data set format as Ultralytics 8.4 reads it, and the few helpers every data tool shares.

Layout: a data YAML (`path`, `train`, `val`, optional `test`, `names`) whose splits are image folders, text
files listing images (one a line; `./x` is relative to the text file) or lists of those. Each image
`.../images/.../a.jpg` has a label file `.../labels/.../a.txt` (the last `/images/` replaced), one object a
line: `class x_center y_center width height`, coordinates normalised to [0, 1]. A missing or empty label
file is a background image. Without `path`, the YAML's own folder is the root (Ultralytics'
`check_det_dataset`); a relative `path` that does not exist is taken relative to Ultralytics' datasets_dir.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from ultra_vil.data.base import IMG_FORMATS, is_image  # the one list of image extensions lives in base
from ultra_vil.data.issues import DatasetError, Issues

__all__ = ["IMG_FORMATS", "SPLITS", "dump_data_yaml", "image_size", "is_image", "label_path", "names_from_yaml"]
SPLITS = ("train", "val", "test")


def label_path(image: Path | str) -> Path:
    """Ultralytics' img2label_paths for one image: last /images/ -> /labels/, extension -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as Ultralytics sees the image: EXIF rotations by 90 degrees swap the two.

    Reads the header only. Raises OSError (or PIL's UnidentifiedImageError) if the file is not an image.
    """
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation
        except Exception:  # broken EXIF block: Ultralytics ignores it too
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# ---------------------------------------------------------------------------------------------- YAML with lines
def load_yaml_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """Load a YAML file and the 1-based line of each top-level key. Syntax errors name file and line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        issues = Issues()
        issues.error(path, line, f"invalid YAML: {getattr(e, 'problem', None) or e}")
        raise DatasetError(f"cannot read {path}", issues) from None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[str(key.value)] = key.start_mark.line + 1
    return data, lines


def names_from_yaml(path: Path) -> list[str]:
    """Class names in id order from a data YAML's `names` (list, or dict id -> name with ids 0..nc-1)."""
    data, lines = load_yaml_with_lines(path)
    issues = Issues()
    names = parse_names_value(data.get("names") if isinstance(data, dict) else None, path, lines.get("names"), issues)
    if issues.errors:
        raise DatasetError(f"cannot read class names from {path}", issues)
    return names


def parse_names_value(value: Any, path: Path, line: int | None, issues: Issues) -> list[str]:
    """Validate a `names` value: a list, or a dict with integer keys 0..n-1; names unique and non-empty."""
    if value is None:
        issues.error(path, line, "'names' is missing: list the class names in the order of the class ids")
        return []
    if isinstance(value, dict):
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            issues.error(path, line, f"'names' keys must be integer class ids, got {list(value)[:5]}")
            return []
        if ids != list(range(len(ids))):
            issues.error(path, line, f"'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
            return []
        names = [str(value[k] if k in value else value[str(k)]) for k in ids]
    elif isinstance(value, list):
        names = [str(v) for v in value]
    else:
        issues.error(path, line, f"'names' must be a list or a mapping id -> name, got {type(value).__name__}")
        return []
    if not names:
        issues.error(path, line, "'names' is empty: a detection data set needs at least one class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        issues.error(path, line, f"'names' lists these names more than once: {dupes}")
    if any(not n.strip() for n in names):
        issues.error(path, line, "'names' contains an empty name")
    return names


def parse_names_arg(text: str) -> list[str]:
    """`--names a,b,c` (commas) or a path to a text file with one name a line."""
    p = Path(text)
    if p.is_file():
        names = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        names = [x.strip() for x in text.split(",") if x.strip()]
    issues = Issues()
    parse_names_value(names, p if p.is_file() else Path("--names"), None, issues)
    if issues.errors:
        raise DatasetError("invalid --names", issues)
    return names


def dump_data_yaml(
    path: Path, names: list[str], splits: dict[str, str], header: str, root: str | None = None
) -> None:
    """Write an Ultralytics data YAML: header comment, optional `path`, the splits, `names` as id -> name."""
    lines = [f"# {x}" if x else "#" for x in header.strip().splitlines()]
    lines.append("")
    if root is not None:
        lines.append(f"path: {_yaml_scalar(root)}  # data set root")
    else:
        lines.append("# no 'path' key: Ultralytics then takes the folder of this file as the root")
    for split in SPLITS:
        if split in splits:
            lines.append(f"{split}: {_yaml_scalar(splits[split])}")
    lines += ["", "# Classes (the class id in the label files indexes this list)", "names:"]
    lines += [f"  {i}: {_yaml_scalar(n)}" for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert names_from_yaml(path) == names  # the quoting round-trips


def _yaml_scalar(value: str) -> str:
    """A plain scalar where YAML keeps it a string, else a JSON-style quoted one (valid YAML)."""
    if re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./ -]*", value) and value.strip() == value and value.lower() not in {
        "yes", "no", "on", "off", "true", "false", "null", "y", "n", "~",
    }:
        return value
    import json

    return json.dumps(value, ensure_ascii=False)
