"""What every data tool shares: the sample types, image finding, the out-dir rule and the marker.

The readers (voc.py, coco.py), the writer (convert.py), split.py and neon_trees.py import this module; it imports
none of them, so the package has no import circle and a reader does not depend on the writer.

Two promises rest on this file:
- **The source is only read.** An output folder may not be the source, lie inside it, or be a parent of it
  (`check_out_dir`), and every image an annotation names must resolve inside the source, symlinks followed
  (`ImageFinder`), unless the user passes --allow-outside-src.
- **Only what ultra-vil wrote is ever deleted.** Each output folder holds a marker, `.ultra_vil_dataset`, listing
  every file written there with its size and the sha256 of its content (a symlink: its target). `--overwrite`
  deletes exactly those files, each only while it still has that content, then the folders left empty; never a
  folder wholesale. An edit that keeps the size (a class id `0` -> `1`, a name `red` -> `RED`) is caught by the
  hash. A marker that does not validate (`{}`, an older marker without a file list, a path leaving the folder)
  is an error naming it. Markers written before the hashes were recorded (the same version 2, sizes only) are
  still read, and their files checked by size alone, as they were when written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ultra_vil.data.issues import DatasetError, Issues, Line

# Ultralytics' ultralytics.data.utils.IMG_FORMATS (8.4), copied so that the data tools do not import ultralytics.
# The one list of image extensions: the classifier's ImageFolder (ultra_vil.train.data) uses it too.
IMG_FORMATS = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)
MARKER = ".ultra_vil_dataset"
MARKER_TOOL = "ultra_vil.data"
MARKER_VERSION = 2  # 1 (ultra-vil 0.1.0): {"source", "tool"} without a file list, so nothing in it can be deleted
# The content hash of a written file in the marker; version 2 markers without it hold sizes only (checked by size).
MARKER_HASH = "sha256"


def is_image(path: Path | str) -> bool:
    return str(path).rpartition(".")[-1].lower() in IMG_FORMATS


def is_within(path: Path, root: Path) -> bool:
    """True if `path` is `root` or below it; both should be resolved (symlinks followed) by the caller."""
    return path == root or root in path.parents


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


def yolo_row(class_id: int, x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> str:
    """One YOLO label row for a pixel box in a width x height image: `class xc yc w h`, normalised, 6 decimals."""
    xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    return f"{class_id} {xc:.6f} {yc:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"


# ------------------------------------------------------------------------------------------------ image finding
class ImageFinder:
    """Finds an annotation's image: first beside it or in the usual folders, then anywhere below `root`.

    Whatever is found must resolve (symlinks followed) inside `root`: an annotation naming `/etc/passwd` or
    `../../secret.png` is refused with the reason, unless `allow_outside` (then `outside` lists what was let
    through, for a warning).
    """

    def __init__(self, root: Path, allow_outside: bool = False):
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self.allow_outside = allow_outside
        self._by_name: dict[str, list[Path]] | None = None
        self._by_stem: dict[str, list[Path]] | None = None

    def _index(self) -> None:
        self._by_name, self._by_stem = {}, {}
        for p in sorted(self.root.rglob("*")):
            if is_image(p) and p.is_file():
                self._by_name.setdefault(p.name, []).append(p.resolve())
                self._by_stem.setdefault(p.stem, []).append(p.resolve())

    def find(self, file_name: str, near: list[Path]) -> tuple[Path | None, str]:
        """(image, "") or (None, why not). An image outside the root is (None, why) unless allow_outside."""
        rel = Path(file_name)
        for folder in near:
            if (folder / rel).is_file():  # an absolute `rel` replaces `folder`: checked below like any other
                return self._inside((folder / rel).resolve(), file_name)
        if self._by_name is None:
            self._index()
        hits = self._by_name.get(rel.name, [])
        if not hits and rel.suffix.lower().lstrip(".") not in IMG_FORMATS:
            hits = self._by_stem.get(rel.name, [])  # file name given without extension
        if len(hits) == 1:
            return self._inside(hits[0], file_name)
        if len(hits) > 1:
            return None, f"image '{file_name}' is ambiguous: {len(hits)} files of that name under {self.root}"
        return None, f"image '{file_name}' not found (looked beside the annotation and under {self.root})"

    def _inside(self, image: Path, file_name: str) -> tuple[Path | None, str]:
        if self.allow_outside or is_within(image, self.real_root):
            return image, ""
        return None, (
            f"image path '{file_name}' resolves to {image}, outside --src {self.root}: refused (the tool reads only "
            "below --src; pass --allow-outside-src if this is intended)"
        )

    def outside(self, image: Path) -> bool:
        return not is_within(image, self.real_root)


# ------------------------------------------------------------------------------------------------ out-dir rule
def check_out_dir(out_dir: Path, src_roots: list[Path], source_files: list[Path], overwrite: bool) -> dict | None:
    """Refuse any out_dir whose use could change the source; refuse a non-empty one unless it is ours.

    Args:
        out_dir: The folder about to be written.
        src_roots: Source folders (a data set root, the folder of a data YAML): out_dir may not be one of them,
            lie inside one, or be a parent of one.
        source_files: Files read (images, annotations, lists): out_dir may not contain any of them either (an
            image let in by --allow-outside-src may lie outside every root).
        overwrite: Whether an earlier output of this tool in out_dir may be replaced.

    Returns:
        The validated marker of an earlier output (to pass to `remove_written`), or None for a new or empty folder.
    """
    out = Path(out_dir).resolve()
    for root in src_roots:
        src = Path(root).resolve()
        if is_within(out, src):
            raise DatasetError(f"--out-dir {out_dir} is the source folder {root} or inside it; choose another folder")
        if is_within(src, out):
            raise DatasetError(
                f"--out-dir {out_dir} is a parent of the source folder {root}; choose a folder outside the source"
            )
    inside = next((f for f in source_files if out in Path(f).resolve().parents), None)
    if inside is not None:
        raise DatasetError(f"--out-dir {out_dir} contains source file {inside}; choose a folder outside the source")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out-dir {out_dir} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not (out / MARKER).is_file():
        raise DatasetError(
            f"--out-dir {out_dir} is not empty and was not written by this tool; choose an empty or new folder"
        )
    marker = read_marker(out)
    if not overwrite:
        raise DatasetError(f"--out-dir {out_dir} holds an earlier output of this tool; pass --overwrite to replace it")
    return marker


# ------------------------------------------------------------------------------------------------ the marker
def read_marker(folder: Path) -> dict:
    """The validated marker of `folder`; DatasetError naming it if it is not one this version wrote."""
    path = Path(folder) / MARKER

    def bad(why: str) -> DatasetError:
        issues = Issues()
        issues.error(path, None, f"{why}; nothing was deleted. Delete the folder yourself or choose another one")
        return DatasetError(f"not an ultra-vil output marker: {path}", issues)

    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"unreadable marker ({e})") from None
    if not isinstance(marker, dict) or marker.get("tool") != MARKER_TOOL:
        raise bad(f"the marker does not say it was written by {MARKER_TOOL}")
    if marker.get("version") != MARKER_VERSION or not isinstance(marker.get("files"), dict):
        raise bad(f"marker version {marker.get('version', 1)} without a list of written files (needs {MARKER_VERSION})")
    for rel, entry in marker["files"].items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel == MARKER:
            raise bad(f"the marker lists a path outside the folder: {rel!r}")
        if entry is not None and not (
            isinstance(entry, dict)
            and (isinstance(entry.get("size"), int) or isinstance(entry.get("link"), str))
            and isinstance(entry.get(MARKER_HASH, ""), str)
        ):
            raise bad(f"the marker's entry for {rel!r} is neither a size (and hash) nor a link target: {entry!r}")
    return marker


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """What the marker records of a written file: its size and content hash, or for a symlink its target."""
    if path.is_symlink():
        return {"link": os.readlink(path)}
    return {"size": path.stat().st_size, MARKER_HASH: _digest(path)}


def changed(path: Path, entry: dict) -> str | None:
    """How the file at `path` differs from its marker `entry`, or None while it is what was written.

    A link is compared by target; a file by size, then (if the entry has one) by content hash. An entry without a
    hash (a marker written before hashes were recorded) is compared by size alone: an edit of the same size is
    not seen there."""
    if "link" in entry:
        now = os.readlink(path) if path.is_symlink() else None
        return None if now == entry["link"] else f"link target {entry['link']!r} in the marker, now {now!r}"
    if path.is_symlink():
        return f"a file of {entry['size']} bytes in the marker, now a link to {os.readlink(path)!r}"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{entry['size']} bytes in the marker, now {size}"
    if MARKER_HASH in entry and _digest(path) != entry[MARKER_HASH]:
        return f"same size ({size} bytes), other content ({MARKER_HASH} differs)"
    return None


def write_marker(folder: Path, files: dict[str, dict | None], **info) -> None:
    """Record `files` (path relative to `folder` -> `file_entry`, or None while it is being written) and `info`."""
    marker = {"tool": MARKER_TOOL, "version": MARKER_VERSION, **info, "files": files}
    tmp = Path(folder) / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(folder) / MARKER)  # atomic: a marker is always whole


def remove_written(folder: Path, marker: dict) -> None:
    """Delete the files `marker` lists, each only if it still is what was written, then the folders left empty.

    Everything is checked before anything is deleted: a listed file that has changed (`changed`: another content,
    another link target, a folder in its place; by size only for a marker without hashes) or whose path leaves
    `folder` through a symlinked folder stops the whole replacement with an error naming it and what changed. A
    file listed as None (an interrupted write: the path did not exist when the tool began) is deleted if it is a
    file.
    """
    folder = Path(folder)
    real = folder.resolve()
    doomed, issues = [], Issues()
    for rel, entry in sorted(marker["files"].items()):
        path = folder / rel
        if not is_within(path.parent.resolve(), real):
            issues.error(folder / MARKER, None, f"{rel}: its folder leads outside {folder} (a symlink); not deleted")
            continue
        if not os.path.lexists(path):
            continue  # already gone: nothing to delete
        if path.is_dir() and not path.is_symlink():
            issues.error(path, None, "listed in the marker as a file, but it is a folder; not deleted")
            continue
        why = changed(path, entry) if entry is not None else None
        if why:
            issues.error(path, None, f"changed since this tool wrote it ({why}); not deleted")
        else:
            doomed.append(path)
    if issues.errors:
        raise DatasetError(f"not replacing the earlier output in {folder}: files changed since it was written", issues)
    for path in doomed:
        path.unlink()
    for d in sorted({p.parent for p in doomed}, key=lambda p: len(p.parts), reverse=True):
        while d != folder and is_within(d.resolve(), real):
            try:
                d.rmdir()  # only if empty: a file the user added keeps its folder
            except OSError:
                break
            d = d.parent
    (folder / MARKER).unlink()


def check_free(folder: Path, paths: list[Path]) -> None:
    """DatasetError unless every one of `paths` is free and stays inside `folder`.

    Free: no file exists there (the writer never replaces a file it did not write). Inside: its nearest existing
    folder resolves below `folder`, so a symlink put in the output (`images -> the source's images`) cannot send
    a write into the source."""
    real, issues = Path(folder).resolve(), Issues()
    for p in paths:
        if os.path.lexists(p):
            issues.error(p, None, "exists and was not written by this tool; not overwritten")
            continue
        parent = p.parent  # below `folder`: the writer builds every path as folder / relative path
        while parent != Path(folder) and not parent.exists():
            parent = parent.parent
        if parent != Path(folder) and not is_within(parent.resolve(), real):
            issues.error(p, None, f"its folder {parent} leads outside {folder} (a symlink); not written")
    if issues.errors:
        n = len(issues.errors)
        issues.errors = issues.errors[:20]
        raise DatasetError(f"not written: {n} output path(s) hold files this tool did not write or lead outside "
                           f"{folder}", issues)  # fmt: skip


def begin_output(out_dir: Path, earlier: dict | None, written: list[str], source: Path, command: str) -> dict:
    """Make `out_dir` ready for the files `written` (paths relative to it) and record them as being written.

    Checks that every path not listed in the `earlier` marker is free (`check_free`; the listed ones are checked by
    `remove_written`), deletes the earlier output, creates `out_dir`, then writes a marker listing `written`
    without sizes, so that a run interrupted from here on leaves an output `--overwrite` can replace.

    Returns:
        The marker's info, {"source": `source` resolved, as str; "command": `command`}, for `finish_output`.
    """
    ours = set(earlier["files"]) if earlier else set()
    check_free(out_dir, [out_dir / rel for rel in written if rel not in ours])  # ours: checked by remove_written
    if earlier:
        remove_written(out_dir, earlier)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = dict(source=str(Path(source).resolve()), command=command)
    write_marker(out_dir, {rel: None for rel in written}, **info)  # first: an interrupted run can be replaced
    return info


def finish_output(out_dir: Path, written: list[str], info: dict) -> None:
    """Record every file of `written` (now on disk, below `out_dir`) in the marker with its `file_entry`."""
    write_marker(out_dir, {rel: file_entry(out_dir / rel) for rel in written}, **info)
