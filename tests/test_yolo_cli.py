"""The stock `yolo` command and fresh interpreters see the ViL modules with no import by the user.

Every Ultralytics run here is a subprocess (a fresh interpreter whose only link to ultra-vil is the start-up
hook that `pip install -e .` put in site-packages), on CPU, at 64 px, on a tiny synthetic data set written by the
test. Nothing is downloaded (YOLO_OFFLINE=1). About a minute and a half on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import ROOT, run, write_tiny_set, yolo, yolo_env  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.cli]

ONNX_MAX_ABS_DIFF = 1e-3  # measured 6.1e-5 .. 1.2e-4 with outputs up to ~480 (box pixels); printed by the test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`yolo train model=cfg/yolov8n-vil.yaml ... epochs=1 imgsz=64 device=cpu` in a fresh interpreter."""
    tmp = tmp_path_factory.mktemp("yolo_cli")
    data = write_tiny_set(tmp / "tiny")
    proc = run(
        yolo(
            "train",
            "model=cfg/yolov8n-vil.yaml",
            f"data={data}",
            "epochs=1",
            "imgsz=64",
            "device=cpu",
            "batch=4",
            "workers=0",
            f"project={tmp / 'runs'}",
            "name=train",
            "plots=False",
        ),
        tmp,
    )
    best = tmp / "runs" / "train" / "weights" / "best.pt"
    assert best.exists(), proc.stdout[-2000:]
    return dict(tmp=tmp, data=data, best=best, log=proc.stdout + proc.stderr)


def test_train_builds_vil_modules_from_yaml(trained):
    """The training log lists our modules (from the YAML, not from a checkpoint) and a finished run."""
    assert trained["log"].count("ultra_vil.yolo.modules.ViLC2f") >= 2  # layers 6 and 8 of the model table
    assert "1 epochs completed" in trained["log"]


def test_val_and_predict_on_best_pt_in_fresh_interpreters(trained):
    tmp, best, data = trained["tmp"], trained["best"], trained["data"]
    val = run(
        yolo(
            "val",
            f"model={best}",
            f"data={data}",
            "imgsz=64",
            "device=cpu",
            "batch=4",
            "workers=0",
            f"project={tmp / 'runs'}",
            "name=val",
            "plots=False",
        ),
        tmp,
    )
    assert "all" in val.stdout + val.stderr
    pred = run(
        yolo(
            "predict",
            f"model={best}",
            f"source={data.parent / 'images' / 'val'}",
            "imgsz=64",
            "device=cpu",
            f"project={tmp / 'runs'}",
            "name=predict",
            "save=False",
        ),
        tmp,
    )
    assert "4 images" in pred.stdout + pred.stderr or "image 4/4" in pred.stdout + pred.stderr


def test_checkpoint_pickles_our_classes_and_loads_safely(trained):
    """best.pt references the modules by their public paths; it loads in a fresh interpreter with the hook off
    (unpickling imports ultra_vil.yolo, which registers) and under Ultralytics' restricted loader."""
    best = str(trained["best"])
    code = (
        "import json, sys, torch\n"
        f"names = torch.serialization.get_unsafe_globals_in_checkpoint({best!r})  # before anything is allow-listed\n"
        "from ultralytics import YOLO; from ultralytics.nn.tasks import torch_safe_load\n"
        f"m = YOLO({best!r}); assert 'ultra_vil.yolo' in sys.modules\n"
        "from ultra_vil.yolo import is_registered; assert is_registered()\n"
        f"ckpt, _ = torch_safe_load({best!r}, safe_only=True)\n"
        "print('RESULT', json.dumps([type(ckpt['model']).__name__, sorted(names)]))"
    )
    proc = run([sys.executable, "-c", code], trained["tmp"], ULTRA_VIL_NO_HOOK="1")
    model_type, names = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert model_type == "DetectionModel"
    assert {"ultra_vil.yolo.modules.ViLC2f", "ultra_vil.yolo.modules.ViLStage", "ultra_vil.vil.ViLBlockPair"} <= set(
        names
    )


def test_onnx_export_matches_pytorch(trained):
    """`yolo export format=onnx dynamic=True` succeeds; onnxruntime matches PyTorch at 64 x 64 and 64 x 96."""
    ort = pytest.importorskip("onnxruntime")
    import torch
    from ultralytics import YOLO

    tmp, best = trained["tmp"], trained["best"]
    run(yolo("export", f"model={best}", "format=onnx", "imgsz=64", "dynamic=True", "device=cpu"), tmp)
    onnx_path = best.with_suffix(".onnx")
    assert onnx_path.exists()
    model = YOLO(str(best)).model.float().fuse().eval()  # export exports the fused float model
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    g = torch.Generator().manual_seed(0)
    for h, w in ((64, 64), (64, 96)):
        x = torch.rand(2, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
        out = session.run(None, {name: x.numpy()})[0]
        assert out.shape == ref.shape
        diff = float(np.abs(out - ref).max())
        print(f"ONNX vs PyTorch at {h}x{w}: max abs diff {diff:.3g} (outputs up to {np.abs(ref).max():.3g})")
        assert diff < ONNX_MAX_ABS_DIFF


def test_hook_is_what_makes_the_cli_work(tmp_path):
    """With ULTRA_VIL_NO_HOOK=1 a fresh interpreter cannot build the YAML (KeyError); with the hook it can, and
    the hook imports neither torch nor ultralytics at start-up."""
    loaded = "[name in sys.modules for name in ('torch', 'ultralytics', '_ultra_vil_hook')]"
    proc = run([sys.executable, "-c", f"import json, sys; print(json.dumps({loaded}))"], tmp_path)
    assert json.loads(proc.stdout) == [False, False, True], "start-up hook not installed: run `pip install -e .`"
    build = "from ultralytics import YOLO; YOLO('cfg/yolov8n-vil.yaml'); print('BUILT')"
    assert "BUILT" in run([sys.executable, "-W", "error::RuntimeWarning", "-c", build], tmp_path).stdout
    off = run([sys.executable, "-c", build], tmp_path, check=False, ULTRA_VIL_NO_HOOK="1")
    assert off.returncode != 0 and "KeyError: 'ViLC2f'" in off.stderr


def test_import_orders_register_without_warnings(tmp_path):
    """Every import order registers exactly once, and `import ultra_vil` alone never imports ultralytics."""
    checks = [
        "import ultra_vil, sys; assert 'ultralytics' not in sys.modules",
        "import ultra_vil.yolo as y; assert y.is_registered()",
        "import ultralytics.nn.tasks as t; import ultra_vil.yolo as y; assert y.is_registered() and t.ViLC2f",
        "from ultralytics import YOLO; import ultralytics.nn.tasks as t; assert t.parse_model._ultra_vil_registered",
        "import ultra_vil; from ultralytics import YOLO; from ultra_vil.yolo import is_registered as r; assert r()",
    ]
    for code in checks:
        run([sys.executable, "-W", "error", "-c", code], tmp_path)
    run([sys.executable, "-c", checks[1]], tmp_path, ULTRA_VIL_NO_HOOK="1")  # the fallback: import by hand


def test_wrong_argument_message_reaches_cli_users(tmp_path):
    """The stock CLI ends with our one-line error naming layer, module and argument."""
    import yaml

    d = yaml.safe_load((ROOT / "cfg" / "yolov8-vil.yaml").read_text())
    d["backbone"][8] = [-1, 3, "ViLC2f", [1024, True]]
    bad = tmp_path / "yolov8n-vil-bad.yaml"
    bad.write_text(yaml.safe_dump(d, sort_keys=False))
    proc = run(yolo("train", f"model={bad}", "data=unused.yaml", "device=cpu"), tmp_path, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0
    assert last.startswith("ultra_vil.yolo.register.YAMLLayerError:") and "layer 8 (ViLC2f" in last and "'e'" in last
