"""NEON tree crowns: the embedded default detection data set, built reproducibly from the `deepforest` wheel.

Source: the PyPI wheel `deepforest==2.1.0` (Weecology, MIT licence) ships, in `deepforest/data/`, NEON airborne
RGB imagery (10 cm; NEON data are CC0) with Pascal VOC tree-crown boxes: 4 annotated images, 951 boxes.
`build()` fetches the wheel with `pip download deepforest==2.1.0 --no-deps` (no dependencies installed, nothing
imported from it), checks its SHA-256 and writes a one-class YOLO data set:

    <root>/images/{train,val}/*.png   tiles of at most TILE x TILE pixels
    <root>/labels/{train,val}/*.txt   class x_center y_center width height (normalised)
    <root>/ATTRIBUTION.md             source, licences, citations;  LICENSE-deepforest: the package's MIT text
    <root>/manifest.json              parameters, wheel hash, every tile with its source window and box count

Split without leakage: in every source image, the bottom VAL_FRACTION of the rows is validation and the rest is
training. The cut row is moved (within +-CUT_SEARCH rows) to the row that crosses the fewest crowns, and tiles are
cut inside each part separately, so no pixel and (where such a row exists) no crown is in both splits; overlapping
tiles only ever overlap within one split. Boxes cut by a tile edge are kept when at least MIN_VISIBLE of their
area is inside the tile. The XML is read by the package's VOC reader (ultra_vil.data.voc: VOC corners are 1-based,
1 is subtracted from each, as in Ultralytics' VOC recipe), boxes are its `Box` and label rows its `yolo_row`.
Every step is deterministic: the same wheel gives the same files. Progress goes to logging; `build` returns the
manifest.

CLI: python -m ultra_vil.data.neon_trees [--root datasets/neon-trees]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import xml.parsers.expat
import zipfile
from pathlib import Path

from ultra_vil.data.base import Box, yolo_row
from ultra_vil.data.issues import DatasetError, Issues, resolve_line
from ultra_vil.data.voc import parse_xml, read_objects

LOGGER = logging.getLogger(__name__)

PACKAGE = "deepforest==2.1.0"
WHEEL = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
DATA_DIR = "deepforest/data/"
LICENSE_IN_WHEEL = "deepforest-2.1.0.dist-info/licenses/LICENSE"
EXPECTED_IMAGES, EXPECTED_BOXES = 4, 951  # annotated images (XML + PNG pairs) and boxes in the wheel
NAMES = {0: "tree"}  # the XML names (Tree, Alive, Dead) all become one class

TILE = 400  # tile side in pixels (the size of the two small NEON plots)
OVERLAP = 80  # pixels shared by neighbouring tiles of the same split
VAL_FRACTION = 0.25  # bottom fraction of each image's rows that goes to validation
CUT_SEARCH = 60  # rows searched around the nominal cut for one that crosses the fewest crowns
MIN_VISIBLE = 0.5  # keep a box cut by a tile edge if this fraction of its area is inside the tile

ATTRIBUTION = """\
# NEON tree crowns (ultra-vil embedded data set)

Built by `python -m ultra_vil.data.neon_trees` from the PyPI wheel {package} (sha256 {sha}),
files `deepforest/data/*.png` + `*.xml` (4 annotated images, 951 tree-crown boxes).

- Imagery: National Ecological Observatory Network (NEON) Airborne Observation Platform RGB camera mosaics
  (sites YELL, OSBS, SOAP), released by NEON under CC0 1.0 (https://www.neonscience.org/data-samples/data-policies-citation).
- Annotations and package: DeepForest, Copyright (c) 2019 Ben Weinstein, MIT License (LICENSE-deepforest,
  https://github.com/weecology/DeepForest).
- Cite: Weinstein, B.G., Marconi, S., Aubry-Kientz, M., Vincent, G., Senyondo, H. and White, E.P. (2020).
  DeepForest: A Python package for RGB deep learning tree crown delineation. Methods in Ecology and Evolution
  11(12), 1743-1751. https://doi.org/10.1111/2041-210X.13472
- Changes: tiled into {tile} px tiles ({overlap} px overlap), split train/val by image rows (bottom {val:.0%} of each
  image is val), boxes converted to YOLO format, class names Tree/Alive/Dead merged into `tree`.
"""


def area(box: Box) -> float:
    return max(box.x2 - box.x1, 0.0) * max(box.y2 - box.y1, 0.0)


def fetch_wheel(cache: Path) -> Path:
    """The deepforest wheel in `cache`, downloaded with pip (no dependencies) if missing; SHA-256 checked."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            PACKAGE,
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(cache),
        ]
        LOGGER.info("neon-trees: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: sha256 {digest} != expected {WHEEL_SHA256}; delete it and build again")
    return wheel


def read_boxes(xml_path: Path, shown: str, width: int, height: int) -> list[Box]:
    """Boxes of one VOC XML (ultra_vil.data.voc: 1-based corners -> pixel edges), clipped to the image.

    `shown` names the file in errors (the member of the wheel, not the temp copy read)."""
    issues = Issues()
    try:
        root = parse_xml(xml_path)
    except xml.parsers.expat.ExpatError as e:
        issues.error(shown, e.lineno, f"malformed XML: {xml.parsers.expat.ErrorString(e.code)}")
        raise DatasetError(f"{shown}: not a VOC annotation", issues) from None
    boxes = []
    for b in read_objects(Path(shown), root, issues):
        box = dataclasses.replace(b, x1=max(b.x1, 0.0), y1=max(b.y1, 0.0), x2=min(b.x2, float(width)),
                                  y2=min(b.y2, float(height)))  # fmt: skip
        if area(box) <= 0:
            corners = (b.x1, b.y1, b.x2, b.y2)
            issues.error(shown, resolve_line(b.line), f"empty box {corners} in a {width}x{height} image")
        boxes.append(box)
    if issues.errors:
        raise DatasetError(f"{shown}: unusable annotations", issues)
    return boxes


def choose_cut(boxes: list[Box], height: int) -> int:
    """The row near (1 - VAL_FRACTION) * height that crosses the fewest boxes (ties: the nearest to nominal)."""
    nominal = round(height * (1 - VAL_FRACTION))
    candidates = range(max(1, nominal - CUT_SEARCH), min(height - 1, nominal + CUT_SEARCH) + 1)
    return min(candidates, key=lambda y: (sum(b.y1 < y < b.y2 for b in boxes), abs(y - nominal), y))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length): stride tile - overlap, the last tile flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def clip_to_window(box: Box, x0: int, y0: int, x1: int, y1: int) -> Box | None:
    """`box` clipped to the window and shifted into its coordinates, or None if less than MIN_VISIBLE is inside."""
    clipped = dataclasses.replace(
        box, x1=max(box.x1, x0) - x0, y1=max(box.y1, y0) - y0, x2=min(box.x2, x1) - x0, y2=min(box.y2, y1) - y0
    )
    if area(clipped) < MIN_VISIBLE * area(box) or clipped.x2 - clipped.x1 < 2 or clipped.y2 - clipped.y1 < 2:
        return None
    return clipped


def yolo_lines(boxes: list[Box], width: int, height: int) -> str:
    """YOLO label text: `0 xc yc w h` per box, normalised to the tile (ultra_vil.data.base.yolo_row)."""
    rows = [yolo_row(0, b.x1, b.y1, b.x2, b.y2, width, height) for b in boxes]
    return "\n".join(rows) + ("\n" if rows else "")


def build(root: str | Path = "datasets/neon-trees", wheel: str | Path | None = None, force: bool = False) -> dict:
    """Build the YOLO data set under `root` (skipped if its manifest exists, unless `force`).

    Args:
        root: Output folder (git-ignored in this repository).
        wheel: A local copy of the deepforest wheel; by default it is downloaded into `root/_source/`.
        force: Rebuild even if `root/manifest.json` exists.

    Returns:
        The manifest: parameters, counts per split and every tile.
    """
    from PIL import Image  # Pillow: an Ultralytics dependency; imported here so the module stays light

    root = Path(root)
    manifest_path = root / "manifest.json"
    if manifest_path.exists() and not force:
        return json.loads(manifest_path.read_text())
    wheel = Path(wheel) if wheel is not None else fetch_wheel(root / "_source")
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        raise ValueError(f"{wheel} is not {WHEEL} (sha256 mismatch)")
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            shutil.rmtree(root / kind / split, ignore_errors=True)
            (root / kind / split).mkdir(parents=True, exist_ok=True)
    for cache in root.glob("labels/*.cache"):  # Ultralytics' label caches would describe the old files
        cache.unlink()

    tiles, n_boxes, n_images, crossing = [], 0, 0, {}
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        names = set(zf.namelist())
        for xml_name in sorted(n for n in names if n.startswith(DATA_DIR) and n.endswith(".xml")):
            stem = xml_name[len(DATA_DIR) : -len(".xml")]
            png_name = f"{DATA_DIR}{stem}.png"
            if png_name not in names:
                raise ValueError(f"{wheel}: {xml_name} has no image {png_name}")
            png = Path(zf.extract(png_name, tmp))
            with Image.open(png) as im:
                image = im.convert("RGB")
            W, H = image.size
            boxes = read_boxes(Path(zf.extract(xml_name, tmp)), f"{wheel.name}:{xml_name}", W, H)
            n_images, n_boxes = n_images + 1, n_boxes + len(boxes)
            cut = choose_cut(boxes, H)
            crossing[stem] = sum(b.y1 < cut < b.y2 for b in boxes)
            for split, (top, bottom) in (("train", (0, cut)), ("val", (cut, H))):
                for ty in tile_starts(bottom - top, TILE, OVERLAP):
                    for tx in tile_starts(W, TILE, OVERLAP):
                        x0, y0 = tx, top + ty
                        x1, y1 = min(x0 + TILE, W), min(y0 + TILE, bottom)
                        kept = [c for b in boxes if (c := clip_to_window(b, x0, y0, x1, y1)) is not None]
                        name = f"{stem}_y{y0:04d}_x{x0:04d}"
                        image.crop((x0, y0, x1, y1)).save(root / "images" / split / f"{name}.png")
                        (root / "labels" / split / f"{name}.txt").write_text(yolo_lines(kept, x1 - x0, y1 - y0))
                        tiles.append(
                            dict(file=name, split=split, source=stem, window=[x0, y0, x1, y1], boxes=len(kept))
                        )
        if (n_images, n_boxes) != (EXPECTED_IMAGES, EXPECTED_BOXES):
            raise ValueError(
                f"{wheel}: expected {EXPECTED_IMAGES} annotated images with {EXPECTED_BOXES} boxes, "
                f"found {n_images} with {n_boxes}"
            )
        (root / "LICENSE-deepforest").write_bytes(zf.read(LICENSE_IN_WHEEL))
    (root / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(package=PACKAGE, sha=WHEEL_SHA256, tile=TILE, overlap=OVERLAP, val=VAL_FRACTION)
    )
    manifest = dict(
        source=PACKAGE,
        wheel_sha256=WHEEL_SHA256,
        params=dict(tile=TILE, overlap=OVERLAP, val_fraction=VAL_FRACTION, min_visible=MIN_VISIBLE),
        names=NAMES,
        source_images=n_images,
        source_boxes=n_boxes,
        boxes_crossing_cut=crossing,
        counts={
            s: dict(tiles=sum(t["split"] == s for t in tiles), boxes=sum(t["boxes"] for t in tiles if t["split"] == s))
            for s in ("train", "val")
        },
        tiles=tiles,
    )
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("datasets/neon-trees"), help="output folder")
    parser.add_argument("--wheel", type=Path, help="local deepforest-2.1.0 wheel (default: pip download)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    m = build(args.root, args.wheel, args.force)
    LOGGER.info("neon-trees: %s: train %s, val %s", args.root, m["counts"]["train"], m["counts"]["val"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
