"""scripts/checkpoint_range.py names the tensors that a float16 checkpoint saturated."""

import pytest
import torch
from conftest import load_script

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
