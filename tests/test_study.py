"""scripts/compare.py end to end on CPU: a tiny data set generated here (64 x 64 images with coloured boxes, built
as COCO JSON and converted by scripts/convert_dataset.py), stock YOLOv8n + a ViL YAML, 2 seeds, 1 epoch, 64 px.

Five trainings in all (a few minutes on 2 cores): the comparison (2 models x 2 seeds, so the verdict section has
an interval), then one more stock run for the reproducibility check. The rerun trains nothing.
"""

import csv
import json
import math
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image, ImageDraw

from ultra_vil import study
from ultra_vil.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


compare = load_script("compare")  # scripts/compare.py: main()
convert_dataset = load_script("convert_dataset")

COMMON = ["--scale", "n", "--epochs", "1", "--seeds", "0", "1", "--img-size", "64", "--batch-size", "4",
          "--device", "cpu", "--workers", "0", "--latency-runs", "3", "--latency-warmup", "1", "--quiet"]  # fmt: skip
CLASSES = ["red", "green"]


def vil_yaml(tmp: Path) -> Path:
    """The recommended ViL YAML; until it exists a variant; until those exist a stock copy named like one."""
    if (ROOT / "cfg" / "yolov8-vil.yaml").is_file():
        return ROOT / "cfg" / "yolov8-vil.yaml"
    variants = sorted((ROOT / "cfg").glob("yolov8-vil*.yaml"), key=lambda p: p.stem != "yolov8-vil-p5")
    if variants:
        return variants[0]
    import ultralytics

    copy = tmp / "yolov8-copy.yaml"
    shutil.copy(Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml", copy)
    return copy


def make_coco(folder: Path) -> Path:
    """12 images, 1-2 filled rectangles each, both classes in each split; COCO JSON per split."""
    rng = np.random.default_rng(0)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    for split, n in (("train", 8), ("val", 4)):
        (folder / split).mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            im = Image.new("RGB", (64, 64), (40, 40, 40))
            draw = ImageDraw.Draw(im)
            for k in range(1 + i % 2):
                c = (i + k) % 2
                w, h = (int(v) for v in rng.integers(14, 30, 2))
                x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
                draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(230, 60, 60) if c == 0 else (60, 230, 60))
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [x, y, w, h]})
            im.save(folder / split / f"{split}{i}.png")
            images.append({"id": i, "file_name": f"{split}{i}.png", "width": 64, "height": 64})
        coco = {"images": images, "annotations": anns, "categories": cats}
        (folder / split / "ann.json").write_text(json.dumps(coco))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    src = make_coco(tmp / "coco")
    assert convert_dataset.main(["--format", "coco", "--src", str(src), "--out-dir", str(tmp / "yolo")]) == 0
    return tmp, tmp / "yolo" / "data.yaml", vil_yaml(tmp)


@pytest.fixture(scope="module")
def first_run(tiny):
    tmp, data, vil = tiny
    out = tmp / "cmp"
    rc = compare.main(["--data", str(data), "--models", str(vil), *COMMON, "--costs", "--out-dir", str(out)])
    return out, rc, vil


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_writes_csv_md_png_with_every_column_filled(first_run):
    out, rc, vil = first_run
    assert rc == 0, "\n".join(p.read_text()[-3000:] for p in (out / "logs").glob("*.log"))
    rows = read_csv(out / "compare.csv")
    vil_tag = study.scaled_model(vil, "n")[0]
    assert [(r["model"], r["seed"]) for r in rows] == [("yolov8n", "0"), ("yolov8n", "1"), (vil_tag, "0"),
                                                      (vil_tag, "1")]  # fmt: skip
    per_class = [f"ap50_{n}" for n in CLASSES] + [f"ap50_95_{n}" for n in CLASSES]
    assert list(rows[0]) == study.COLUMNS + per_class
    for row in rows:
        for col in study.COLUMNS[1:] + per_class:
            value = float(row[col])  # a number, not empty, not n/a
            assert math.isfinite(value), (row["model"], col)
        for col in ("params", "gflops", "latency_ms_torch", "latency_ms_onnx", "train_s_per_epoch", "peak_mem_mb"):
            assert float(row[col]) > 0, (row["model"], col)
    assert int(rows[0]["params"]) == 3_011_238  # yolov8n with 2 classes, as Ultralytics builds it
    md = (out / "compare.md").read_text()
    assert "| yolov8n | 3.01 ± 0.00 |" in md and f"| {vil_tag} |" in md
    verdict = md.split("## Verdicts\n\n", 1)[1].splitlines()[0]  # the report's first section
    assert md.index("## Verdicts") < md.index("## Runs") and verdict.startswith(f"- **{vil_tag} vs yolov8n: ")
    assert "95% paired t-interval] over 2 seed(s)" in verdict and " n/a" not in md.split("## Runs")[0]
    assert "Reproduce by: `python scripts/compare.py --data" in md
    assert "peak resident memory" in md  # says how memory was measured on CPU
    costs = json.loads((out / "costs.json").read_text())  # --costs: both models timed side by side
    assert costs["settings"] == {"img_size": 64, "batch_size": 4, "device": "cpu"}
    for tag in ("yolov8n", vil_tag):
        entry = costs["models"][tag]
        for key in ("train_min_ms", "train_median_ms", "train_mem_mb", "torch_min_ms", "torch_median_ms",
                    "onnx_min_ms", "onnx_median_ms"):  # fmt: skip
            assert entry[key] > 0, (tag, key)
        assert entry["train_min_ms"] <= entry["train_median_ms"] and entry["rounds_train"] >= 3
    side = md.split("Cost measured side by side", 1)[1].split("## Runs")[0]
    assert f"- {vil_tag} / yolov8n: fwd+bwd time " in side and "latency ONNX RT" in side
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_skips_finished_work(first_run, tiny, capsys):
    out, _, vil = first_run
    _, data, _ = tiny
    watched = sorted(out.glob("rows/*.json")) + sorted(out.glob("runs/*/weights/last.pt"))
    assert len(watched) == 8
    watched.append(out / "costs.json")
    before = {p: p.stat().st_mtime_ns for p in watched}
    capsys.readouterr()
    rc = compare.main(["--data", str(data), "--models", str(vil), *COMMON, "--costs", "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.count("done before, skipped") == 4 and "training 1 epoch" not in text
    assert "holds every model: not measured again" in text
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    # --report with a seed that never ran: nothing trains, the reports hold the finished runs and say what lacks.
    capsys.readouterr()
    argv = ["--data", str(data), "--models", str(vil), *COMMON, "--seeds", "0", "1", "2", "--out-dir", str(out)]
    assert compare.main([*argv, "--report"]) == 0
    text = capsys.readouterr().out
    assert "training" not in text and "--report: 2 of 6 run(s) have no row yet" in text
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert len(read_csv(out / "compare.csv")) == 4
    # A run another live process holds (its lock file) is skipped, not trained twice.
    lock = out / "jobs" / "yolov8n_seed2.lock"
    lock.write_text(f"{os.getppid()} {socket.gethostname()}")  # pytest's parent: alive while this test runs
    try:
        capsys.readouterr()
        compare.main([*argv, "--models", "--epochs", "1"])  # stock only, seed 2: held elsewhere
        text = capsys.readouterr().out
        assert "yolov8n seed 2: running in another process" in text and "training" not in text
    finally:
        lock.unlink(missing_ok=True)
    # Other settings in the same out-dir are refused rather than mixed into one table.
    capsys.readouterr()
    argv2 = ["--data", str(data), "--models", str(vil), *COMMON, "--epochs", "2", "--out-dir", str(out)]
    assert compare.main(argv2) == 2
    assert "epochs: 1 there, 2 now" in capsys.readouterr().err


def test_same_seed_same_settings_identical_stock_results(first_run, tiny):
    out, _, _ = first_run
    tmp, data, _ = tiny
    out2 = tmp / "cmp2"
    assert compare.main(["--data", str(data), "--models", *COMMON, "--seeds", "0", "--out-dir", str(out2)]) == 0
    a, b = read_csv(out / "compare.csv")[0], read_csv(out2 / "compare.csv")[0]
    assert a["model"] == b["model"] == "yolov8n"
    for col in ["params", "gflops", *study.METRICS] + [f"ap50_95_{n}" for n in CLASSES]:
        assert a[col] == b[col], col
    # Stronger than metrics that may still be 0 after one epoch: identical losses and identical weights.
    losses = [(d / "runs" / "yolov8n_seed0" / "results.csv").read_text().splitlines() for d in (out, out2)]
    strip_time = [[",".join(x.split(",")[:1] + x.split(",")[2:]) for x in lines] for lines in losses]
    assert strip_time[0] == strip_time[1]
    weights = [torch.load(d / "runs" / "yolov8n_seed0" / "weights" / "last.pt", weights_only=False)["model"]
               for d in (out, out2)]  # fmt: skip
    sa, sb = (w.state_dict() for w in weights)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_names_follow_ultralytics_scale_mechanism(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "yolov8-vil-p5.yaml").write_text("nc: 1\n")
    assert study.scaled_model(cfg / "yolov8-vil-p5.yaml", "s") == ("yolov8s-vil-p5", cfg / "yolov8s-vil-p5.yaml")
    with pytest.raises(UserError, match="names scale 'm' but --scale is 'n'"):
        study.scaled_model(cfg / "yolov8m-vil.yaml", "n")
    bad = tmp_path / "run1s"
    bad.mkdir()
    (bad / "yolov8-vil.yaml").write_text("nc: 1\n")
    with pytest.raises(UserError, match="folder in the path"):
        study.scaled_model(bad / "yolov8-vil.yaml", "n")


def test_md_explains_every_na(tmp_path):
    settings = {"data": str(tmp_path / "d.yaml"), "scale": "n", "epochs": 1, "img_size": 64, "batch_size": 2,
                "optimizer": "AdamW", "lr0": 0.001, "device": "cpu", "workers": 0, "extra": {}, "latency_runs": 3,
                "latency_warmup": 1}  # fmt: skip
    row = {c: 1.0 for c in study.COLUMNS} | {"model": "yolov8n", "seed": 0, "latency_ms_onnx": "n/a",
                                                "ap50_a": "n/a", "ap50_95_a": "n/a"}  # fmt: skip
    notes = {("yolov8n", 0): {"latency_ms_onnx": "ONNX export failed: X", "per_class": "no val instances of ['a']"}}
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "yolov8n_seed0.json").write_text(json.dumps({"row": row, "env": {}}))
    models = [{"tag": "yolov8n"}, {"tag": "yolov8n-vil"}]
    study.write_md(tmp_path / "c.md", [row], notes, {("yolov8n-vil", 0): "exit status 1"}, models, settings,
                     ["a"], ["--data", "d.yaml"], tmp_path)  # fmt: skip
    md = (tmp_path / "c.md").read_text()
    assert "yolov8n seed 0, `latency_ms_onnx`: ONNX export failed: X" in md
    assert "no val instances of ['a']" in md
    assert "- yolov8n-vil seed 0: exit status 1" in md
    study.write_csv(tmp_path / "c.csv", [row], ["a"])
    assert read_csv(tmp_path / "c.csv")[0]["latency_ms_onnx"] == "n/a"


def test_costs_of_other_settings_are_ignored_and_absent_costs_are_named(tmp_path):
    """A costs.json measured at another image size is not shown beside this study; without one the report says
    that its time ratios come from runs timed alone and names --costs."""
    settings = {"img_size": 320, "batch_size": 4, "device": "cpu"}
    costs = {"settings": {**settings, "img_size": 640}, "how": "x", "models": {}}
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    got, why = study.read_costs(tmp_path, settings)
    assert got is None and "other settings" in why and "delete it" in why
    costs["settings"] = settings
    costs["models"] = {"a": {"train_min_ms": 20.0, "train_median_ms": 30.0, "train_mem_mb": 150.0,
                             "torch_min_ms": 9.0, "torch_median_ms": 12.0},
                       "b": {"train_min_ms": 10.0, "train_median_ms": 20.0, "train_mem_mb": 100.0,
                             "torch_min_ms": 3.0, "torch_median_ms": 4.0}}  # fmt: skip
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    got, why = study.read_costs(tmp_path, settings)
    assert why == "" and study.cost_ratio(got, "a", "b", "train") == "2.00x / 1.50x"
    assert study.cost_ratio(got, "a", "b", "train_mem") == "1.50x"
    assert study.cost_ratio(got, "a", "b", "torch") == "3.00x / 3.00x"
    assert study.cost_ratio(got, "a", "b", "onnx") == study.NA  # not measured: said, not invented
    assert study.cost_ratio(got, "a", "c", "train") == study.NA
    assert "--costs" in "\n".join(study.cost_lines([], None))


def test_report_names_a_run_whose_checkpoint_scores_far_from_the_trainer(first_run, tiny, tmp_path):
    """A last.pt that validates far from the trainer's own final validation (a float16 checkpoint that saturated)
    is named in compare.md's notes; the untouched runs are not."""
    out, _, vil = first_run
    _, data, _ = tiny
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.pt", "*.onnx"))
    results = copy / "runs" / "yolov8n_seed1" / "results.csv"
    lines = results.read_text().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    last = lines[-1].split(",")
    row = read_csv(copy / "compare.csv")[1]
    assert (row["model"], row["seed"]) == ("yolov8n", "1")
    last[header.index("metrics/mAP50-95(B)")] = f"{float(row['map50_95']) + 0.5:.5f}"
    results.write_text("\n".join([*lines[:-1], ",".join(last)]) + "\n")
    assert compare.main(["--data", str(data), "--models", str(vil), *COMMON, "--out-dir", str(copy), "--report"]) == 0
    notes = (copy / "compare.md").read_text().split("## Notes and `n/a` values", 1)[1].split("\n## ", 1)[0]
    assert "- yolov8n seed 1: last.pt scores mAP50-95" in notes and "checkpoint_range.py" in notes
    assert notes.count("last.pt scores") == 1
