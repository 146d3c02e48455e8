"""scripts/profile_vil.py's per-layer YOLO table: one row per top-level layer of both models, ViL slots marked."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_layer_table_times_every_layer_and_marks_the_vil_slots(capsys, script):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    import ultra_vil.yolo  # noqa: F401  registers the modules

    mod = script("profile_vil")
    models = {"yolov8n": tasks.DetectionModel("yolov8n.yaml", nc=2, verbose=False),
              "vil": tasks.DetectionModel(str(ROOT / "cfg" / "yolov8n-vil.yaml"), nc=2, verbose=False)}  # fmt: skip
    fused = {n: copy.deepcopy(m).fuse(verbose=False).eval() for n, m in models.items()}
    x = torch.rand(1, 3, 64, 64)
    times = mod.layer_times(fused["vil"], x, 2)
    assert [i for i, _, _ in times] == list(range(len(fused["vil"].model))) and all(t > 0 for *_, t in times)
    mod.layer_table(fused, x, 2)
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and r[2].isdigit()]
    assert len(rows) == len(fused["yolov8n"].model)
    marked = [r.split(" | ")[3] for r in rows if "**" in r]
    assert marked and set(marked) == {"ViLC2f"}  # only the renamed slots differ
