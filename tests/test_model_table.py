"""scripts/model_table.py: each mixer YAML next to the stock model of its own generation, at the scale asked for
(the README's model tables are its output)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_each_generation_gets_its_own_stock_model_and_scale(capsys, script):
    pytest.importorskip("ultralytics")
    mod = script("model_table")
    cfgs = [str(ROOT / "cfg" / n) for n in ("yolo11-vil.yaml", "yolov8-vil-p5.yaml")]
    assert mod.main(["--cfg", *cfgs, "--scales", "n", "s", "--no-direct"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in out if r.startswith("| yolo")}
    assert set(rows) == {"yolo11n", "yolo11s", "yolov8n", "yolov8s", "yolo11n-vil", "yolo11s-vil", "yolov8n-vil-p5",
                         "yolov8s-vil-p5"}  # fmt: skip
    assert rows["yolo11n"][1] == "ultralytics yolo11.yaml" and rows["yolov8s"][1] == "ultralytics yolov8.yaml"
    params = {k: int(v[4].replace(",", "")) for k, v in rows.items()}
    assert params["yolo11s-vil"] > 3 * params["yolo11n-vil"]  # the scale letter was applied
    assert params["yolo11n"] == 2_624_080 and params["yolov8n"] == 3_157_200  # Ultralytics' own stock counts
    with pytest.raises(SystemExit, match="file not found"):
        mod.main(["--cfg", str(ROOT / "cfg" / "nope.yaml"), "--no-direct"])
