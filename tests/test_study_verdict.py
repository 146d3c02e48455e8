"""compare.py's verdict on fixed inputs: synthetic compare.csv files, no training.

Clearly better -> "better"; overlapping seeds -> "no difference detectable with N seeds"; clearly worse -> "worse";
one seed -> no claim. Also the t quantiles, the pairing by seed, baseline picking and the report's first section.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from ultra_vil.errors import UserError

from ultra_vil import study as stats

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["model", "seed", "params", "gflops", "map50", "map50_95", "precision", "recall", "latency_ms_torch",
           "latency_ms_onnx", "train_s_per_epoch", "peak_mem_mb"]  # scripts/compare.py's, in its order


def write_csv(path: Path, runs: dict[str, list[tuple[float, float]]], cost: float = 1.3) -> Path:
    """runs: model -> [(map50_95, map50) per seed 0, 1, ...]; ViL rows cost `cost` x the stock ones."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for model, values in runs.items():
            k = 1.0 if stats.baseline_tag(model) == model else cost
            for seed, (m5095, m50) in enumerate(values):
                w.writerow(dict(model=model, seed=seed, params=3_000_000, gflops=8.0, map50=m50, map50_95=m5095,
                                precision=0.5, recall=0.5,
                                latency_ms_torch=10 * k + seed * 0.1, latency_ms_onnx="n/a",
                                train_s_per_epoch=20 * k, peak_mem_mb=100 * k))  # fmt: skip
    return path


def verdicts(path: Path) -> dict[str, str]:
    return {(c.vil, c.stock): c.verdict for c in stats.compare_rows(stats.read_rows(path))}


def test_clearly_better_is_better(tmp_path):
    stock = [(0.20, 0.40), (0.25, 0.46), (0.18, 0.38), (0.22, 0.43), (0.24, 0.44)]
    vil = [(s + 0.03 + 0.002 * k, m + 0.04) for k, (s, m) in enumerate(stock)]  # +0.03..0.038 on every seed
    path = write_csv(tmp_path / "c.csv", {"yolov8n": stock, "yolov8n-vil": vil})
    (c,) = stats.compare_rows(stats.read_rows(path))
    assert (c.vil, c.stock, c.verdict) == ("yolov8n-vil", "yolov8n", "better")
    d = c.diffs["map50_95"]
    assert d.n == 5 and d.lo > 0 and math.isclose(d.mean, 0.034, abs_tol=1e-9)
    assert math.isclose(c.ratios["train_s_per_epoch"][1], 1.3) and c.ratios["latency_ms_onnx"][1] is None


def test_overlapping_seeds_give_no_difference(tmp_path):
    """The ViL mean is higher, but the seeds overlap: the interval contains 0, so no difference is claimed."""
    stock = [(0.20, 0.40), (0.25, 0.46), (0.18, 0.38), (0.22, 0.43), (0.24, 0.44)]
    vil = [(0.23, 0.42), (0.22, 0.44), (0.21, 0.41), (0.20, 0.42), (0.27, 0.47)]  # diffs +.03 -.03 +.03 -.02 +.03
    path = write_csv(tmp_path / "c.csv", {"yolov8n": stock, "yolov8n-vil": vil})
    (c,) = stats.compare_rows(stats.read_rows(path))
    assert c.diffs["map50_95"].mean > 0 and c.diffs["map50_95"].lo < 0 < c.diffs["map50_95"].hi
    assert c.verdict == "no difference detectable with 5 seeds"


def test_clearly_worse_is_worse(tmp_path):
    stock = [(0.30, 0.5), (0.32, 0.52), (0.29, 0.49)]
    vil = [(0.25, 0.45), (0.26, 0.47), (0.245, 0.44)]
    assert verdicts(write_csv(tmp_path / "c.csv", {"yolo11n": stock, "yolo11n-vil": vil})) == {
        ("yolo11n-vil", "yolo11n"): "worse"
    }


def test_single_seed_claims_nothing(tmp_path):
    """One seed, even with a large difference: no interval, so neither better nor worse."""
    path = write_csv(tmp_path / "c.csv", {"yolov8n": [(0.10, 0.2)], "yolov8n-vil": [(0.40, 0.6)]})
    (c,) = stats.compare_rows(stats.read_rows(path))
    assert c.diffs["map50_95"].lo is None
    assert c.verdict.startswith("no difference detectable with 1 seed") and "nothing is claimed" in c.verdict
    assert "better" not in c.verdict and "worse" not in c.verdict
    assert "(1 seed, no interval)" in c.line()


def test_pairs_by_seed_and_generation(tmp_path):
    """Each ViL model meets the stock model of its own generation and scale, only on the seeds both finished."""
    runs = {"yolov8n": [(0.2, 0.4)] * 3, "yolo26n": [(0.3, 0.5)] * 3, "yolov8n-vil-p5": [(0.21, 0.41)] * 2,
            "yolo26n-vil": [(0.31, 0.5), (0.29, 0.5), (0.3, 0.5)]}  # fmt: skip
    cs = {c.vil: c for c in stats.compare_rows(stats.read_rows(write_csv(tmp_path / "c.csv", runs)))}
    assert {v: c.stock for v, c in cs.items()} == {"yolov8n-vil-p5": "yolov8n", "yolo26n-vil": "yolo26n"}
    assert cs["yolov8n-vil-p5"].diffs["map50_95"].n == 2  # seed 2 of the ViL model is missing
    assert cs["yolov8n-vil-p5"].verdict == "better"  # +0.01 on both seeds, zero spread: the interval is [0.01, 0.01]
    assert cs["yolo26n-vil"].verdict == "no difference detectable with 3 seeds"


def test_t_quantiles():
    assert stats.t_quantile_975(1) == 12.706 and stats.t_quantile_975(4) == 2.776
    assert abs(stats.t_quantile_975(31) - 2.0395) < 1e-3 and abs(stats.t_quantile_975(120) - 1.9799) < 1e-3
    assert abs(stats.t_quantile_975(10**6) - 1.96) < 1e-3
    with pytest.raises(ValueError):
        stats.t_quantile_975(0)
    iv = stats.paired_interval([0.01, 0.03])  # mean 0.02, sd 0.01414: half-width 12.706 * 0.01
    assert math.isclose(iv.hi - iv.mean, 12.706 * 0.01, rel_tol=1e-9)


def test_baseline_tags_and_script_picks_them(tmp_path):
    assert stats.baseline_tag("yolo11s-vil") == "yolo11s" and stats.baseline_tag("yolov8n-vil-p5") == "yolov8n"
    assert stats.baseline_cfg("yolo26m-vil") == "yolo26m.yaml" and stats.baseline_tag("vil-t") is None
    cfgs = [str(ROOT / "cfg" / n) for n in ("yolov8-vil.yaml", "yolo11-vil.yaml", "yolo26-vil.yaml")]
    models = stats.pick_models(cfgs, "s")
    assert [m["tag"] for m in models] == ["yolov8s", "yolo11s", "yolo26s", "yolov8s-vil", "yolo11s-vil", "yolo26s-vil"]
    assert [m.get("baseline") for m in models[3:]] == ["yolov8s", "yolo11s", "yolo26s"]
    assert [m["tag"] for m in stats.pick_models(cfgs[1:2], "n", "yolov8")] == ["yolov8n", "yolo11n-vil"]
    assert [m["tag"] for m in stats.pick_models([], "n")] == ["yolov8n"]
    assert [m["tag"] for m in stats.pick_models([], "n", "yolo11")] == ["yolo11n"]  # stock only, that generation
    with pytest.raises(UserError, match="--baseline"):
        stats.pick_models(cfgs, "n", "resnet")

    # compare.md starts with the verdicts
    rows = stats.read_rows(write_csv(tmp_path / "c.csv", {"yolo11s": [(0.2, 0.4)] * 3,
                                                          "yolo11s-vil": [(0.25, 0.45), (0.252, 0.45), (0.251, 0.46)]}))  # fmt: skip
    settings = {"data": str(tmp_path / "d.yaml"), "scale": "s", "epochs": 1, "img_size": 64, "batch_size": 2,
                "optimizer": "AdamW", "lr0": 0.001, "device": "cpu", "workers": 0, "extra": {}, "latency_runs": 3,
                "latency_warmup": 1}  # fmt: skip
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "yolo11s_seed0.json").write_text('{"row": {}, "env": {}}')
    stats.write_md(tmp_path / "c.md", rows, {}, {}, stats.pick_models(cfgs[1:2], "s"), settings, [], ["--x"],
                    tmp_path)  # fmt: skip
    md = (tmp_path / "c.md").read_text().splitlines()
    assert md[2] == "## Verdicts" and md[4].startswith("- **yolo11s-vil vs yolo11s: better**")
    assert any(line.startswith("- yolo11s-vil / yolo11s: latency PyTorch 1.30x") for line in md)
