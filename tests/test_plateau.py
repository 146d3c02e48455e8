"""scripts/plateau.py: the epoch where a validation curve stops rising, on synthetic Ultralytics results.csv files."""

from __future__ import annotations

from pathlib import Path

import pytest

HEADER = "                  epoch,         time, metrics/mAP50(B), metrics/mAP50-95(B),  lr/pg0"


def write_run(folder: Path, values: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = [HEADER] + [f"{e + 1}, {e * 10.0}, {2 * v}, {v}, 0.001" for e, v in enumerate(values)]
    (folder / "results.csv").write_text("\n".join(lines) + "\n")  # Ultralytics pads its header names
    return folder


def test_plateau_of_a_curve_that_rises_then_flattens(tmp_path, script):
    mod = script("plateau")
    rising = [min(e, 20) / 20 * 0.2 for e in range(1, 41)]  # linear to epoch 20, then flat at 0.2
    run = write_run(tmp_path / "yolov8n_seed0", rising)
    epoch, best = mod.plateau_epoch(mod.read_curve(run), window=1, fraction=0.95)
    assert (epoch, best) == (19, pytest.approx(0.2))  # 19/20 * 0.2 = 0.95 x best
    epoch5, _ = mod.plateau_epoch(mod.read_curve(run), window=5, fraction=0.95)
    assert epoch5 > 19  # smoothing lags: the trailing mean reaches 95% later
    assert mod.main([str(run), "--out-dir", str(tmp_path / "out"), "--window", "1"]) == 0
    md = (tmp_path / "out" / "plateau.md").read_text()
    assert "| yolov8n_seed0 | 40 | 19 | 0.2000 | 0.2000 |" in md
    assert (tmp_path / "out" / "plateau.png").stat().st_size > 5_000
    assert len((tmp_path / "out" / "plateau.csv").read_text().splitlines()) == 41


def test_a_curve_still_rising_plateaus_at_its_end(tmp_path, script):
    mod = script("plateau")
    run = write_run(tmp_path / "r", [e / 100 for e in range(1, 31)])
    assert mod.plateau_epoch(mod.read_curve(run), window=1, fraction=1.0)[0] == 30


def test_runs_without_a_val_curve_are_refused(tmp_path, script):
    mod = script("plateau")
    run = write_run(tmp_path / "noval", [0.0] * 5)  # val=False: Ultralytics writes zeros
    with pytest.raises(SystemExit, match="noval.*val=False"):
        mod.read_curve(run)
    with pytest.raises(SystemExit, match="missing.*results.csv|results.csv"):
        mod.read_curve(tmp_path / "absent")
