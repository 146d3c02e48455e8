"""Contracts of the shared layers (ultra_vil/layers): what each computes, that checkpoints keep naming the classes
by their `ultra_vil.vil` path (and load, weights-only too), and that the package imports nothing of ultra_vil but
ultra_vil.errors."""

from __future__ import annotations

import ast
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ultra_vil.layers as layers
import ultra_vil.vil as vil
from ultra_vil.layers import DropPath, HeadwiseLinear, LayerNorm, MultiHeadNorm

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ROOT / "ultra_vil" / "layers"
CLASSES = (DropPath, HeadwiseLinear, LayerNorm, MultiHeadNorm)


def _randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ------------------------------------------------------------------------------------------- what each computes
def test_layer_norm_has_gain_one_plus_w():
    norm = _randomized(LayerNorm(6).double())
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    expected = F.layer_norm(x, (6,), 1.0 + norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
    assert LayerNorm(6, bias=False).bias is None
    assert torch.equal(LayerNorm(6).weight, torch.zeros(6))  # w = 0: gain 1 at init


@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_norm_normalises_each_head_alone(bias):
    B, NH, S, DH = 2, 3, 5, 4
    norm = _randomized(MultiHeadNorm(NH * DH, NH, bias).double())
    h = torch.randn(B, NH, S, DH, dtype=torch.float64)
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    hn = ((h - mean) / torch.sqrt(var + 1e-5)).transpose(1, 2).reshape(B, S, NH * DH)
    expected = hn * (1.0 + norm.weight) + (norm.bias if bias else 0.0)
    torch.testing.assert_close(norm(h), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_headwise_linear_is_a_block_diagonal_linear(bias):
    lin = _randomized(HeadwiseLinear(12, 4, bias).double())
    dense = torch.block_diag(*lin.weight)  # (12, 12), rows = outputs
    x = torch.randn(2, 3, 5, 12, dtype=torch.float64)
    expected = x @ dense.t() + (lin.bias if bias else 0.0)
    torch.testing.assert_close(lin(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dim=10 is not divisible by block_size=4"):
        HeadwiseLinear(10, 4)


def test_drop_path_drops_whole_samples_and_rescales():
    x = torch.randn(64, 3, 2) + 5.0
    assert DropPath(0.0).train()(x) is x and DropPath(0.5).eval()(x) is x
    torch.manual_seed(0)
    y = DropPath(0.25).train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(dropped.sum()) < 64  # per sample: all or nothing
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"drop path probability must be in \[0, 1\)"):
            DropPath(p)
    assert repr(DropPath(0.1)) == "DropPath(p=0.1)"


# ------------------------------------------------------------------------------------------- checkpoint contract
def test_classes_keep_their_pickled_path_in_ultra_vil_vil():
    """Checkpoints pickle whole modules by class path: the moved classes keep `ultra_vil.vil.<name>`, which
    resolves to the same class, so old and new checkpoints are one format."""
    assert sorted(n for n in layers.__all__ if isinstance(getattr(layers, n), type)) == sorted(c.__name__ for c in CLASSES)
    for cls in CLASSES:
        assert cls.__module__ == "ultra_vil.vil" and getattr(vil, cls.__name__) is cls
        assert pickle.loads(pickle.dumps(cls)) is cls


def _instances() -> list[torch.nn.Module]:
    return [_randomized(m) for m in (DropPath(0.1), HeadwiseLinear(8, 4), LayerNorm(8), MultiHeadNorm(8, 2))]


@pytest.mark.parametrize("module", _instances(), ids=lambda m: type(m).__name__)
def test_a_pickle_names_the_vil_path_and_loads_weights_only(module):
    """The stream names `ultra_vil.vil.<name>` (never ultra_vil.layers) and loads under weights_only (what
    ULTRALYTICS_SAFE_LOAD uses) once the classes are registered as safe globals."""
    pytest.importorskip("ultralytics")
    from ultra_vil.yolo import register as reg  # importing ultra_vil.yolo registers

    assert type(module) in reg.module_classes()
    buffer = io.BytesIO()
    torch.save(module, buffer)
    data = buffer.getvalue()
    assert b"ultra_vil.vil" in data
    assert b"ultra_vil.layers" not in data
    for loaded in (pickle.loads(pickle.dumps(module)), torch.load(io.BytesIO(data), weights_only=True)):
        assert type(loaded) is type(module)
        for k, v in module.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)


# ------------------------------------------------------------------------------------------- import graph
def _upward_imports(path: Path) -> list[str]:
    """Modules of ultra_vil that `path` (a file of ultra_vil/layers) imports, other than ultra_vil.layers and
    ultra_vil.errors; the imports inside functions count too. A relative import leaving the package counts."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:  # `from .. import x`: above ultra_vil/layers
                out.append("." * node.level + (node.module or ""))
                continue
            names = [] if node.level == 1 else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")
            if top[0] == "ultra_vil" and not (name == "ultra_vil.errors" or top[:2] == ["ultra_vil", "layers"]):
                out.append(name)
    return out


def test_the_import_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom ultra_vil.errors import UserError\nfrom . import norms\n"
                   "def f():\n    from ultra_vil.vil import ViLBlock\n    from .. import vim\n    import ultra_vil\n")
    assert _upward_imports(bad) == ["ultra_vil.vil", "..", "ultra_vil"]


def test_layers_import_nothing_of_ultra_vil_but_errors():
    """The mixers import the layers, never the other way: the source of every file, then a fresh interpreter
    (a bare `ultra_vil` package object, so ultra_vil/__init__.py and what it imports stay out of the count)."""
    offenders = {p.name: names for p in sorted(LAYERS.glob("*.py")) if (names := _upward_imports(p))}
    assert not offenders, offenders
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('ultra_vil'); pkg.__path__ = [{str(ROOT / 'ultra_vil')!r}]\n"
        "sys.modules['ultra_vil'] = pkg\n"
        "import ultra_vil.layers\n"
        "print(sorted(m for m in sys.modules if m.startswith('ultra_vil.')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    loaded = ast.literal_eval(p.stdout.strip().splitlines()[-1])
    assert "ultra_vil.layers.norms" in loaded
    assert [m for m in loaded if m != "ultra_vil.errors" and not m.startswith("ultra_vil.layers")] == []


# ------------------------------------------------------------------------------------------ one no-decay rule
def test_one_no_decay_rule_for_the_classifier_recipe_and_the_yolo_patch():
    """The classifier recipe and the Ultralytics optimizer patch exempt exactly the parameters that
    `exempt_from_decay` names: 1-D ones and pos_embed / cls_token / A_log by name."""
    from ultra_vil.classifier import create_model
    from ultra_vil.layers import exempt_from_decay
    from ultra_vil.train.recipe import param_groups

    model = create_model("vim_t", num_classes=3, img_size=32, dim=32, num_blocks=2, pooling="middle_cls")
    groups = param_groups(model, weight_decay=0.05)
    exempt = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    expected = {id(p) for n, p in model.named_parameters() if exempt_from_decay(n, p)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert exempt == expected
    assert {"pos_embed", "cls_token"} <= {names[i] for i in exempt}
    assert any(names[i].endswith(".A_log") for i in exempt)  # 2-D, exempt by name
    assert any(p.ndim == 2 and id(p) not in exempt for p in model.parameters())  # weights still decay

    import ultra_vil.yolo  # noqa: F401  (registers the modules)
    from ultralytics.nn.tasks import DetectionModel

    from ultra_vil.yolo import register

    yolo = DetectionModel("cfg/yolov8n-vim.yaml", verbose=False)
    ours = [t for t in yolo.modules() if isinstance(t, register._OUR_MODULES)]
    expected = {id(p) for t in ours for n, p in t.named_parameters() if exempt_from_decay(n, p)}
    assert {id(p) for p in register.no_decay_parameters(yolo)} == expected and expected


def test_group_matcher_drives_layer_decay_and_grad_checkpointing_switches():
    """Layer decay reads the model's group_matcher (stem 0, block pairs 1.., top above); set_grad_checkpointing
    toggles activation checkpointing (same gradients) and is recorded in the config."""
    import torch

    from ultra_vil.classifier import create_model
    from ultra_vil.train.recipe import layer_id, param_groups

    model = create_model("vil_t", num_classes=3, img_size=32, dim=32, num_blocks=4)
    g = model.group_matcher()
    assert [layer_id(n, 4, g) for n in ("pos_embed", "patch_embed.weight", "blocks.blocks.0.x", "blocks.blocks.3.x",
                                        "norm.weight", "head.weight")] == [0, 0, 1, 2, 3, 3]  # fmt: skip
    scales = {gr["name"]: gr["lr_scale"] for gr in param_groups(model, 0.05, layer_decay=0.5)}
    assert scales["layer0_decay"] == 0.5**3 and scales["layer3_decay"] == 1.0

    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        assert model.blocks.checkpoint is enable and model.config["checkpoint"] is enable
        model.zero_grad()
        model.train()
        model(x).sum().backward()
        grads.append(model.patch_embed.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
