"""Read Pascal VOC XML detection annotations into `Sample`s.

Accepted layouts: the VOC one (`Annotations/*.xml`, `JPEGImages/*`, optional `ImageSets/Main/{train,val,
trainval,test}.txt`) or any folder tree with .xml files, the images beside them or anywhere below the source.
Coordinates: VOC's `<bndbox>` is 1-based (the VOC devkit); like Ultralytics' own VOC recipe
(ultralytics/cfg/datasets/VOC.yaml) we subtract 1 from every corner, then clip to the image.
The image size is read from the image file (EXIF-rotated as Ultralytics does); a different `<size>` in the
XML is a warning. Objects marked `<difficult>1</difficult>` are kept unless skip_difficult=True. A `<filename>`
that is absolute or climbs out of the source with `..` is an error (ultra_vil.data.base.ImageFinder).
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

from ultra_vil.data.base import Box, ImageFinder, Sample
from ultra_vil.data.issues import Issues
from ultra_vil.data.yolo_format import image_size

__all__ = ["ImageFinder", "parse_xml", "read_objects", "read_voc"]  # ImageFinder: for code that imported it here


@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[_Node]:
        return [c for c in self.children if c.tag == tag]

    @property
    def value(self) -> str:
        return self.text.strip()


def parse_xml(path: Path) -> _Node:
    """A minimal element tree that keeps each element's line (xml.etree drops it). Raises ExpatError."""
    parser = xml.parsers.expat.ParserCreate()
    stack: list[_Node] = []
    roots: list[_Node] = []

    def start(tag, attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag):
        stack.pop()

    def chars(data):
        if stack:
            stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, chars
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return roots[0]


def _voc_split_sets(root: Path) -> dict[str, str]:
    """Image id -> split from ImageSets/Main/{train,val,trainval,test}.txt, if present."""
    folder = root / "ImageSets" / "Main"
    out: dict[str, str] = {}
    for name, split in (("trainval", "train"), ("train", "train"), ("val", "val"), ("test", "test")):
        f = folder / f"{name}.txt"
        if f.is_file():
            for line in f.read_text().split():
                out[line.strip()] = split
    return out


def read_voc(
    src: Path, issues: Issues, skip_difficult: bool = False, allow_outside_src: bool = False
) -> tuple[list[Sample], list[Path]]:
    """All annotated images under `src`, and the XML files read. Problems go to `issues` (file and line).

    An image that resolves outside `src` is an error, or with `allow_outside_src` a warning."""
    src = Path(src)
    ann_dir = src / "Annotations"
    xmls = sorted((ann_dir if ann_dir.is_dir() else src).rglob("*.xml"))
    if not xmls:
        issues.error(src, None, "no .xml annotation files found (expected Annotations/*.xml or .xml files below)")
        return [], []
    finder = ImageFinder(src, allow_outside=allow_outside_src)
    splits = _voc_split_sets(src)
    samples = []
    for xml_path in xmls:
        try:
            root = parse_xml(xml_path)
        except xml.parsers.expat.ExpatError as e:
            issues.error(xml_path, e.lineno, f"malformed XML: {xml.parsers.expat.ErrorString(e.code)}")
            continue
        if root.tag != "annotation":
            issues.error(xml_path, root.line, f"not a VOC annotation: root element <{root.tag}>, expected <annotation>")
            continue
        sample = _read_annotation(xml_path, root, src, finder, issues, skip_difficult)
        if sample is not None:
            sample.split = splits.get(xml_path.stem) or splits.get(sample.image.stem)
            samples.append(sample)
    return samples, xmls


def _read_annotation(
    xml_path: Path, root: _Node, src: Path, finder: ImageFinder, issues: Issues, skip_difficult: bool
) -> Sample | None:
    fn = root.find("filename")
    file_name = fn.value if fn is not None and fn.value else xml_path.stem
    up = xml_path.parent.parent
    near = [xml_path.parent, src / "JPEGImages", up / "JPEGImages", up / "images"]
    image, why = finder.find(file_name, near)
    if image is None:
        issues.error(xml_path, fn.line if fn is not None else root.line, why)
        return None
    if finder.outside(image):
        issues.warn(xml_path, fn.line if fn is not None else root.line, f"image {image} lies outside --src {src}")
    try:
        width, height = image_size(image)
    except Exception as e:
        issues.error(xml_path, fn.line if fn is not None else root.line, f"unreadable image {image} ({e})")
        return None
    size = root.find("size")
    if size is not None:
        xw, xh = (size.find(k) for k in ("width", "height"))
        try:
            declared = (int(float(xw.value)), int(float(xh.value))) if xw is not None and xh is not None else None
        except ValueError:
            declared = None
        if declared and declared != (0, 0) and declared != (width, height):
            said = f"{declared[0]}x{declared[1]}"
            issues.warn(xml_path, size.line, f"<size> says {said}, image is {width}x{height}; using the image")
    sample = Sample(image, width, height, xml_path, root.line)
    sample.boxes = read_objects(xml_path, root, issues, skip_difficult)
    return sample


def read_objects(xml_path: Path, root: _Node, issues: Issues, skip_difficult: bool = False) -> list[Box]:
    """The `<object>` boxes of a parsed annotation, 1 subtracted from every corner (VOC is 1-based), not clipped.

    Problems go to `issues` with their line; the object concerned is left out."""
    boxes = []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or not name.value:
            issues.error(xml_path, obj.line, "<object> without a <name>")
            continue
        difficult = obj.find("difficult")
        if skip_difficult and difficult is not None and difficult.value in ("1", "true"):
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            issues.error(xml_path, obj.line, f"<object> '{name.value}' has no <bndbox> (only boxes are converted)")
            continue
        coords = []
        for k in ("xmin", "ymin", "xmax", "ymax"):
            el = bnd.find(k)
            try:
                coords.append(float(el.value))
            except (AttributeError, ValueError):
                issues.error(
                    xml_path, el.line if el is not None else bnd.line, f"<{k}> missing or not a number in <bndbox>"
                )
                break
        else:
            xmin, ymin, xmax, ymax = coords
            if xmax <= xmin or ymax <= ymin:
                issues.error(xml_path, bnd.line, f"empty box: xmin={xmin:g} xmax={xmax:g} ymin={ymin:g} ymax={ymax:g}")
                continue
            boxes.append(Box(name.value, xmin - 1, ymin - 1, xmax - 1, ymax - 1, bnd.line, name.line))
    return boxes
