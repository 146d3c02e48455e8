"""Learning, not just running: YOLOv8n-ViL overfits two tiles of the embedded NEON tree-crown data.

Train = val = two 400 px tiles of datasets/neon-trees (built by ultra_vil.data.neon_trees, which pip-downloads the
deepforest wheel on first use), repeated 6 times per epoch so that BatchNorm running statistics converge
(momentum 0.03: with only 2 iterations per epoch they would still carry the initial variance of 1 and evaluation
would fail for any model), no augmentation, 30 epochs at imgsz 192: 180 optimizer steps, about 1.5 to 2 minutes on
2 cores.

Threshold, measured on this CPU with these settings (ultralytics 8.4.190, torch 2.14.1):
    cfg/yolov8n-vil.yaml            mAP50 0.693 (seed 0), 0.729 (seed 1)
    same, ViLStage returning noise  mAP50 0.325 (a module whose output is garbage)
MAP50_MIN = 0.5 lies between the two. The test also asserts that the training loss falls below a quarter of its
first-epoch value and that every ViL parameter was updated by the optimizer (a module cut out of the graph, frozen,
or missing from the optimizer fails that even if the rest of the detector learns).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TILES = ("SOAP_061_y0000_x0000", "2019_YELL_2_541000_4977000_image_crop_y0000_x0000")  # 26 + 20 crowns
MAP50_MIN = 0.5
LOSS_RATIO_MAX = 0.25


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory) -> Path:
    from ultra_vil.data.neon_trees import build

    src = ROOT / "datasets" / "neon-trees"
    build(src)  # no-op when already built
    root = tmp_path_factory.mktemp("overfit")
    for name in TILES:
        for kind, ext in (("images", "png"), ("labels", "txt")):
            (root / kind).mkdir(exist_ok=True)
            shutil.copy(src / kind / "train" / f"{name}.{ext}", root / kind / f"{name}.{ext}")
    images = sorted((root / "images").glob("*.png"))
    (root / "train.txt").write_text("".join(f"{p}\n" for p in images for _ in range(6)))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: train.txt\nval: images\nnames:\n  0: tree\n")
    return root


def vil_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from ultra_vil.yolo.modules import ViLC2f, ViLStage

    return {
        f"{layer.i}.{name}": p.detach().clone()
        for layer in model.model
        if isinstance(layer, (ViLC2f, ViLStage))
        for name, p in layer.named_parameters()
        if ".m." in f".{name}" or isinstance(layer, ViLStage)  # the ViL blocks (not ViLC2f's 1x1 convs)
    }


def test_overfit_two_tiles(two_tiles):
    from ultralytics import YOLO

    model = YOLO(str(ROOT / "cfg" / "yolov8n-vil.yaml"))
    snapshots = {}
    model.add_callback("on_train_start", lambda trainer: snapshots.setdefault("start", vil_parameters(trainer.model)))
    model.add_callback("on_train_end", lambda trainer: snapshots.setdefault("end", vil_parameters(trainer.model)))
    metrics = model.train(
        data=str(two_tiles / "data.yaml"), epochs=30, imgsz=192, batch=2, nbs=2, device="cpu", workers=0, seed=0,
        mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0, val=False, plots=False,
        project=str(two_tiles / "runs"), name="overfit", exist_ok=True, verbose=False,
    )
    rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader((two_tiles / "runs/overfit/results.csv").open())]
    loss = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]
    print(f"overfit: loss {loss[0]:.3f} -> {loss[-1]:.3f}, mAP50 {metrics.box.map50:.3f}, mAP50-95 {metrics.box.map:.3f}")
    assert loss[-1] < LOSS_RATIO_MAX * loss[0]
    assert metrics.box.map50 >= MAP50_MIN

    start, end = snapshots["start"], snapshots["end"]
    assert start.keys() == end.keys() and len(start) > 50
    unchanged = [name for name in start if torch.equal(start[name], end[name])]
    assert not unchanged, f"ViL parameters never updated: {unchanged[:5]}"
