"""YOLO integration, in process: registration, every cfg/ YAML at every scale, shapes, gradients, channel
conventions and YAML error messages (ultra_vil/yolo/, cfg/).

All on CPU at 64 px; the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import ultra_vil.yolo as uy
from ultra_vil.yolo import register as reg
from ultra_vil.yolo.modules import ViLC2f, ViLStage

# after the registration:
from helpers.yolo import assert_stock_channel_plan, check_forward_square_and_rectangular, scale_n_model, scaled  # noqa: E402

tasks = pytest.importorskip("ultralytics.nn.tasks")

ROOT = Path(__file__).resolve().parents[1]
# the scaled placement YAMLs; the -fpn ones (a pretrained ViLBackbone, one size each) are tested in test_backbone.py
CFGS = sorted(p for p in (ROOT / "cfg").glob("yolov8-vil*.yaml") if not p.stem.endswith("-fpn"))
VIL_TYPES = (ViLC2f, ViLStage)


def scales_of(cfg: Path) -> list[str]:
    return list(yaml.safe_load(cfg.read_text())["scales"])


def build(cfg: Path | str, nc: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return tasks.DetectionModel(str(cfg), nc=nc, verbose=False)


def vil_layers(model) -> list[torch.nn.Module]:
    return [m for m in model.model if isinstance(m, VIL_TYPES)]


def test_cfg_files_exist():
    """The recommended YAML and the placement variants are present."""
    names = {p.name for p in CFGS}
    assert {
        "yolov8-vil.yaml",
        "yolov8-vil-p5.yaml",
        "yolov8-vil-neck.yaml",
        "yolov8-vil-all.yaml",
    } <= names


def test_registration_applied():
    """Importing ultra_vil.yolo registered both modules, the recompiled parser and the safe-load globals."""
    assert uy.is_registered()
    assert tasks.ViLC2f is ViLC2f and tasks.ViLStage is ViLStage
    assert getattr(tasks.parse_model, "_ultra_vil_registered", False)
    assert {ViLC2f, ViLStage} <= tasks._ultra_vil_base_modules
    assert {ViLC2f, ViLStage} <= tasks._ultra_vil_repeat_modules
    import ultralytics.nn

    assert ultralytics.nn.parse_model is tasks.parse_model  # the package re-export follows the patch
    safe = set(torch.serialization.get_safe_globals())
    assert {ViLC2f, ViLStage} <= safe


def test_register_is_idempotent():
    parser = tasks.parse_model
    for _ in range(3):
        uy.register.register()
    assert tasks.parse_model is parser
    assert tasks.parse_model._ultra_vil_original.__name__ == "parse_model"


def test_supported_ultralytics_version_and_clear_error(monkeypatch):
    """The installed version is in the supported range; others fail with a message naming the range."""
    import ultralytics

    reg.check_ultralytics_version(ultralytics.__version__)
    for version in ("8.3.99", "8.5.0", "9.0.0"):
        with pytest.raises(RuntimeError, match=r"ultralytics>=8\.4,<8\.5.*found ultralytics " + version):
            reg.check_ultralytics_version(version)
    monkeypatch.setenv(reg.SKIP_VERSION_CHECK_ENV, "1")
    with pytest.warns(RuntimeWarning, match="8.5.0"):
        reg.check_ultralytics_version("8.5.0")


def test_recompile_fails_loudly_if_parser_changed():
    """A parse_model without the two local module sets is refused with a message naming them."""
    import types

    fake = types.ModuleType("ultralytics.nn.tasks")

    def parse_model(d, ch, verbose=True):  # no base_modules / repeat_modules
        for i, (f, n, m, args) in enumerate(d["backbone"]):  # noqa: B007  the loop locals register.py reads
            pass

    fake.parse_model = parse_model
    with pytest.raises(RuntimeError, match="base_modules.*repeat_modules"):
        reg._recompile_parse_model(fake)


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_every_cfg_builds_at_every_scale_with_stock_channel_plan(cfg):
    """Each YAML builds at each scale it declares; every ViLC2f has the channels and depth of the stock YOLOv8 C2f
    it replaces, at every scale (a module that skipped width or depth scaling would not).

    Scales are built by the parser on the meta device (fast); scale n is also built for real as a DetectionModel
    (which runs Ultralytics' 256 x 256 stride probe) in the tests below.
    """
    assert_stock_channel_plan(cfg, VIL_TYPES, (ViLC2f,))


def model_n(cfg: Path) -> torch.nn.Module:
    """The scale-n DetectionModel of a cfg (built once per session)."""
    return scale_n_model(scaled(cfg, "n"))


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_forward_square_and_rectangular(cfg):
    """Scale n runs at 64 x 64 and 64 x 96, in eval (decoded boxes) and train mode (raw head outputs)."""
    model = model_n(cfg)
    check_forward_square_and_rectangular(model)


@pytest.mark.parametrize("name", ["yolov8-vil.yaml", "yolov8-vil-all.yaml"])  # all: every ViLC2f + a ViLStage
def test_backward_reaches_every_vil_parameter(name):
    """A loss on the head outputs gives a non-zero gradient to every parameter inside every ViL module."""
    model = build(scaled(ROOT / "cfg" / name, "n")).train()  # own copy: gradients accumulate
    g = torch.Generator().manual_seed(0)
    out = model(torch.rand(2, 3, 64, 96, generator=g))
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in (out["boxes"], out["scores"]))
    loss.backward()
    checked = 0
    for layer in vil_layers(model):
        for pname, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {layer.i} {type(layer).__name__}.{pname}"
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_vil_channels_match_input_at_scale_n(cfg):
    """At scale n every ViL module receives the channels it was built for (c1) and returns c2; a ViLStage keeps
    its input's channel count. With the wrong convention (no width scaling: 1024 instead of 256 at P5, or c1 not
    inferred) this fails."""
    model = model_n(cfg).eval()
    seen = {}

    def hook(module, inputs, output):
        seen[module.i] = (module, inputs[0].shape[1], output.shape[1])

    handles = [m.register_forward_hook(hook) for m in vil_layers(model)]
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96))
    for h in handles:
        h.remove()
    assert seen
    for i, (m, c_in, c_out) in seen.items():
        assert c_in == m.c1, f"layer {i}: built for c1={m.c1}, receives {c_in}"
        assert c_out == m.c2
        assert m.c2 <= 256, f"layer {i}: scale n has at most 1024 x 0.25 = 256 channels, got c2={m.c2}"
        if isinstance(m, ViLStage):
            assert c_out == c_in


def test_stage_channels_at_scale_n():
    """The ViLStage of the "all" YAML follows SPPF: at scale n 256 channels in and out (YAML 1024 x width 0.25)."""
    model = model_n(ROOT / "cfg" / "yolov8-vil-all.yaml")
    stages = [m for m in model.model if isinstance(m, ViLStage)]
    assert stages and all((m.c1, m.c2) == (256, 256) for m in stages)


def _yaml_with_row(tmp_path: Path, index: int, row: list) -> Path:
    d = yaml.safe_load((ROOT / "cfg" / "yolov8-vil-all.yaml").read_text())  # row 8: ViLC2f, row 10: ViLStage
    rows = d["backbone"] + d["head"]
    rows[index] = row
    d["backbone"], d["head"] = rows[: len(d["backbone"])], rows[len(d["backbone"]) :]
    path = tmp_path / "yolov8n-vil-bad.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "index,row,expected",
    [
        (8, [-1, 3, "ViLC2f", [1024, True]], [r"layer 8 \(ViLC2f", r"argument 'e'", "True", "no 'shortcut'"]),
        (8, [-1, 3, "ViLC2f", [1024, 0.5, 2, 0.0, 7]], [r"layer 8 \(ViLC2f", "too many arguments", "7", "drop_path"]),
        (8, [-1, 3, "ViLC2f", [1024, 0.5, "two"]], [r"layer 8 \(ViLC2f", r"argument 'expansion'", "'two'"]),
        (10, [-1, 1, "ViLStage", [512]], [r"layer 10 \(ViLStage", r"argument 'c2'", "c1=256"]),
        (10, [-1, 1, "ViLStage", [1024, 2, 1.5]], [r"layer 10 \(ViLStage", r"argument 'drop_path'", "1.5"]),
    ],
    ids=["shortcut-bool", "too-many", "string", "stage-channels", "drop-path"],
)
def test_wrong_arguments_name_layer_module_and_argument(tmp_path, index, row, expected):
    """A bad ViL row fails with one YAMLLayerError that names the file, layer index, module and argument."""
    path = _yaml_with_row(tmp_path, index, row)
    with pytest.raises(uy.YAMLLayerError) as info:
        tasks.DetectionModel(str(path), nc=2, verbose=False)
    msg = str(info.value)
    assert "yolov8n-vil-bad.yaml" in msg
    for pattern in expected:
        assert re.search(pattern, msg), f"{pattern!r} not in: {msg}"
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained deep traceback


def test_stock_errors_pass_through_unchanged(tmp_path):
    """Errors in rows that are not ours are not rewritten (an unknown module name stays Ultralytics' KeyError)."""
    path = _yaml_with_row(tmp_path, 3, [-1, 1, "NoSuchModule", [256, 3, 2]])
    with pytest.raises(KeyError, match="NoSuchModule"):
        tasks.DetectionModel(str(path), nc=2, verbose=False)


def test_vil_module_arguments():
    """The public argument orders: ViLStage(c1, c2, n, expansion, drop_path), ViLC2f(c1, c2, n, e, expansion,
    drop_path); any H x W works."""
    stage = ViLStage(16, 16, 2, 2, 0.1)
    assert len(stage.pairs) == 2
    c2f = ViLC2f(8, 24, 2, 0.5, 2, 0.0)
    assert (c2f.c, len(c2f.m)) == (12, 2)
    x = torch.rand(2, 8, 5, 7)
    assert c2f(x).shape == (2, 24, 5, 7)
    assert stage(torch.rand(1, 16, 3, 1)).shape == (1, 16, 3, 1)
    with pytest.raises(ValueError, match="c2"):
        ViLStage(16, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.deepcopy(c2f)  # ModelEMA deep-copies the model


def test_stage_is_block_pairs_on_row_major_tokens():
    """ViLStage is exactly its ViL block pairs applied to the map's row-major tokens over the runtime (H, W) grid:
    a flatten / reshape bug (e.g. H and W swapped on a rectangular map) would fail this."""
    torch.manual_seed(0)
    stage = ViLStage(16, 16, 2).eval()
    with torch.no_grad():
        for p in stage.parameters():  # move away from the init (zero gate weights hide token-order bugs)
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 16, 3, 5)
    seq = x.permute(0, 2, 3, 1).reshape(2, 15, 16)  # token t = (row t // 5, column t % 5)
    with torch.no_grad():
        for pair in stage.pairs:
            seq = pair(seq, (3, 5))
        torch.testing.assert_close(stage(x), seq.reshape(2, 3, 5, 16).permute(0, 3, 1, 2))


def test_every_module_class_keeps_its_public_path():
    """Checkpoints pickle each module by class path: every public class is `ultra_vil.yolo.modules.<name>` (whichever
    file defines it) and resolves there; a user's subclass elsewhere keeps its own module (so it pickles too)."""
    import pickle

    from ultra_vil.yolo import modules

    classes = [getattr(modules, n) for n in modules.__all__ if isinstance(getattr(modules, n), type)]
    layers = [c for c in classes if issubclass(c, torch.nn.Module)]
    assert len(layers) == 10
    for cls in layers:
        assert cls.__module__ == "ultra_vil.yolo.modules" and getattr(modules, cls.__name__) is cls
    stage = pickle.loads(pickle.dumps(modules.ViLStage(16, 16)))
    assert type(stage) is modules.ViLStage

    class MyStage(modules.ViLStage):
        pass

    assert MyStage.__module__ == __name__
