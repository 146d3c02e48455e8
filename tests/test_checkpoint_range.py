"""scripts/checkpoint_range.py names the tensors that a float16 checkpoint saturated, and runs no code a
checkpoint's pickle names unless told to trust it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
script = load_script("checkpoint_range")


def test_flags_a_saturated_running_var_and_nothing_else(tmp_path, capsys):
    bn = torch.nn.BatchNorm2d(4)
    bn.running_var[1] = 1e6  # fp32 training let it grow past float16's range
    half = torch.nn.Sequential(bn).half()  # what Ultralytics saves: the EMA model in float16
    assert half[0].running_var[1].item() in (float("inf"), script.FP16_MAX)
    ok = torch.nn.Sequential(torch.nn.BatchNorm2d(4)).half()
    torch.save({"ema": half, "model": None}, tmp_path / "bad.pt")
    torch.save({"ema": ok, "model": None}, tmp_path / "ok.pt")
    assert script.main([str(tmp_path / "bad.pt"), str(tmp_path / "ok.pt")]) == 0
    bad_line, ok_line = capsys.readouterr().out.strip().splitlines()[2:]
    assert bad_line.split("|")[-2].strip() == "0.running_var"  # the saturated tensor, and only it
    assert ok_line.endswith("| none |")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="nope.pt: not found"):
        script.main([str(tmp_path / "nope.pt")])


# --------------------------------------------------------- scripts/checkpoint_range.py: a checkpoint runs no code
class _RunsCode:
    """Unpickles by calling exec: what a malicious .pt does (here it only writes a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_checkpoint_range_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    """Unpickling with weights_only=False would run the file's code (write the marker). The script
    loads with weights_only=True and the allow-list of model classes, refuses with one line naming the file and
    exit status 2; only --trust loads it the old way, with a warning."""
    marker, evil = tmp_path / "ran.txt", tmp_path / "evil.pt"
    torch.save({"ema": _RunsCode(marker), "model": None}, evil)
    assert script.main([str(evil)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {evil}: ") and "--trust" in errors[0], err
    assert not marker.exists()
    with pytest.warns(UserWarning, match=r"evil\.pt: loaded with torch\.load\(weights_only=False\) on trust"):
        assert script.main([str(evil), "--trust"]) == 2  # it ran, and then held no model
    assert marker.read_text() == "ran"  # the file does run code: the refusal above is what kept it from running


def test_checkpoint_range_reads_an_ultralytics_checkpoint_without_trust(tmp_path):
    """A checkpoint as Ultralytics' trainer saves it (EMA model of ViL modules in float16, optimizer state, train
    args, NumPy metrics) loads under the restricted loader, in a fresh interpreter."""
    import copy

    import numpy as np

    tasks = pytest.importorskip("ultralytics.nn.tasks")
    import ultra_vil.yolo  # noqa: F401  (registers the ViL modules for the YAML)

    torch.manual_seed(0)
    model = tasks.DetectionModel(str(ROOT / "cfg" / "yolov8n-vil.yaml"), nc=2, verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(p.square().sum() for p in model.parameters()).backward()  # any gradient: the momentum buffers exist
    optimizer.step()
    ckpt = {"epoch": 0, "best_fitness": np.float64(0.1), "model": None, "ema": copy.deepcopy(model).half(),
            "updates": 1, "optimizer": optimizer.state_dict(), "train_args": {"imgsz": 64, "model": "yolov8n-vil.yaml"},
            "train_metrics": {"metrics/mAP50(B)": np.float64(0.2)}, "date": "2025-01-01T00:00:00", "version": "8.4"}
    path = tmp_path / "last.pt"
    torch.save(ckpt, path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "ULTRALYTICS_SAFE_LOAD")}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "checkpoint_range.py"), str(path)], env=env,
                       cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith(f"| {path} |")]
    assert len(rows) == 1 and "weights_only=False" not in p.stderr, p.stdout + p.stderr
