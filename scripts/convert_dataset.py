#!/usr/bin/env python3
"""Convert Pascal VOC / COCO detection annotations to a YOLO data set, check a YOLO data set, or re-split one.

Examples:
    # VOC (Annotations/*.xml + JPEGImages/) -> YOLO; class ids in the order of YOUR data YAML's names
    python scripts/convert_dataset.py --format voc --src ~/data/aircraft_voc --out-dir ~/data/aircraft_yolo \
        --data-yaml datasets/aircraft.yaml --val-fraction 0.2 --seed 0

    # COCO JSON (a file, or a folder with one JSON per split) -> YOLO
    python scripts/convert_dataset.py --format coco --src ~/data/export_coco --out-dir ~/data/export_yolo

    # Validate a YOLO data set: errors and warnings by file and line; exit status 1 if it has errors
    python scripts/convert_dataset.py --check datasets/aircraft.yaml

    # New train/val split of a YOLO data set (writes image lists + data.yaml; no image is moved)
    python scripts/convert_dataset.py --split datasets/aircraft.yaml --out-dir ~/data/aircraft_split --seed 1

The source is only read: --out-dir may not be the source, lie inside it or be a parent of it (for --split: of
the data set's root or of the YAML's folder), and every image an annotation names must lie inside --src
(--allow-outside-src lifts that, with a warning). A non-empty --out-dir is refused unless this tool wrote it;
then --overwrite deletes exactly the files the tool wrote there (listed, with their sizes and content hashes, in
its marker .ultra_vil_dataset), each only while unchanged, and writes anew. Nothing is written if the
annotations have errors.
Exit status: 0 OK, 1 invalid data, 2 bad arguments or another error you can fix (one line; --debug: traceback).
"""

import argparse
import logging
import sys
import traceback
from pathlib import Path

from ultra_vil.data.issues import DatasetError, Issues
from ultra_vil.errors import UserError, describe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--format", choices=["voc", "coco"], help="convert annotations of this format (needs --src)")
    mode.add_argument("--check", type=Path, metavar="DATA.yaml", help="validate a YOLO data set and report")
    mode.add_argument("--split", type=Path, metavar="DATA.yaml", help="re-split a YOLO data set into train/val")
    parser.add_argument("--src", type=Path, help="source folder (COCO: also a single .json file)")
    parser.add_argument("--out-dir", type=Path, help="output folder (new or empty)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--data-yaml", type=Path, help="read class names AND their order from this data YAML")
    names.add_argument("--names", help="class names in id order: 'a,b,c' or a text file with one name a line")
    parser.add_argument(
        "--val-fraction", type=float, default=None,
        help="share of images for val, drawn by --seed (default: keep the source's split, else 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--link", action="store_true", help="symlink images instead of copying them")
    parser.add_argument("--skip-difficult", action="store_true", help="VOC: drop objects marked difficult")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of this tool in --out-dir")
    parser.add_argument(
        "--allow-outside-src", action="store_true",
        help="read images that annotations name outside --src (absolute or ../ paths, symlinks out): a warning each",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--quick", action="store_true", help="--check: read image headers only (misses truncation)")
    parser.add_argument("--max-issues", type=int, default=50, help="print at most this many errors and warnings each")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.format and (args.src is None or args.out_dir is None):
        parser.error("--format needs --src and --out-dir")
    if args.split and args.out_dir is None:
        parser.error("--split needs --out-dir")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    try:
        if args.check:
            return check(args.check, quick=args.quick, max_issues=args.max_issues)
        if args.split:
            from ultra_vil.data.split import split_yolo_dataset

            out = split_yolo_dataset(
                args.split, args.out_dir, args.val_fraction or 0.2, args.seed, overwrite=args.overwrite
            )
            print(f"wrote {out}")
            return check(out, quick=True, max_issues=args.max_issues)
        return convert(args)
    except DatasetError as e:  # invalid data: the message lists every problem by file and line
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (UserError, OSError) as e:  # a file that cannot be read or written, a bad argument: one line
        if args.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e) else ""
        print(f"error: {where}{describe(e)}", file=sys.stderr)
        return 2


def _datasets_dir() -> Path:
    """Ultralytics' datasets_dir setting, read only when a relative `path:` in a data YAML needs it (this imports
    ultralytics, which costs seconds; a script may, the ultra_vil.data package may not)."""
    from ultralytics.utils import DATASETS_DIR

    return Path(DATASETS_DIR)


def check(data_yaml: Path, quick: bool = False, max_issues: int = 50) -> int:
    from ultra_vil.data.yolo_check import check_yolo_dataset

    report = check_yolo_dataset(data_yaml, decode=not quick, datasets_dir=_datasets_dir)
    print(report.format(max_issues))
    return 0 if report.ok else 1


def convert(args: argparse.Namespace) -> int:
    from ultra_vil.data.convert import class_order, write_yolo
    from ultra_vil.data.yolo_format import names_from_yaml, parse_names_arg

    if not args.src.exists():
        raise DatasetError(f"--src {args.src} not found")
    names = names_from_yaml(args.data_yaml) if args.data_yaml else parse_names_arg(args.names) if args.names else None
    issues = Issues()
    if args.format == "voc":
        from ultra_vil.data.voc import read_voc

        samples, files = read_voc(
            args.src, issues, skip_difficult=args.skip_difficult, allow_outside_src=args.allow_outside_src
        )
        found = sorted({b.name for s in samples for b in s.boxes})
        names = class_order(found, names, "the sorted names in the VOC files")
    else:
        from ultra_vil.data.coco import read_coco

        samples, files, found = read_coco(args.src, issues, names, allow_outside_src=args.allow_outside_src)
        names = class_order(found, names, "the COCO categories, by category id")
    root = args.src.parent if args.src.is_file() else args.src
    print(f"read {len(samples)} annotated images from {len(files)} {args.format.upper()} file(s) in {args.src}")
    result = write_yolo(
        samples, names, args.out_dir, root, annotation_files=files, val_fraction=args.val_fraction, seed=args.seed,
        link=args.link, overwrite=args.overwrite, description=f"{args.format.upper()} annotations from {args.src}",
        issues=issues,
    )
    for split, n in result.images.items():
        print(f"  {split:5s}: {n} images ({result.backgrounds[split]} without objects), {result.boxes[split]} boxes")
    if result.warnings.warnings:
        print(result.warnings.format(args.max_issues))
    print(f"wrote {result.data_yaml} ({len(names)} classes: {names})")
    return check(result.data_yaml, quick=True, max_issues=args.max_issues)


if __name__ == "__main__":
    sys.exit(main())
