"""Model building shared by the YOLO test files: scaled YAML names, the parser on the meta device, cached scale-n
models, and the forward check every YOLO model passes."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from ultralytics.nn import tasks


def scaled(cfg: Path, scale: str) -> Path:
    """cfg/yolov8-vil-p5.yaml, 'n' -> cfg/yolov8n-vil-p5.yaml (the file name Ultralytics reads the scale from)."""
    return cfg.with_name(re.sub(r"^(yolo(?:v8|11|26))", rf"\g<1>{scale}", cfg.name, count=1))


def parse_on_meta(cfg: Path | str | dict, nc: int = 2) -> torch.nn.Sequential:
    """Ultralytics' model parser on a scaled YAML (or a model dict) with every tensor on the meta device: every
    constructor runs with the arguments Ultralytics computes, at no memory or init cost."""
    d = copy.deepcopy(cfg) if isinstance(cfg, dict) else tasks.yaml_model_load(cfg)
    d["nc"] = nc
    with torch.device("meta"):
        layers, _ = tasks.parse_model(d, ch=3, verbose=False)
    return layers


_MODELS: dict[str, torch.nn.Module] = {}


def scale_n_model(cfg: Path | str) -> torch.nn.Module:
    """The DetectionModel of a scale-n YAML (a path or a packaged name), nc=2, seed 0, built once per session
    (with Ultralytics' 256 x 256 stride probe)."""
    key = str(cfg)
    if key not in _MODELS:
        torch.manual_seed(0)
        model = tasks.DetectionModel(key, nc=2, verbose=False)
        assert model.yaml["scale"] == "n" and model.stride.tolist() == [8.0, 16.0, 32.0]
        _MODELS[key] = model
    return _MODELS[key]


def check_forward_square_and_rectangular(model: torch.nn.Module, nc: int = 2, end2end: bool = False) -> None:
    """The model runs at 64 x 64 and 64 x 96, in eval (decoded boxes, finite) and train mode (raw outputs per
    anchor); `end2end` (YOLO26): also the one-to-one branch that val and export select, and both training branches."""
    for h, w in ((64, 64), (64, 96)):
        anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
        model.eval()
        with torch.no_grad():
            y = model(torch.rand(2, 3, h, w))
        y = y[0] if isinstance(y, (list, tuple)) else y
        assert y.shape == (2, 4 + nc, anchors) and torch.isfinite(y).all()
        if end2end:
            model.end2end = True  # the one-to-one branch, top-k decoded, no NMS
            with torch.no_grad():
                e2e = model(torch.rand(2, 3, h, w))
            e2e = e2e[0] if isinstance(e2e, (list, tuple)) else e2e
            assert e2e.shape[0] == 2 and e2e.shape[-1] == 6 and torch.isfinite(e2e).all()
            model.end2end = False
        model.train()
        out = model(torch.rand(2, 3, h, w))
        branches = [out["one2many"], out["one2one"]] if end2end else [out]
        assert all(b["scores"].shape[-1] == anchors for b in branches)


def assert_stock_channel_plan(cfg: Path, types: tuple[type, ...], c2f_types: tuple[type, ...]) -> list:
    """At every scale the YAML declares, each module of `types` gets Ultralytics' depth and width scaling, and each
    one of `c2f_types` has the channels, depth and hidden width of the stock YOLOv8 C2f it replaces (ViLStage rows
    are insertions, not replacements). Returns the modules of `types` found at the last scale."""
    import math

    import yaml

    d = yaml.safe_load(cfg.read_text())
    rows = d["backbone"] + d["head"]
    assert list(d["scales"]) == list("nsmlx")
    found = []
    for scale, (depth, width, max_channels) in d["scales"].items():
        layers = parse_on_meta(scaled(cfg, scale))
        stock = parse_on_meta(f"yolov8{scale}.yaml")
        found = [m for m in layers if isinstance(m, types)]
        assert found, f"{cfg.name} has no module of {[t.__name__ for t in types]}"
        for m in found:
            row_n, args = rows[m.i][1], rows[m.i][3]
            n = max(round(row_n * depth), 1) if row_n > 1 else row_n
            assert m.n == n, f"{cfg.name} {scale} layer {m.i}: depth"
            assert m.c2 == math.ceil(min(args[0], max_channels) * width / 8) * 8, f"{scale} layer {m.i}: width"
            if isinstance(m, c2f_types):
                ref = stock[m.i - sum(r[2] == "ViLStage" for r in rows[: m.i])]
                assert type(ref).__name__ == "C2f", f"layer {m.i} does not replace a C2f"
                got = (m.c1, m.c2, m.n, len(m.m), m.c)
                want = (ref.cv1.conv.in_channels, ref.cv2.conv.out_channels, len(ref.m), len(ref.m), ref.c)
                assert got == want, f"{cfg.name} {scale} layer {m.i}"
    return found
