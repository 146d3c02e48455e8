"""Data tools (ultra_vil/data, scripts/convert_dataset.py): exact YOLO labels from VOC and COCO built here,
every broken input reported with its file and line, sources never written, reproducible splits.

Everything is generated in tmp_path in well under a second per test; no Ultralytics import.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from ultra_vil.data.convert import MARKER
from ultra_vil.data.split import assign_val, split_yolo_dataset
from ultra_vil.data.yolo_check import check_yolo_dataset

ROOT = Path(__file__).resolve().parents[1]
convert_dataset = load_script("convert_dataset")


def tree_hash(folder: Path) -> dict[str, str]:
    """Path -> sha256 of every file below `folder` (the source must be byte-for-byte unchanged)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def image(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def labels(out: Path) -> dict[str, str]:
    """'split/stem' -> label file text, for every label file written."""
    return {f"{p.parent.name}/{p.stem}": p.read_text() for p in sorted((out / "labels").rglob("*.txt"))}


def voc_xml(filename: str, w: int, h: int, objects: list[tuple]) -> str:
    objs = "".join(
        f"  <object>\n    <name>{n}</name>\n    <difficult>0</difficult>\n"
        f"    <bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox>\n  </object>\n"
        for n, a, b, c, d in objects
    )
    return f"<annotation>\n  <filename>{filename}</filename>\n  <size><width>{w}</width><height>{h}</height>" \
           f"<depth>3</depth></size>\n{objs}</annotation>\n"


@pytest.fixture
def voc(tmp_path):
    src = tmp_path / "voc"
    image(src / "JPEGImages" / "a.jpg", 200, 100)
    image(src / "JPEGImages" / "b.jpg", 100, 50)
    image(src / "JPEGImages" / "c.jpg", 40, 40)
    ann = src / "Annotations"
    ann.mkdir(parents=True)
    (ann / "a.xml").write_text(voc_xml("a.jpg", 200, 100, [("plane", 11, 21, 51, 81), ("heli", 101, 1, 201, 101)]))
    (ann / "b.xml").write_text(voc_xml("b.jpg", 100, 50, [("plane", 1, 1, 51, 26)]))
    (ann / "c.xml").write_text(voc_xml("c.jpg", 40, 40, []))  # a background image
    sets = src / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nc\n")
    (sets / "val.txt").write_text("b\n")
    return src


def names_yaml(path: Path, names: list[str]) -> Path:
    entries = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    path.write_text("train: images/train\nval: images/val\nnames:\n" + entries)
    return path


def test_voc_converts_to_exact_yolo_labels_in_the_users_class_order(voc, tmp_path):
    before = tree_hash(voc)
    order = names_yaml(tmp_path / "mine.yaml", ["heli", "plane"])  # not sorted: the user's order must win
    out = tmp_path / "out"
    rc = convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--data-yaml", str(order)])
    assert rc == 0
    # VOC is 1-based: corners minus 1 (as Ultralytics' VOC recipe), clipped to the image, normalised.
    assert labels(out) == {
        "train/a": "1 0.150000 0.500000 0.200000 0.600000\n0 0.750000 0.500000 0.500000 1.000000\n",
        "train/c": "",
        "val/b": "1 0.250000 0.250000 0.500000 0.500000\n",
    }
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.jpg", "c.jpg"]
    report = check_yolo_dataset(out / "data.yaml")
    assert report.ok and report.names == ["heli", "plane"]
    assert report.stats["train"].backgrounds == 1 and report.stats["train"].boxes == 2
    assert tree_hash(voc) == before


def test_coco_converts_to_exact_yolo_labels(tmp_path):
    src = tmp_path / "coco"
    for split, name in (("train", "p.png"), ("valid", "q.png")):
        image(src / split / name, 100, 200)
    cats = [{"id": 0, "name": "aircraft", "supercategory": "none"},  # Roboflow's data-set-level category
            {"id": 3, "name": "f16", "supercategory": "aircraft"},
            {"id": 7, "name": "c17", "supercategory": "aircraft"}]
    train = {"images": [{"id": 1, "file_name": "p.png", "width": 100, "height": 200}], "categories": cats,
             "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                             {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 200]},
                             {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 1}]}
    val = {"images": [{"id": 4, "file_name": "q.png", "width": 100, "height": 200}], "categories": cats,
           "annotations": [{"id": 9, "image_id": 4, "category_id": 3, "bbox": [50.5, 100, 25, 50]}]}
    (src / "train" / "_annotations.coco.json").write_text(json.dumps(train, indent=1))
    (src / "valid" / "_annotations.coco.json").write_text(json.dumps(val, indent=1))
    before = tree_hash(src)

    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(out)]) == 0
    # No names given: categories with annotations, by category id (the grouping category 'aircraft' left out).
    assert check_yolo_dataset(out / "data.yaml").names == ["f16", "c17"]
    assert labels(out) == {
        "train/p": "1 0.250000 0.200000 0.300000 0.200000\n0 0.500000 0.500000 1.000000 1.000000\n",  # crowd skipped
        "val/q": "0 0.630000 0.625000 0.250000 0.250000\n",
    }
    # With the user's names, ids follow their order.
    out2 = tmp_path / "out2"
    rc = convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(out2), "--names", "c17,x,f16"])
    assert rc == 0
    assert labels(out2)["val/q"] == "2 0.630000 0.625000 0.250000 0.250000\n"
    assert tree_hash(src) == before


def _issues_text(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_broken_voc_is_reported_by_file_and_line_and_nothing_is_written(tmp_path, capsys):
    src = tmp_path / "voc"
    image(src / "JPEGImages" / "a.jpg", 100, 100)
    ann = src / "Annotations"
    ann.mkdir(parents=True)
    (ann / "a.xml").write_text(voc_xml("a.jpg", 100, 100, [("plane", 10, 10, 20, 20), ("tank", 10, 10, 20, 20),
                                                           ("plane", 30, 10, 20, 20)]))
    (ann / "b.xml").write_text(voc_xml("missing.jpg", 100, 100, [("plane", 10, 10, 20, 20)]))
    (ann / "c.xml").write_text("<annotation>\n  <filename>a.jpg</filename>\n  <object>\n</annotation>\n")
    before = tree_hash(src)
    out = tmp_path / "out"
    rc = convert_dataset.main(["--format", "voc", "--src", str(src), "--out-dir", str(out), "--names", "plane"])
    text = _issues_text(capsys)
    assert rc == 1
    assert f"{ann / 'a.xml'}:10: class 'tank' is not in the class list ['plane']" in text
    assert f"{ann / 'a.xml'}:17: empty box: xmin=30 xmax=20" in text
    assert f"{ann / 'b.xml'}:2: image 'missing.jpg' not found" in text
    assert f"{ann / 'c.xml'}:4: malformed XML: mismatched tag" in text
    assert not out.exists()
    assert tree_hash(src) == before


def test_broken_coco_is_reported_by_file_and_line(tmp_path, capsys):
    src = tmp_path / "coco"
    image(src / "a.png", 50, 50)
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}],
            "categories": [{"id": 1, "name": "jet"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
                            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},
                            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    path = src / "ann.json"
    path.write_text(json.dumps(data, indent=1))
    lines = path.read_text().splitlines()
    gone = next(i for i, x in enumerate(lines) if "gone.png" in x)
    ann = [i for i, x in enumerate(lines) if '"image_id"' in x]

    rc = convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(tmp_path / "out")])
    text = _issues_text(capsys)
    assert rc == 1
    assert f"{path}:{_obj_start(lines, gone)}: image 'gone.png' not found" in text
    assert f"{path}:{_obj_start(lines, ann[0])}: empty bbox [1, 1, 0, 5]" in text
    assert f"{path}:{_obj_start(lines, ann[1])}: category_id 9 is not in 'categories'" in text
    assert f"{path}:{_obj_start(lines, ann[2])}: image_id 5 is not in 'images'" in text

    path.write_text('{"images": [\n  {"id": 1,\n   "file_name": "a.png"\n  ]\n}')
    assert convert_dataset.main(["--format", "coco", "--src", str(path), "--out-dir", str(tmp_path / "o")]) == 1
    assert f"{path}:4: malformed JSON" in _issues_text(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def _obj_start(lines, i):
    """1-based line of the '{' that opens the JSON object holding line i (0-based)."""
    while lines[i].strip() != "{":
        i -= 1
    return i + 1


@pytest.fixture
def yolo_set(tmp_path):
    """A small valid YOLO data set: 3 train images (one background), 2 val images."""
    root = tmp_path / "yolo"
    for split, stems in (("train", ["t0", "t1", "t2"]), ("val", ["v0", "v1"])):
        for s in stems:
            image(root / "images" / split / f"{s}.png", 32, 24)
            if s != "t2":
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{s}.txt").write_text("0 0.5 0.5 0.25 0.25\n1 0.2 0.3 0.1 0.1\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    return root


def test_check_counts_a_valid_set(yolo_set):
    report = check_yolo_dataset(yolo_set / "data.yaml")
    assert report.ok and not report.issues.warnings, report.format()
    train = report.stats["train"]
    assert (train.images, train.labelled, train.backgrounds) == (3, 2, 1)
    assert report.stats["val"].boxes == 4 and report.stats["val"].per_class == {0: 2, 1: 2}


def test_check_reports_every_broken_kind_with_file_and_line(yolo_set, capsys):
    lab = yolo_set / "labels" / "train" / "t0.txt"
    lab.write_text(
        "0 0.5 0.5 0.25 0.25\n"  # 1 ok
        "1 0.5 1.2 0.25 0.25\n"  # 2 out of [0, 1]
        "2 0.5 0.5 0.25 0.25\n"  # 3 class id out of range
        "0 0.5 0.5 0.25\n"  # 4 malformed: 4 values
        "0 0.5 zero 0.25 0.25\n"  # 5 malformed: not a number
        "0.5 0.5 0.5 0.25 0.25\n"  # 6 malformed: non-integer class
        "0 0.5 0.5 0.25 0.25\n"  # 7 duplicate of line 1 (warning)
        "0 0.5 0.5 0.25 0.25 0.9\n"  # 8 six values
    )
    (yolo_set / "images" / "train" / "t1.png").write_bytes(b"not an image at all")
    trunc = yolo_set / "images" / "val" / "v0.png"
    trunc.write_bytes(trunc.read_bytes()[:60])  # truncated PNG
    lst = yolo_set / "extra.txt"
    lst.write_text("./images/val/v1.png\n./images/val/nope.png\n")
    (yolo_set / "images" / "test").mkdir()
    (yolo_set / "data.yaml").write_text(
        "# comment\ntrain:\n  - images/train\n  - extra.txt\nval: images/val\ntest: images/test\nnames: [a, b]\n"
    )
    before = tree_hash(yolo_set)
    assert convert_dataset.main(["--check", str(yolo_set / "data.yaml")]) == 1
    text = _issues_text(capsys)
    expected_errors = [
        f"{lab}:2: coordinates must be normalised to [0, 1], got 1.2",
        f"{lab}:3: class id 2 out of range: 2 classes, ids 0..1",
        f"{lab}:4: malformed row: 4 values",
        f"{lab}:5: malformed row: not all values are numbers",
        f"{lab}:6: malformed row: class id 0.5 is not an integer",
        f"{lab}:8: malformed row: 6 values",
        f"{lst}:2: image not found: {yolo_set / 'images' / 'val' / 'nope.png'}",
        f"{yolo_set / 'images' / 'train' / 't1.png'}: unreadable image",
        f"{trunc}: unreadable image",
        f"{yolo_set / 'data.yaml'}:6: split 'test' is empty",
    ]
    for e in expected_errors:
        assert f"error: {e}" in text, f"missing: {e}\n{text}"
    assert f"warning: {lab}:7: duplicate of line 1" in text
    assert "result: INVALID (10 errors" in text
    assert tree_hash(yolo_set) == before  # --check reads only


def test_check_reports_yaml_problems_with_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images/train\nval: [unclosed\nnames: [a]\n")
    assert convert_dataset.main(["--check", str(bad)]) == 1
    assert f"{bad}:3: invalid YAML" in _issues_text(capsys)
    (tmp_path / "images" / "train").mkdir(parents=True)
    bad.write_text("train: images/train\nval: images/missing\nnames: {0: a, 2: b}\n")
    report = check_yolo_dataset(bad)
    text = report.format()
    assert f"{bad}:2: 'val' path not found" in text
    assert f"{bad}:3: 'names' ids must be 0..1 without gaps" in text
    assert f"{bad}:1: split 'train' is empty" in text


def test_converter_refuses_to_write_into_its_source(voc, tmp_path, capsys):
    before = tree_hash(voc)
    for out in (voc, voc / "JPEGImages", voc / "new" / "deeper"):
        assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 1
        assert "is the source folder" in _issues_text(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(foreign)]) == 1
    assert "not written by this tool" in _issues_text(capsys)
    assert (foreign / "keep.txt").read_text() == "mine"
    # Our own earlier output is replaced only with --overwrite.
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    assert (out / MARKER).is_file()
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 1
    assert "--overwrite" in _issues_text(capsys)
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite",
                                 "--val-fraction", "0.5"]) == 0  # fmt: skip
    assert tree_hash(voc) == before


def test_split_is_reproducible_by_seed():
    keys = [f"img{i:03d}.jpg" for i in range(50)]
    val = assign_val(keys, 0.2, seed=0)
    assert len(val) == 10
    assert assign_val(list(reversed(keys)), 0.2, seed=0) == val  # input order does not matter
    assert assign_val(keys, 0.2, seed=1) != val
    assert len(assign_val(keys[:2], 0.01, seed=0)) == 1  # never an empty val split


def test_resplit_of_a_yolo_set_and_converter_split(yolo_set, voc, tmp_path):
    before = tree_hash(yolo_set)
    out_yaml = split_yolo_dataset(yolo_set / "data.yaml", tmp_path / "split", val_fraction=0.4, seed=3)
    report = check_yolo_dataset(out_yaml)
    assert report.ok, report.format()
    assert report.stats["train"].images == 3 and report.stats["val"].images == 2
    assert report.names == ["a", "b"]
    again = split_yolo_dataset(yolo_set / "data.yaml", tmp_path / "split2", val_fraction=0.4, seed=3)
    assert (again.parent / "val.txt").read_text() == (out_yaml.parent / "val.txt").read_text()
    assert tree_hash(yolo_set) == before
    # The converter's own split (--val-fraction) is seeded as well.
    outs = []
    for k in range(2):
        out = tmp_path / f"conv{k}"
        assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out),
                                     "--val-fraction", "0.34", "--seed", "5"]) == 0  # fmt: skip
        outs.append(sorted(p.name for p in (out / "images" / "val").iterdir()))
    assert outs[0] == outs[1] and len(outs[0]) == 1


AIRCRAFT = ["c17", "c5", "helicopter", "c130", "f16", "b2", "other", "b52", "kc10", "command", "f15", "kc135", "a10",
            "b1", "aew", "f22", "p3", "p8", "f35", "f18", "v22", "su-27", "il-38", "tu-134", "su-33", "an-70",
            "tu-22"]  # fmt: skip


def test_aircraft_template_order_drives_the_converter(tmp_path):
    """The template lists the 27 classes in the order of the source's list, and the converter maps by name to that order
    even when the export sorted its categories alphabetically."""
    from ultra_vil.data.yolo_format import names_from_yaml

    template = ROOT / "datasets" / "aircraft.yaml"
    assert names_from_yaml(template) == AIRCRAFT
    src = tmp_path / "export"
    image(src / "x.jpg", 100, 100)
    cats = [{"id": i, "name": n} for i, n in enumerate(sorted(AIRCRAFT))]  # an export that sorted the names
    by_name = {c["name"]: c["id"] for c in cats}
    anns = [{"id": 1, "image_id": 1, "category_id": by_name["a10"], "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": by_name["tu-22"], "bbox": [0, 0, 10, 10]}]  # fmt: skip
    (src / "ann.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": anns,
                                              "categories": cats}))  # fmt: skip
    image(src / "y.jpg", 100, 100)  # a second (background) image so that train and val are both non-empty
    data = json.loads((src / "ann.json").read_text())
    data["images"].append({"id": 2, "file_name": "y.jpg"})
    (src / "ann.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(out),
                                 "--data-yaml", str(template)]) == 0  # fmt: skip
    rows = [line.split()[0] for text in labels(out).values() for line in text.splitlines()]
    assert sorted(rows) == ["12", "26"]  # a10 and tu-22 in the template's order, not the export's (0 and 26)
    assert check_yolo_dataset(out / "data.yaml").names == AIRCRAFT


def test_split_of_a_set_with_only_train(tmp_path):
    root = tmp_path / "only_train"
    for i in range(10):
        image(root / "images" / "train" / f"{i}.jpg", 20, 20)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    assert not check_yolo_dataset(root / "data.yaml").ok  # no val split yet: invalid for training
    out_yaml = split_yolo_dataset(root / "data.yaml", tmp_path / "split", val_fraction=0.3, seed=0)
    report = check_yolo_dataset(out_yaml)
    assert report.ok, report.format()
    assert (report.stats["train"].images, report.stats["val"].images, report.stats["val"].backgrounds) == (7, 3, 3)


# ---------------------------------------------------------------------- nothing lost, nothing read from outside the
# source, no silent wrong counts.
def _coco_source(src: Path) -> Path:
    image(src / "images" / "p.png", 40, 30)
    image(src / "images" / "q.png", 40, 30)
    data = {"images": [{"id": 1, "file_name": "p.png"}, {"id": 2, "file_name": "q.png"}],
            "categories": [{"id": 1, "name": "jet"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}  # fmt: skip
    (src / "ann.json").write_text(json.dumps(data, indent=1))
    return src


def test_split_obeys_the_out_dir_rule(yolo_set, tmp_path, capsys):
    """`--split DATA.yaml --out-dir <the set's root>` (or images/train) is refused: its marker and lists there
    would let a later --overwrite delete images/ and labels/."""
    before = tree_hash(tmp_path)
    for out in (yolo_set, yolo_set / "images" / "train", yolo_set / "new", tmp_path):
        rc = convert_dataset.main(["--split", str(yolo_set / "data.yaml"), "--out-dir", str(out), "--overwrite"])
        assert rc == 1, out
        assert "source folder" in _issues_text(capsys)
    assert tree_hash(tmp_path) == before


def test_overwrite_deletes_only_the_files_the_tool_wrote(voc, tmp_path, capsys):
    """--overwrite removes only the files it wrote, never images/ and labels/ wholesale: a file the user put
    there stays."""
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    content = (out / "labels/train/a.txt").read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    assert marker["files"]["labels/train/a.txt"] == {"size": len(content), "sha256": sha256}
    image(out / "images" / "train" / "mine.jpg", 20, 20)
    (out / "notes.txt").write_text("mine")
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "images" / "train" / "mine.jpg").is_file()
    # A file the tool wrote but that has changed since is not deleted: the whole replacement stops.
    (out / "labels" / "val" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n# edited by hand\n")
    kept = tree_hash(out)
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 1
    assert f"{out / 'labels' / 'val' / 'b.txt'}: changed since this tool wrote it" in _issues_text(capsys)
    assert tree_hash(out) == kept


def test_a_marker_that_does_not_validate_is_an_error_naming_it(voc, yolo_set, tmp_path, capsys):
    """A marker that does not validate (`{}`, not JSON, a marker without a file list, one naming files outside
    the folder) is an error: --overwrite trusting it would delete a data set the user made."""
    before = tree_hash(yolo_set)
    for text in ("{}", "not json", json.dumps({"source": "/x", "tool": "ultra_vil.data"}),  # a marker without a file list
                 json.dumps({"tool": "ultra_vil.data", "version": 2, "files": {"../../etc/passwd": {"size": 1}}})):
        (yolo_set / MARKER).write_text(text)
        rc = convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(yolo_set), "--overwrite"])
        assert rc == 1
        assert f"{yolo_set / MARKER}: " in _issues_text(capsys)
        (yolo_set / MARKER).unlink()
        assert tree_hash(yolo_set) == before


def test_the_tool_never_overwrites_a_file_it_did_not_write(voc, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    del marker["files"]["labels/val/b.txt"]  # as if the user had put that file there
    (out / MARKER).write_text(json.dumps(marker))
    (out / "labels" / "val" / "b.txt").write_text("mine\n")
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 1
    assert "was not written by this tool; not overwritten" in _issues_text(capsys)
    assert (out / "labels" / "val" / "b.txt").read_text() == "mine\n"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_coco_images_outside_the_source_are_refused(tmp_path, capsys, how):
    """A `file_name` of /abs/path or ../x is an error naming the annotation: opening it would read (and, with an
    annotation, copy) a file outside the source."""
    secret = image(tmp_path / "private" / "secret.png", 30, 30)
    src = _coco_source(tmp_path / "coco")
    data = json.loads((src / "ann.json").read_text())
    name = {"absolute": str(secret), "dotdot": "../private/secret.png", "symlink": "leak.png"}[how]
    if how == "symlink":
        (src / "leak.png").symlink_to(secret)
    data["images"][1]["file_name"] = name
    (src / "ann.json").write_text(json.dumps(data, indent=1))
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(out)]) == 1
    text = _issues_text(capsys)
    lines = (src / "ann.json").read_text().splitlines()
    line = _obj_start(lines, next(i for i, x in enumerate(lines) if json.dumps(name) in x))
    assert f"{src / 'ann.json'}:{line}: image path '{name}' resolves to {secret}, outside --src" in text
    assert "(images[1])" in text and not out.exists()
    # Explicitly allowed: converted, with a warning that names it.
    rc = convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(out), "--allow-outside-src"])
    assert rc == 0
    assert f"image {secret} lies outside the source" in _issues_text(capsys)


def test_voc_filename_outside_the_source_is_refused(voc, tmp_path, capsys):
    """An absolute <filename> outside the source is an error, not a file copied into the output."""
    secret = image(tmp_path / "private" / "secret.jpg", 30, 30)
    (voc / "Annotations" / "b.xml").write_text(voc_xml(str(secret), 30, 30, [("plane", 1, 1, 10, 10)]))
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 1
    text = _issues_text(capsys)
    assert f"{voc / 'Annotations' / 'b.xml'}:2: image path '{secret}' resolves to {secret}, outside --src" in text
    assert not out.exists()


def test_check_counts_broken_label_files_as_invalid_not_background(yolo_set):
    """A label file whose rows all have errors counts as invalid, not as a background image."""
    (yolo_set / "labels" / "train" / "t0.txt").write_text("0 0.5 0.5 0.25\n")  # malformed: 4 values
    train = check_yolo_dataset(yolo_set / "data.yaml").stats["train"]
    assert (train.images, train.labelled, train.backgrounds) == (3, 1, 1)  # t1 labelled, t2 background
    assert train.invalid == 1


def test_nothing_is_lost_whatever_the_out_dir(voc, yolo_set, tmp_path):
    """Nothing lost: every command of convert_dataset.py, with every out-dir position relative to its
    source (same, inside, parent, sibling, a symlink to the source or into it), with and without --overwrite, one
    after the other on the same tree: no file of any source changes, and none appears there. The trap: --split into
    the set's root, whose next --overwrite would delete its images."""
    data = tmp_path / "data"
    data.mkdir()
    sources = {"voc": voc.rename(data / "voc"), "yolo": yolo_set.rename(data / "yolo"), "coco": data / "coco"}
    _coco_source(sources["coco"])
    before = tree_hash(data)
    commands = {
        "voc": ["--format", "voc", "--src", str(sources["voc"])],
        "coco": ["--format", "coco", "--src", str(sources["coco"])],
        "yolo": ["--split", str(sources["yolo"] / "data.yaml")],
    }
    (tmp_path / "link").symlink_to(sources["yolo"])
    (tmp_path / "link_in").symlink_to(sources["yolo"] / "images")
    for name, cmd in [("yolo", commands["yolo"]), ("voc", commands["voc"]), ("coco", commands["coco"])] * 2:
        src = sources[name]
        deep = next(p for p in sorted(src.rglob("*")) if p.is_dir())  # images/, JPEGImages/, Annotations/ ...
        outs = [src, deep, src / "new", data, tmp_path, tmp_path / "sibling", tmp_path / "link", tmp_path / "link_in"]
        for out in outs:
            for extra in ([], ["--overwrite"]):
                convert_dataset.main([*cmd, "--out-dir", str(out), *extra])
                assert tree_hash(data) == before, (name, out, extra)
    assert convert_dataset.main(["--check", str(sources["yolo"] / "data.yaml")]) == 0
    assert tree_hash(data) == before
    assert (tmp_path / "sibling" / MARKER).is_file()  # the sibling was written (and replaced) all along


def test_a_symlink_inside_the_out_dir_cannot_send_writes_into_the_source(voc, tmp_path, capsys):
    """An earlier output whose images/ the user replaced by a link to the source: --overwrite must write nothing
    through it (before, the copies landed in the source's folder)."""
    before = tree_hash(voc)
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    marker["files"] = {k: v for k, v in marker["files"].items() if not k.startswith("images/")}
    (out / MARKER).write_text(json.dumps(marker))
    for p in sorted((out / "images").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (out / "images").rmdir()
    (out / "images").symlink_to(voc)
    (voc / "train").mkdir()  # so that images/train/ exists through the link
    before = tree_hash(voc)
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 1
    assert "leads outside" in _issues_text(capsys)
    assert tree_hash(voc) == before and not any((voc / "train").iterdir())


# ------------------------------------------------------------------------- same-size edits, huge ids, names gaps
def test_overwrite_keeps_an_edit_that_keeps_the_size(voc, tmp_path, capsys):
    """A label's class id 0 -> 1, a name red -> RED in data.yaml: the size stays, the content does not. The
    marker records a content hash per file, so --overwrite keeps the edited files and names each of them."""
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    label, data_yaml = out / "labels" / "val" / "b.txt", out / "data.yaml"
    text = label.read_text()
    assert text.startswith("1 ")  # plane: id 1 (heli, plane)
    label.write_text("0" + text[1:])
    yaml_text = data_yaml.read_text()
    assert "plane" in yaml_text
    data_yaml.write_text(yaml_text.replace("plane", "PLANE"))
    kept = tree_hash(out)
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 1
    text = _issues_text(capsys)
    assert f"{label}: changed since this tool wrote it" in text and f"{data_yaml}: changed since" in text
    assert tree_hash(out) == kept


def test_overwrite_still_reads_a_marker_with_sizes_only(voc, tmp_path, capsys):
    """A marker written before content hashes were recorded (sizes only) still works: its files are checked by
    size, as they were then."""
    out = tmp_path / "out"
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    marker["files"] = {rel: {"size": e["size"]} if "size" in e else e for rel, e in marker["files"].items()}
    (out / MARKER).write_text(json.dumps(marker))
    (out / "labels" / "val" / "b.txt").write_text("edited, another size\n")
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 1
    assert f"{out / 'labels' / 'val' / 'b.txt'}: changed since this tool wrote it" in _issues_text(capsys)
    (out / "labels" / "val" / "b.txt").unlink()
    assert convert_dataset.main(["--format", "voc", "--src", str(voc), "--out-dir", str(out), "--overwrite"]) == 0
    assert all("sha256" in e for e in json.loads((out / MARKER).read_text())["files"].values() if "size" in e)


def test_check_prints_a_huge_class_id_as_written(yolo_set):
    """A class id of 1e308: before, the error printed it as a 309-digit integer."""
    lab = yolo_set / "labels" / "train" / "t0.txt"
    lab.write_text("1e308 0.5 0.5 0.25 0.25\n")
    report = check_yolo_dataset(yolo_set / "data.yaml")
    messages = [str(e) for e in report.issues.errors]
    assert messages == [f"{lab}:1: class id 1e308 out of range: 2 classes, ids 0..1"], messages


def test_check_names_with_a_gap_is_one_error(yolo_set):
    """names {0: a, 2: c}: before, the one right error came with an "out of range: 0 classes, ids 0..-1" error
    for every label row (8 here); now the class ids are not checked against names that are invalid, said once."""
    (yolo_set / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: a\n  2: c\n")
    report = check_yolo_dataset(yolo_set / "data.yaml")
    text = report.format()
    assert [str(e) for e in report.issues.errors] == [
        f"{yolo_set / 'data.yaml'}:3: 'names' ids must be 0..1 without gaps, got [0, 2]"
    ], text
    assert "0 classes" not in text and "0..-1" not in text
    assert sum("class ids were not checked" in str(w) for w in report.issues.warnings) == 1, text
    assert report.stats["train"].boxes == 4  # the rows are still read (and checked for everything else)
