"""The Sequencer and Vim YOLO modules and YAMLs: registration, every scale with the stock channel plan,
the YAMLs differ from cfg/yolov8-vil.yaml only in the mixer, forward on square and rectangular inputs, gradients to
every mixer parameter, argument errors that name the layer, module and argument. CPU, 64 px.
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
from ultra_vil.yolo.modules import SequencerC2f, SequencerStage, ViLStage, VimC2f, VimStage

# after the registration:
from helpers.yolo import assert_stock_channel_plan, check_forward_square_and_rectangular, scale_n_model, scaled  # noqa: E402

tasks = pytest.importorskip("ultralytics.nn.tasks")

ROOT = Path(__file__).resolve().parents[1]
MIXER_CFGS = {"sequencer": ROOT / "cfg" / "yolov8-sequencer.yaml", "vim": ROOT / "cfg" / "yolov8-vim.yaml"}
C2F_OF = {"sequencer": SequencerC2f, "vim": VimC2f}
MIXER_TYPES = (SequencerC2f, SequencerStage, VimC2f, VimStage)


def model_n(mixer: str) -> torch.nn.Module:
    """The scale-n DetectionModel of a mixer (built once per session)."""
    return scale_n_model(scaled(MIXER_CFGS[mixer], "n"))


def test_registered_like_the_vil_modules():
    """The four classes are in MODULES, injected into ultralytics.nn.tasks and in both C2f parser sets; they and
    their mixers' classes are safe-load globals."""
    assert uy.is_registered()
    for cls in MIXER_TYPES:
        assert reg.MODULES[cls.__name__] is cls and getattr(tasks, cls.__name__) is cls
        assert cls in tasks._ultra_vil_base_modules and cls in tasks._ultra_vil_repeat_modules
    from ultra_vil import sequencer, vim

    inner = {sequencer.BiLSTM2D, sequencer.ChannelMLP, sequencer.SequencerBlock, vim.SSMBranch, vim.VimMixer}
    assert {*MIXER_TYPES, *inner, vim.VimBlock} <= set(
        torch.serialization.get_safe_globals()
    )  # checkpoints pickle these


@pytest.mark.parametrize("mixer", list(MIXER_CFGS))
def test_only_the_mixer_differs_from_the_vil_yaml(mixer):
    """Same scales, same rows, same arguments as cfg/yolov8-vil.yaml; only ViLC2f is renamed."""
    ours = yaml.safe_load(MIXER_CFGS[mixer].read_text())
    vil = yaml.safe_load((ROOT / "cfg" / "yolov8-vil.yaml").read_text())
    assert ours["scales"] == vil["scales"] and ours["nc"] == vil["nc"]
    name = C2F_OF[mixer].__name__
    for part in ("backbone", "head"):
        renamed = [[f, n, name if m == "ViLC2f" else m, a] for f, n, m, a in vil[part]]
        assert ours[part] == renamed
    assert sum(row[2] == name for row in ours["backbone"]) == 2  # P4 and P5, as in the recommended ViL YAML


@pytest.mark.parametrize("mixer", list(MIXER_CFGS))
def test_every_scale_builds_with_the_stock_channel_plan(mixer):
    """At each of n/s/m/l/x every mixer C2f has the channels, depth and hidden width of the stock YOLOv8 C2f it
    replaces (a module outside Ultralytics' width / depth scaling would not)."""
    assert len(assert_stock_channel_plan(MIXER_CFGS[mixer], MIXER_TYPES, MIXER_TYPES)) == 2


@pytest.mark.parametrize("mixer", list(MIXER_CFGS))
def test_forward_square_and_rectangular(mixer):
    """Scale n runs at 64 x 64 and 64 x 96, in eval (decoded boxes) and train mode (raw head outputs)."""
    model = model_n(mixer)
    check_forward_square_and_rectangular(model)


@pytest.mark.parametrize("mixer", list(MIXER_CFGS))
def test_backward_reaches_every_mixer_parameter(mixer):
    """A loss on the head outputs (64 x 96 input) gives a non-zero gradient to every parameter of both mixer
    layers: LSTM weights of both directions along rows and columns, or both SSM directions' A_log, D, dt_proj."""
    torch.manual_seed(0)
    model = tasks.DetectionModel(str(scaled(MIXER_CFGS[mixer], "n")), nc=2, verbose=False).train()
    g = torch.Generator().manual_seed(0)
    out = model(torch.rand(2, 3, 64, 96, generator=g))
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in (out["boxes"], out["scores"]))
    loss.backward()
    checked = 0
    for layer in model.model:
        if not isinstance(layer, MIXER_TYPES):
            continue
        for pname, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {layer.i} {type(layer).__name__}.{pname}"
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("stage_cls", [SequencerStage, VimStage])
def test_stage_is_its_blocks_on_row_major_tokens(stage_cls):
    """A stage is exactly its blocks applied to the map's row-major tokens over the runtime (H, W) grid: H and W
    swapped on a rectangular map, or a wrong flatten, would fail this."""
    torch.manual_seed(0)
    stage = stage_cls(16, 16, 1).eval()
    x = torch.randn(2, 16, 3, 5)
    seq = x.permute(0, 2, 3, 1).reshape(2, 15, 16)  # token t = (row t // 5, column t % 5)
    with torch.no_grad():
        for block in stage.blocks:
            seq = block(seq, (3, 5))
        seq = getattr(stage, "norm", torch.nn.Identity())(seq)  # VimStage ends in Vim's final norm
        torch.testing.assert_close(stage(x), seq.reshape(2, 3, 5, 16).permute(0, 3, 1, 2))


def test_mixer_module_arguments():
    """The public argument orders and what n counts (Sequencer2D blocks; pairs of Vim blocks); any H x W works;
    a unit has about the parameters of a ViL block pair."""
    seq = SequencerC2f(8, 24, 2, 0.5, 0.25, 3.0, 0.0)
    vim = VimC2f(8, 24, 2, 0.5, 2, 16, 0.0)
    assert (seq.c, len(seq.m), len(seq.m[0].blocks)) == (12, 2, 1)
    assert (vim.c, len(vim.m), len(vim.m[0].blocks)) == (12, 2, 2)
    assert seq.m[0].blocks[0].mixer.hidden_size == 3 and vim.m[0].blocks[0].mixer.inner_dim == 24
    x = torch.rand(2, 8, 5, 7)
    assert seq(x).shape == vim(x).shape == (2, 24, 5, 7)
    assert SequencerStage(16, 16, 2).forward(torch.rand(1, 16, 3, 1)).shape == (1, 16, 3, 1)
    assert VimStage(16, 16, 1, 2, 8).forward(torch.rand(1, 16, 1, 3)).shape == (1, 16, 1, 3)
    c = 64  # the hidden channels of the P4 bottlenecks at scale n
    vil_pair = sum(p.numel() for p in ViLStage(c, c, 1).parameters())
    for unit in (SequencerStage(c, c, 1), VimStage(c, c, 1)):  # 0.79 and 1.29 x a ViL pair (one Vim block: 0.64 x)
        ratio = sum(p.numel() for p in unit.parameters()) / vil_pair
        assert 0.75 < ratio < 1.35, (type(unit).__name__, ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.deepcopy(seq), copy.deepcopy(vim)  # ModelEMA deep-copies the model


@pytest.mark.parametrize(
    "cls,args,argument,pattern",
    [
        (SequencerStage, (16, 32), "c2", "c1=16"),
        (SequencerStage, (16, 16, 0), "n", ">= 1"),
        (SequencerStage, (16, 16, 1, 0.01), "hidden_ratio", ">= 1"),
        (SequencerC2f, (16, 32, 1, True), "e", "no 'shortcut'"),
        (SequencerC2f, (16, 32, 1, 0.5, 0.25, -1.0), "mlp_ratio", r"\[0.0, 16.0\)"),
        (SequencerC2f, (16, 32, 1, 0.5, 0.25, 3.0, 1.0), "drop_path", r"\[0.0, 1.0\)"),
        (VimStage, (16, 16, 1, 2, 0), "state_size", ">= 1"),
        (VimStage, (16, 8), "c2", "c1=16"),
        (VimC2f, (16, 32, 1, 0.5, 1.5), "expansion", "integer"),
        (VimC2f, (16, 32, 1, 0.0), "e", r"\(0, 1\]"),
    ],
)
def test_bad_arguments_name_module_and_argument(cls, args, argument, pattern):
    with pytest.raises(uy.ViLArgumentError) as info:
        cls(*args)
    assert info.value.module == cls.__name__ and info.value.argument == argument
    assert re.search(pattern, str(info.value)), str(info.value)


def _yaml_with_row(tmp_path: Path, mixer: str, index: int, row: list) -> Path:
    d = yaml.safe_load(MIXER_CFGS[mixer].read_text())
    rows = d["backbone"] + d["head"]
    rows[index] = row
    d["backbone"], d["head"] = rows[: len(d["backbone"])], rows[len(d["backbone"]) :]
    path = tmp_path / f"yolov8n-{mixer}-bad.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "mixer,row,expected",
    [
        ("sequencer", [-1, 3, "SequencerC2f", [1024, True]], [r"argument 'e'", "no 'shortcut'"]),
        ("sequencer", [-1, 3, "SequencerC2f", [1024, 0.5, 0.25, 3.0, 0.0, 7]], ["too many arguments", "drop_path"]),
        ("vim", [-1, 3, "VimC2f", [1024, 0.5, 2, 0]], [r"argument 'state_size'", "got 0"]),
        ("vim", [-1, 3, "VimC2f", [1024, 0.5, "two"]], [r"argument 'expansion'", "'two'"]),
    ],
    ids=["shortcut-bool", "too-many", "state-size", "string"],
)
def test_yaml_errors_name_file_layer_module_and_argument(tmp_path, mixer, row, expected):
    """A bad row at layer 8 fails with one YAMLLayerError naming the file, layer index, module and argument."""
    path = _yaml_with_row(tmp_path, mixer, 8, row)
    with pytest.raises(uy.YAMLLayerError) as info:
        tasks.DetectionModel(str(path), nc=2, verbose=False)
    msg = str(info.value)
    assert path.name in msg and re.search(rf"layer 8 \({row[2]}", msg), msg
    for pattern in expected:
        assert re.search(pattern, msg), f"{pattern!r} not in: {msg}"


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("mixer", list(MIXER_CFGS))
def test_stock_cli_train_val_predict_export(tmp_path, mixer):
    """`yolo train/val/predict/export format=onnx` in fresh interpreters (the start-up hook only), 1 epoch at 64 px;
    best.pt also loads under Ultralytics' restricted loader. ONNX: Sequencer exports with dynamic=True and matches
    onnxruntime at 64 x 64 and 64 x 96; Vim's scan is traced for the export size (its chunk loops unroll), so it is
    exported static and checked at that size, and a dynamic export refuses another size loudly (a Split of the
    traced chunk count), never silently. About 1-2 minutes per mixer on 2 cores."""
    ort = pytest.importorskip("onnxruntime")
    import sys

    import numpy as np
    from test_yolo_cli import run, write_tiny_set, yolo
    from ultralytics import YOLO

    data = write_tiny_set(tmp_path / "tiny")
    common = ("imgsz=64", "device=cpu")
    run(yolo("train", f"model=cfg/yolov8n-{mixer}.yaml", f"data={data}", "epochs=1", "batch=4", "workers=0",
             f"project={tmp_path / 'runs'}", "name=train", "plots=False", *common), tmp_path)  # fmt: skip
    best = tmp_path / "runs" / "train" / "weights" / "best.pt"
    assert best.exists()
    val = run(
        yolo("val", f"model={best}", f"data={data}", "batch=2", f"project={tmp_path / 'runs'}", *common), tmp_path
    )
    assert "all" in val.stdout + val.stderr
    run(yolo("predict", f"model={best}", f"source={tmp_path / 'tiny' / 'images' / 'val'}",
             f"project={tmp_path / 'runs'}", "save=False", *common), tmp_path)  # fmt: skip
    code = (
        "from ultralytics.nn.tasks import torch_safe_load\n"
        f"ckpt, _ = torch_safe_load({str(best)!r}, safe_only=True); print('SAFE', type(ckpt['model']).__name__)"
    )
    assert "SAFE DetectionModel" in run([sys.executable, "-c", code], tmp_path).stdout

    dynamic = mixer == "sequencer"
    run(yolo("export", f"model={best}", "format=onnx", f"dynamic={dynamic}", *common), tmp_path)
    model = YOLO(str(best)).model.float().fuse().eval()
    session = ort.InferenceSession(str(best.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    g = torch.Generator().manual_seed(0)
    for h, w in ((64, 64), (64, 96)) if dynamic else ((64, 64),):
        x = torch.rand(2 if dynamic else 1, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
        out = session.run(None, {name: x.numpy()})[0]
        diff = float(np.abs(out - ref).max())
        print(f"{mixer} ONNX vs PyTorch at {h}x{w}: max abs diff {diff:.3g} (outputs up to {np.abs(ref).max():.3g})")
        assert out.shape == ref.shape and diff < 1e-3
    if not dynamic:  # a dynamic Vim export must refuse another size, not answer wrongly
        run(yolo("export", f"model={best}", "format=onnx", "dynamic=True", *common), tmp_path)
        session = ort.InferenceSession(str(best.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
        session.run(None, {name: torch.rand(1, 3, 64, 64).numpy()})  # the export size works
        with pytest.raises(Exception, match="Split"):
            session.run(None, {name: torch.rand(1, 3, 64, 96).numpy()})


@pytest.mark.parametrize("mixer", sorted(MIXER_CFGS))
def test_optimizer_exempts_mixer_norms_biases_and_vim_state_params(mixer):
    """Ultralytics' own build_optimizer (AdamW and SGD) on each mixer's YOLOv8n: every bias, every norm gain and
    Vim's A_log and D get weight decay 0 (stock Ultralytics would decay A_log and D); LSTM / projection matrices
    still decay."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(str(scaled(MIXER_CFGS[mixer], "n")), nc=2, verbose=False)
    trainer = DetectionTrainer.__new__(DetectionTrainer)  # build_optimizer reads only its arguments and self.args
    trainer.args = type("Args", (), {"nbs": 64, "batch": 16, "warmup_bias_lr": 0.0})()
    names = {id(p): n for n, p in model.named_parameters()}
    for name in ("AdamW", "SGD"):
        opt = DetectionTrainer.build_optimizer(trainer, model, name=name, lr=0.01, momentum=0.9, decay=5e-4)
        decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        assert len(decay) == len(names)
        ours = [n for n in names.values() if ".m." in n or ".blocks." in n]  # inside the mixer modules
        assert ours
        exempt = [n for n in ours if n.endswith((".A_log", ".D")) or "bias" in n or ".norm" in n]
        assert exempt and all(decay[n] == 0 for n in exempt), [n for n in exempt if decay[n]]
        if mixer == "vim":
            assert any(n.endswith(".A_log") for n in exempt) and any(n.endswith(".D") for n in exempt)
        matrices = [n for n in ours if n not in exempt and model.get_parameter(n).ndim >= 2]
        assert matrices and all(decay[n] > 0 for n in matrices)
