"""ViL in YOLO11 and YOLO26: ViLC3k2 / ViLC2PSA, cfg/yolo11-vil.yaml, cfg/yolo26-vil.yaml, and the
packaged YAMLs found by name.

In process (CPU, 64 px): every scale builds with the stock channel plan and C3k2's c3k switch, forward at 64 x 64 and
64 x 96, backward reaches every ViL parameter. Then one slow-ish test per generation runs the stock `yolo` command
(train, val, export format=onnx, predict) by YAML name from a folder that is not the repository, with onnxruntime
parity (about a minute each on 2 cores).
"""

from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.cli import write_tiny_set, yolo, yolo_env

import ultra_vil.yolo  # noqa: F401  registers
from ultra_vil.yolo import register as reg
from ultra_vil.yolo.modules import ViLC2PSA, ViLC3k, ViLC3k2, ViLStage

from helpers.yolo import check_forward_square_and_rectangular, parse_on_meta, scale_n_model  # noqa: E402  (after the registration)

tasks = pytest.importorskip("ultralytics.nn.tasks")

ROOT = Path(__file__).resolve().parents[1]
GENERATIONS = ("yolo11", "yolo26")
VIL_TYPES = (ViLC3k2, ViLC2PSA)
STOCK_OF = {ViLC3k2: "C3k2", ViLC2PSA: "C2PSA"}


def cfg_of(gen: str) -> Path:
    return ROOT / "cfg" / f"{gen}-vil.yaml"


def loaded(name: str | Path) -> dict:
    return tasks.yaml_model_load(name)


@pytest.mark.parametrize("gen", GENERATIONS)
def test_every_scale_builds_with_stock_channels_and_c3k_switch(gen):
    """At every declared scale each ViL module has the c1, c2, n and hidden width of the stock module it replaces;
    ViLC3k2's inner blocks are ViLC3k exactly where Ultralytics makes C3k2's inner blocks C3k."""
    d = yaml.safe_load(cfg_of(gen).read_text())
    assert list(d["scales"]) == list("nsmlx")
    rows = d["backbone"] + d["head"]
    for scale, (depth, width, max_channels) in d["scales"].items():
        layers = parse_on_meta(loaded(cfg_of(gen).with_name(f"{gen}{scale}-vil.yaml")))
        stock = parse_on_meta(loaded(f"{gen}{scale}.yaml"))
        assert len(layers) == len(stock)
        vil = [m for m in layers if isinstance(m, VIL_TYPES)]
        assert [m.i for m in vil] == [6, 8, 10], f"{gen}{scale}"
        for m in vil:
            ref = stock[m.i]
            assert type(ref).__name__ == STOCK_OF[type(m)], f"{gen}{scale} layer {m.i}"
            row_n, args = rows[m.i][1], rows[m.i][3]
            assert m.n == (max(round(row_n * depth), 1) if row_n > 1 else row_n)
            assert m.c2 == math.ceil(min(args[0], max_channels) * width / 8) * 8
            got = (m.cv1.conv.in_channels, m.cv1.conv.out_channels, m.cv2.conv.out_channels, len(m.m) if
                   isinstance(m, ViLC3k2) else m.m.n, m.c)  # fmt: skip
            want = (ref.cv1.conv.in_channels, ref.cv1.conv.out_channels, ref.cv2.conv.out_channels, len(ref.m), ref.c)
            assert got == want, f"{gen}{scale} layer {m.i}"
            if isinstance(m, ViLC3k2):
                stock_c3k = type(ref.m[0]).__name__ == "C3k"  # rows 6, 8 write True; m/l/x force it anyway
                assert m.c3k == stock_c3k, f"{gen}{scale} layer {m.i}"
                assert all(isinstance(b, ViLC3k if stock_c3k else ViLStage) for b in m.m)


def test_c3k2_rule_applies_without_any_stock_c3k2():
    """Every C3k2 of YOLO26 renamed ViLC3k2 (no stock C3k2 left): the head is still built non-legacy, c3k written
    False becomes True at m but stays False at n (the parser's `m is C3k2` case reaches ViLC3k2), and YOLO26's
    [c2, True, 0.5, True] form gives Bottleneck + ViL pair blocks (attn takes precedence, as in C3k2)."""
    for scale in "nm":
        d = loaded(cfg_of("yolo26").with_name(f"yolo26{scale}-vil.yaml"))
        for row in d["backbone"] + d["head"]:
            if row[2] == "C3k2":
                row[2] = "ViLC3k2"
        tasks.Detect.legacy = True  # parse_model sets it on the class; start from the v8 value
        layers = parse_on_meta(d)
        assert type(layers[-1]).legacy is False
        assert isinstance(layers[2], ViLC3k2) and layers[2].c3k == (scale == "m")  # row [256, False, 0.25]
        last = layers[22]
        assert isinstance(last, ViLC3k2) and last.attn
        assert all(type(b[0]).__name__ == "Bottleneck" and isinstance(b[1], ViLStage) for b in last.m)


def test_parser_without_c3k2_test_is_refused():
    """A parse_model with the two sets but no `m is C3k2` test is refused (ViLC3k2 could not be scaled like C3k2)."""
    import types

    fake = types.ModuleType("ultralytics.nn.tasks")

    def parse_model(d, ch, verbose=True):
        base_modules = frozenset()  # noqa: F841
        repeat_modules = frozenset()  # noqa: F841
        for i, (f, n, m, args) in enumerate(d["backbone"]):
            pass

    fake.parse_model = parse_model
    with pytest.raises(RuntimeError, match="m is C3k2"):
        reg._recompile_parse_model(fake)


def model_n(gen: str) -> torch.nn.Module:
    return scale_n_model(f"{gen}n-vil.yaml")  # by name: the packaged lookup


@pytest.mark.parametrize("gen", GENERATIONS)
def test_forward_square_and_rectangular(gen):
    model = model_n(gen)
    head = model.model[-1]
    assert (getattr(head, "one2one_cv2", None) is not None) == (gen == "yolo26")  # YOLO26's end-to-end head
    check_forward_square_and_rectangular(model, end2end=gen == "yolo26")


@pytest.mark.parametrize("gen", GENERATIONS)
def test_backward_reaches_every_vil_parameter(gen):
    """A loss on the head outputs gives a non-zero gradient to every parameter inside every ViL module."""
    torch.manual_seed(0)
    model = tasks.DetectionModel(f"{gen}n-vil.yaml", nc=2, verbose=False).train()
    g = torch.Generator().manual_seed(0)
    out = model(torch.rand(2, 3, 64, 96, generator=g))
    branches = [out["one2many"], out["one2one"]] if gen == "yolo26" else [out]
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for b in branches for t in (b["boxes"], b["scores"]))
    loss.backward()
    checked = 0
    for layer in model.model:
        if isinstance(layer, VIL_TYPES):
            for pname, p in layer.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{gen} layer {layer.i}.{pname}"
                checked += 1
    assert checked > 50


def test_c3k2_and_c2psa_arguments():
    with pytest.raises(ValueError, match="ViLC3k2: argument 'c3k'"):
        ViLC3k2(32, 64, 1, 0.5)  # C3k2's order is (c2, c3k, e): a ratio in the c3k slot
    with pytest.raises(ValueError, match="ViLC2PSA: argument 'c2'"):
        ViLC2PSA(32, 64)
    x = torch.randn(1, 32, 5, 7)
    for kw in ({}, {"c3k": True}, {"attn": True}, {"e": 0.25}):
        assert ViLC3k2(32, 64, 2, **kw)(x).shape == (1, 64, 5, 7)
    assert ViLC2PSA(32, 32, 2)(x).shape == x.shape


def test_packaged_yaml_lookup_rules(tmp_path, monkeypatch):
    """Bare names resolve to the packaged YAMLs; a local file of the same name wins; names with a folder are not
    looked up (they must exist as given, as for stock names)."""
    monkeypatch.chdir(tmp_path)
    assert Path(tasks.check_yaml("yolo11-vil.yaml")).resolve() == (ROOT / "cfg" / "yolo11-vil.yaml").resolve()
    assert loaded("yolo26s-vil.yaml")["scale"] == "s"
    (tmp_path / "yolo11-vil.yaml").write_text((ROOT / "cfg" / "yolov8-vil.yaml").read_text())
    assert tasks.check_yaml("yolo11-vil.yaml") == "yolo11-vil.yaml"  # the local file
    assert reg.packaged_yaml("sub/yolo11-vil.yaml") is None
    with pytest.raises(FileNotFoundError):
        tasks.check_yaml("no-such-model.yaml")
    assert tasks.check_yaml("yolov8.yaml").endswith("yolov8.yaml")  # stock names still resolve to Ultralytics'


@pytest.mark.slow
@pytest.mark.cli
# --------------------------------------------------------------------------------- stock CLI, by name, elsewhere
@pytest.mark.parametrize("gen", GENERATIONS)
def test_cli_train_val_export_predict_by_name_from_another_folder(gen, tmp_path):
    """`yolo train model={gen}n-vil.yaml` (no path) from a folder that is not the repository, then val, export
    format=onnx and predict on the ONNX file, each in a fresh interpreter; onnxruntime matches PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    work = tmp_path / "elsewhere"
    work.mkdir()
    data = write_tiny_set(tmp_path / "tiny")

    def run(*args: str) -> str:
        proc = subprocess.run(yolo(*args), cwd=work, env=yolo_env(tmp_path), capture_output=True, text=True,
                              timeout=600, check=False)  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"yolo {' '.join(args)} -> rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc.stdout + proc.stderr

    common = ("imgsz=64", "device=cpu", f"project={tmp_path / 'runs'}")
    log = run("train", f"model={gen}n-vil.yaml", f"data={data}", "epochs=1", "batch=4", "workers=0", "name=train",
              "plots=False", *common)  # fmt: skip
    assert "ultra_vil.yolo.modules.ViLC3k2" in log and "ultra_vil.yolo.modules.ViLC2PSA" in log
    best = tmp_path / "runs" / "train" / "weights" / "best.pt"
    assert best.exists()
    assert "all" in run("val", f"model={best}", f"data={data}", "batch=4", "workers=0", "name=val", "plots=False",
                        *common)  # fmt: skip
    run("export", f"model={best}", "format=onnx", "imgsz=64", "device=cpu")
    onnx_path = best.with_suffix(".onnx")
    assert onnx_path.exists()
    pred = run("predict", f"model={onnx_path}", f"source={data.parent / 'images' / 'val'}", "save=False",
               "name=predict", *common)  # fmt: skip
    assert "image 4/4" in pred

    from ultralytics import YOLO

    model = YOLO(str(best)).model.float().fuse().eval()  # default export (nms unset): the one-to-many outputs
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape, (out.shape, ref.shape)
    diff = float(np.abs(out - ref).max())
    print(f"{gen}n-vil ONNX vs PyTorch: max abs diff {diff:.3g} (outputs up to {np.abs(ref).max():.3g})")
    assert diff < 1e-3



def test_yolo26_end2end_export_matches_pytorch(tmp_path, monkeypatch):
    """YOLO26-ViL exported with its end-to-end branch (`nms=False`: one-to-one head, top-k decode in the graph):
    onnxruntime gives PyTorch's detection scores. Compared sorted: an untrained head ties many scores, and top-k
    may order (or, at the cut, pick) tied candidates, i.e. their boxes, differently."""
    ort = pytest.importorskip("onnxruntime")
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yolo_model = YOLO("yolo26n-vil.yaml")
    onnx_file = yolo_model.export(format="onnx", imgsz=64, device="cpu", nms=False)
    model = yolo_model.model.float()
    model.end2end = True  # before fuse, as the exporter does: fusing then drops the one-to-many branch
    model = model.fuse().eval()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()[0]  # (max_det, 6): x1 y1 x2 y2 score class
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0][0]
    assert out.shape == ref.shape and ref.shape[-1] == 6
    assert np.abs(np.sort(out[:, 4]) - np.sort(ref[:, 4])).max() < 1e-4
