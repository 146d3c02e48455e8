"""ViLBackbone: a classifier trunk (ours or the released one) as the backbone of a YOLOv8 detector.

One tiny classifier is trained for an epoch by scripts/train_classifier.py (32 px, dim 32, 2 blocks, patch 16) and
its checkpoint is the backbone's `weights` throughout. The `yolo` runs are subprocesses (fresh interpreters) on the
tiny detection set of test_yolo_cli.py, at 64 px, one epoch, on CPU; the optimizer and freezing checks train once
in this process, where the trainer can be inspected. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from helpers.cli import ROOT, run, write_tiny_set, yolo
from helpers.vil2 import vil2_state

from ultra_vil import study
from ultra_vil.errors import UserError
from ultra_vil import vil
from ultra_vil.checkpoints import CheckpointError
from ultra_vil.classifier import load_checkpoint
from ultra_vil.yolo import ViLBackbone

FPN_T = ROOT / "cfg" / "yolov8-vilt-fpn.yaml"
FPN_S = ROOT / "cfg" / "yolov8-vils-fpn.yaml"
ONNX_MAX_ABS_DIFF = 1e-3  # as test_yolo_cli.py: outputs are box pixels up to ~64 here


def write_image_folder(root: Path, n: int = 4, size: int = 32) -> Path:
    """Two classes (bright top half / bright bottom half) on noise, `n` PNGs per class and split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("top", "bottom")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                rows = slice(0, size // 2) if c == 0 else slice(size // 2, size)
                img[rows] += 150
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """best.pt of a 1-epoch run of scripts/train_classifier.py: a 2-block, dim-32, patch-16 ViL at 32 px."""
    tmp = tmp_path_factory.mktemp("clf")
    data = write_image_folder(tmp / "data")
    script = load_script("train_classifier")
    argv = ["--data", str(data), "--out-dir", str(tmp / "run"), "--dim", "32", "--num-blocks", "2", "--img-size",
            "32", "--patch-size", "16", "--device", "cpu", "--workers", "0", "--epochs", "1", "--batch-size", "4",
            "--lr", "0.05", "--warmup-epochs", "0"]  # fmt: skip
    assert script.main(argv) == 0
    best = tmp / "run" / "best.pt"
    assert best.exists()
    return best


def stride16_map(backbone: ViLBackbone, x: torch.Tensor) -> torch.Tensor:
    """The map the trunk hands the pyramid inside `backbone(x)` (captured at the P4 branch's input)."""
    seen = []
    handle = backbone.p4.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        outs = backbone(x)
    finally:
        handle.remove()
    H, W = x.shape[-2:]
    assert [o.shape[-2:] for o in outs] == [(H // 8, W // 8), (H // 16, W // 16), (H // 32, W // 32)]
    return seen[0]


def test_trained_classifier_is_the_backbone_exactly(classifier):
    """Round trip: the classifier's checkpoint as `weights` -> the backbone's stride-16 map equals the classifier's
    forward_features(x, as_map=True), exactly in float64, at 64 x 64 and at a rectangular 64 x 96; the trunk takes
    the checkpoint's architecture (dim 32) whatever the preset says."""
    clf = load_checkpoint(classifier).double().eval()
    backbone = ViLBackbone("vil_t", [16, 24, 32], str(classifier)).double().eval()
    assert backbone.trunk.dim == 32 and backbone.weights_format == "ultra-vil"
    g = torch.Generator().manual_seed(0)
    for h, w in ((64, 64), (64, 96)):
        x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(stride16_map(backbone, x), clf.forward_features(x, as_map=True)), (h, w)
    random = ViLBackbone("vil_t", 16, "").double().eval()
    assert random.trunk.dim == 192  # the preset, with no weights


def test_official_weights_load_into_the_backbone(tmp_path):
    """A VisionLSTM2 state dict (ViL-T, legacy norm, 1000-class head) fills the trunk by name; the head and the
    legacy norm are left out on purpose. A renamed tensor is an error naming it, raised as it is through the YAML
    parser (a UserError naming the file)."""
    from ultralytics.nn.tasks import DetectionModel

    state = vil2_state(seed=1)
    path = tmp_path / "vil2.pth"
    torch.save(state, path)
    backbone = ViLBackbone("vil_t", 32, str(path))
    assert torch.equal(backbone.trunk.pos_embed.data, state["pos_embed.embed"])
    assert torch.equal(backbone.trunk.blocks.blocks[1].layer.mixers[0].conv.weight,
                       state["blocks.0.rowwise_from_bot_right.layer.conv.weight"])  # fmt: skip
    assert backbone.weights_format == "vil2"
    state["blocks.3.rowwise_from_top_left.layer.proj_upp.weight"] = state.pop(
        "blocks.3.rowwise_from_top_left.layer.proj_up.weight")  # fmt: skip
    torch.save(state, tmp_path / "renamed.pth")
    cfg = FPN_T.read_text().replace('[128, 192, 256], ""', f'[128, 192, 256], "{tmp_path / "renamed.pth"}"')
    assert cfg != FPN_T.read_text()
    (tmp_path / "yolov8-vilt-fpn.yaml").write_text(cfg)
    with pytest.raises(CheckpointError, match=r"renamed\.pth.*blocks\.blocks\.6\.layer\.proj_upp\.weight"):
        DetectionModel(str(tmp_path / "yolov8-vilt-fpn.yaml"), nc=2, verbose=False)


def test_weights_from_yaml_path_and_environment_override(classifier, tmp_path, monkeypatch):
    """An absolute path in the YAML (not a Python literal: the parser would raise SyntaxError on it unquoted) loads;
    ULTRA_VIL_BACKBONE_WEIGHTS overrides the YAML, "none" gives random init."""
    from ultralytics.nn.tasks import DetectionModel

    clf = load_checkpoint(classifier)
    yaml_path = tmp_path / "yolov8-vilt-fpn.yaml"
    yaml_path.write_text(FPN_T.read_text().replace('[128, 192, 256], ""', f'[128, 192, 256], "{classifier}"'))
    monkeypatch.delenv("ULTRA_VIL_BACKBONE_WEIGHTS", raising=False)
    model = DetectionModel(str(yaml_path), nc=2, verbose=False)
    assert torch.equal(model.model[0].trunk.pos_embed, clf.pos_embed)
    assert list(model.stride) == [8, 16, 32]
    monkeypatch.setenv("ULTRA_VIL_BACKBONE_WEIGHTS", "none")
    assert DetectionModel(str(yaml_path), nc=2, verbose=False).model[0].trunk.dim == 192
    monkeypatch.setenv("ULTRA_VIL_BACKBONE_WEIGHTS", str(classifier))
    model = DetectionModel(str(FPN_T), nc=2, verbose=False)  # the packaged YAML says ""
    assert model.model[0].weights == str(classifier)
    for k, v in clf.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.model[0].trunk.state_dict()[k], v), k


def test_bad_backbone_arguments_name_the_yaml_layer(tmp_path):
    """A wrong preset or channel list in the YAML: a YAMLLayerError naming the file, the layer and the argument."""
    from ultralytics.nn.tasks import DetectionModel

    from ultra_vil.yolo import YAMLLayerError

    for old, new, argument in (("[vil_t,", "[vil_x,", "preset"), ("[128, 192, 256]", "[128, 192]", "c2")):
        path = tmp_path / "yolov8-bad-fpn.yaml"
        path.write_text(FPN_T.read_text().replace(old, new, 1))
        with pytest.raises(YAMLLayerError, match=rf"yolov8-bad-fpn\.yaml: layer 0 \(ViLBackbone.*'{argument}'"):
            DetectionModel(str(path), nc=2, verbose=False)


def test_other_failures_keep_their_traceback(monkeypatch):
    """A failure that is not an argument problem comes out naming the layer, with the original error chained
    (its traceback kept), not replaced."""
    from ultralytics.nn.tasks import DetectionModel

    from ultra_vil.yolo import YAMLLayerError

    def broken(self, *args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(ViLBackbone, "__init__", broken)
    with pytest.raises(YAMLLayerError, match=r"layer 0 \(ViLBackbone.*RuntimeError: out of memory") as info:
        DetectionModel(str(FPN_T), nc=2, verbose=False)
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.__cause__.__traceback__ is not None


def test_fpn_yamls_sizes():
    """Both YAMLs build with strides 8/16/32; their sizes stay near YOLOv8s (11.2M) and YOLOv8m (25.9M)."""
    from ultralytics.nn.tasks import DetectionModel

    for path, target, trunk in ((FPN_T, 11.2e6, 6_005_760), (FPN_S, 25.9e6, 22_628_160)):
        model = DetectionModel(str(path), verbose=False)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - target) / target < 0.03, (path.name, n)
        assert sum(p.numel() for p in model.model[0].trunk.parameters()) == trunk
        assert list(model.stride) == [8, 16, 32]
        x = torch.zeros(1, 3, 64, 96)
        model.eval()
        with torch.no_grad():
            assert model(x)[0].shape[-1] == (8 * 12 + 4 * 6 + 2 * 3)  # a rectangular batch


def no_decay_expected(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """What the recipe exempts, found independently of register.py: in every ViL module, parameters of ViL norms,
    biases, the position embedding and learnable_skip."""
    out = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}"
            if ".trunk." not in full and ".m." not in full and "pairs" not in full:
                continue  # the CNN parts: Ultralytics' own rules
            if isinstance(module, (vil.LayerNorm, vil.MultiHeadNorm)) or pname in ("bias", "pos_embed",
                                                                                   "learnable_skip"):  # fmt: skip
                out[full] = p
    return out


def check_groups(optimizer, model) -> None:
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    expected = no_decay_expected(model)
    assert any(k.endswith("pos_embed") or k.endswith("learnable_skip") for k in expected)
    for name, p in expected.items():
        assert decay_of[id(p)] == 0, name
    vil_weights = [(n, p) for n, p in model.named_parameters() if n.endswith("proj_up.weight")]
    assert vil_weights and all(decay_of[id(p)] > 0 for _, p in vil_weights)  # matrices still decay
    assert len(decay_of) == len(list(model.parameters()))  # nothing lost or duplicated


def test_optimizer_groups_and_frozen_trunk(classifier, tmp_path):
    """One epoch of Ultralytics' own trainer with the trunk frozen (freeze=['0.trunk']): the trainer's optimizer puts
    every ViL norm weight, bias, position embedding and learnable_skip in a group with weight decay 0, for
    ViLBackbone and, built by the same trainer, ViLStage/ViLC2f (AdamW, SGD, MuSGD); the trunk's weights after
    the epoch equal the loaded ones bit for bit, in the model and in its EMA; a second run from that last.pt
    without freeze trains the trunk (the two-stage recipe for a trunk frozen in the first epochs)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    data = write_tiny_set(tmp_path / "tiny")
    yaml_path = tmp_path / "yolov8-vilt-fpn.yaml"
    yaml_path.write_text(FPN_T.read_text().replace('[128, 192, 256], ""', f'[128, 192, 256], "{classifier}"'))
    loaded = {k: v.clone() for k, v in load_checkpoint(classifier).state_dict().items() if not k.startswith("head.")}
    model = YOLO(str(yaml_path))
    fpn_bias = model.model.model[0].p4[0].bn.bias.detach().clone()
    model.train(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, val=False,
                project=str(tmp_path / "runs"), name="frozen", freeze=["0.trunk"], optimizer="AdamW", amp=False)  # fmt: skip
    trainer = model.trainer
    live = trainer.model
    check_groups(trainer.optimizer, live)
    for k, v in loaded.items():
        assert torch.equal(live.model[0].trunk.state_dict()[k], v), k
        assert torch.equal(trainer.ema.ema.model[0].trunk.state_dict()[k], v), k
    # the step did happen (one epoch: Ultralytics skips warmup, every lr is lr0): the pyramid is not frozen, it moved
    assert not torch.equal(live.model[0].p4[0].bn.bias.detach(), fpn_bias)
    # stage 2 of "frozen for the first epochs": train on from stage 1's last.pt without freeze: the trunk moves
    stage2 = YOLO(str(trainer.last))
    stage2.train(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, val=False,
                 project=str(tmp_path / "runs"), name="unfrozen", optimizer="AdamW", amp=False)  # fmt: skip
    trunk2 = stage2.trainer.model.model[0].trunk.state_dict()
    saved = {k: v.half().float() for k, v in loaded.items()}  # Ultralytics stores last.pt in float16
    moved = [k for k, v in saved.items() if not torch.equal(trunk2[k], v)]
    assert len(moved) > len(saved) // 2, moved
    assert max(float((trunk2[k] - v).abs().max()) for k, v in saved.items()) < 0.1  # one AdamW step from stage 1
    stages = DetectionModel(str(ROOT / "cfg" / "yolov8n-vil.yaml"), nc=2, verbose=False)
    for name in ("AdamW", "SGD", "MuSGD"):
        opt = trainer.build_optimizer(stages, name=name, lr=0.01, momentum=0.9, decay=5e-4, iterations=10)
        check_groups(opt, stages)


@pytest.mark.slow
@pytest.mark.cli
def test_yolo_cli_train_val_predict_export(classifier, tmp_path):
    """`yolo train` on the packaged YAML without weights and with the classifier's (ULTRA_VIL_BACKBONE_WEIGHTS), then
    `yolo val`, `yolo predict` and `yolo export format=onnx` on the second best.pt, each in a fresh interpreter;
    the restricted loader reads best.pt; onnxruntime matches PyTorch at 64 x 64 and 64 x 96 (dynamic=True)."""
    ort = pytest.importorskip("onnxruntime")
    from ultralytics import YOLO

    data = write_tiny_set(tmp_path / "tiny")
    common = [f"data={data}", "epochs=1", "imgsz=64", "device=cpu", "batch=4", "workers=0", "plots=False",
              f"project={tmp_path / 'runs'}"]  # fmt: skip
    proc = run(yolo("train", f"model={FPN_T}", *common, "name=random"), tmp_path)
    assert "ultra_vil.yolo.modules.ViLBackbone" in proc.stdout + proc.stderr
    assert (tmp_path / "runs" / "random" / "weights" / "best.pt").exists()
    run(yolo("train", f"model={FPN_T}", *common, "name=pretrained"), tmp_path,
        ULTRA_VIL_BACKBONE_WEIGHTS=str(classifier))  # fmt: skip
    best = tmp_path / "runs" / "pretrained" / "weights" / "best.pt"
    assert best.exists()
    trunk = YOLO(str(best)).model.model[0].trunk
    assert trunk.dim == 32  # the classifier's trunk, chosen from the command line

    val = run(yolo("val", f"model={best}", f"data={data}", "imgsz=64", "device=cpu", "batch=4", "workers=0",
                   "plots=False", f"project={tmp_path / 'runs'}", "name=val"), tmp_path)  # fmt: skip
    assert "all" in val.stdout + val.stderr
    images = data.parent / "images" / "val"
    run(yolo("predict", f"model={best}", f"source={images}", "imgsz=64", "device=cpu", "save=False",
             f"project={tmp_path / 'runs'}", "name=predict"), tmp_path)  # fmt: skip
    run(yolo("export", f"model={best}", "format=onnx", "imgsz=64", "dynamic=True", "device=cpu"), tmp_path)
    onnx_path = best.with_suffix(".onnx")
    assert onnx_path.exists()
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(best), safe_only=True)  # the restricted loader: every class is allow-listed
    assert type(ckpt["model"].model[0]).__name__ == "ViLBackbone"
    model = YOLO(str(best)).model.float().fuse().eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    g = torch.Generator().manual_seed(0)
    for h, w in ((64, 64), (64, 96)):  # dynamic axes: the trunk's grid and position embedding follow the input
        x = torch.rand(2, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
        out = session.run(None, {name: x.numpy()})[0]
        assert out.shape == ref.shape
        diff = float(np.abs(out - ref).max())
        print(f"ONNX vs PyTorch at {h}x{w}: max abs diff {diff:.3g} (outputs up to {np.abs(ref).max():.3g})")
        assert diff < ONNX_MAX_ABS_DIFF


def test_compare_takes_the_fpn_yamls_and_their_weights(classifier, tmp_path, monkeypatch):
    """scripts/compare.py: the -fpn YAMLs are models like any other (tag, baseline); the backbone weights they load
    (YAML or ULTRA_VIL_BACKBONE_WEIGHTS) are part of the run's identity, so other weights train again; a named
    file that is missing stops the comparison before any training."""
    monkeypatch.delenv("ULTRA_VIL_BACKBONE_WEIGHTS", raising=False)
    models = study.pick_models([str(FPN_T)], "s")
    assert [m["tag"] for m in models] == ["yolov8s", "yolov8s-vilt-fpn"] and models[1]["weights"] == []
    plain = study.model_sha(FPN_T)
    monkeypatch.setenv("ULTRA_VIL_BACKBONE_WEIGHTS", str(classifier))
    assert study.pick_models([str(FPN_T)], "s")[1]["weights"] == [str(classifier)]
    with_weights = study.model_sha(FPN_T)
    assert with_weights.startswith(plain + "+") and with_weights != plain
    other = tmp_path / "other.pt"
    other.write_bytes(classifier.read_bytes() + b"\0")
    monkeypatch.setenv("ULTRA_VIL_BACKBONE_WEIGHTS", str(other))
    assert study.model_sha(FPN_T) != with_weights
    monkeypatch.setenv("ULTRA_VIL_BACKBONE_WEIGHTS", str(tmp_path / "absent.th"))
    with pytest.raises(UserError, match="absent.th not found"):
        study.pick_models([str(FPN_T)], "s")
