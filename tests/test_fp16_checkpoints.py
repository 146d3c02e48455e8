"""Float16 checkpoints hold what was trained: Vim's stages end in a norm (with a path for weights written before
it), and saving a model whose float32 EMA leaves float16's range warns, naming the tensor."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from ultra_vil.fp16_range import FP16_MAX, float16_overflows
from ultra_vil.yolo import register as reg
from ultra_vil.yolo.modules import VimC2f, VimStage

trainer_mod = pytest.importorskip("ultralytics.engine.trainer")


def _blocks_only(stage: VimStage, x: torch.Tensor) -> torch.Tensor:
    """The stage as it was before its output norm: the blocks on row-major tokens."""
    B, C, H, W = x.shape
    seq = x.flatten(2).transpose(1, 2)
    for block in stage.blocks:
        seq = block(seq, (H, W))
    return seq.transpose(1, 2).reshape(B, C, H, W)


def test_vim_stage_output_is_bounded_whatever_the_residual_stream():
    """The residual stream of Vim blocks only grows; the stage's output (what VimC2f's cv2 and its BatchNorm
    read) is normalised, so a stream of 1e6 leaves the stage at the norm's scale (gain 1 at init: |y| <= sqrt(C))."""
    torch.manual_seed(0)
    stage = VimStage(16, 16, 1).eval()
    x = 1e6 * torch.randn(1, 16, 4, 6)
    with torch.no_grad():
        y = stage(x)
        assert _blocks_only(stage, x).abs().max() > 1e5  # the stream itself is as large as its input
    assert y.abs().max() <= 16**0.5 + 1e-3


def test_state_dict_without_the_norm_keeps_the_trained_function():
    """Weights of a stage trained without the output norm load with one warning and give the old outputs."""
    torch.manual_seed(0)
    old = VimC2f(16, 16, 1).eval()
    legacy = {k: v for k, v in old.state_dict().items() if not k.startswith("m.0.norm.")}
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        expected = old.cv2(torch.cat([*old.cv1(x).chunk(2, 1), _blocks_only(old.m[0], old.cv1(x).chunk(2, 1)[1])], 1))
    new = VimC2f(16, 16, 1).eval()
    with pytest.warns(UserWarning, match="'m.0': the weights predate the stage's output norm"):
        assert not new.load_state_dict(legacy).missing_keys  # strict load passes too
    assert isinstance(new.m[0].norm, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(new(x), expected)


def test_foreign_state_dict_leaves_the_norm():
    """Weights of another model (no Vim blocks in them, e.g. stock YOLOv8 transferred with strict=False) do not
    switch the norm off."""
    stage = VimStage(16, 16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stage.load_state_dict({}, strict=False)
    assert not isinstance(stage.norm, torch.nn.Identity)


def test_pickled_stage_from_before_the_norm_runs_as_trained():
    """A checkpoint pickles the module itself: a stage pickled without the norm unpickles to its blocks alone."""
    torch.manual_seed(0)
    stage = VimStage(16, 16, 1).eval()
    del stage._modules["norm"]  # what the pickled state of a stage written before the norm holds
    buffer = io.BytesIO()
    torch.save(stage, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _blocks_only(loaded, x))


def _overflowing_vim_c2f() -> VimC2f:
    model = VimC2f(16, 16, 1)
    model.cv2.bn.running_var[3] = 2.5e5  # as float32 training let it grow behind the Vim blocks
    return model


def test_overflow_is_found_and_named():
    model = _overflowing_vim_c2f()
    assert [n for n, _ in float16_overflows(model)] == ["cv2.bn.running_var"]
    assert model.half().cv2.bn.running_var[3].item() == float("inf")  # what the float16 cast does to it
    assert float16_overflows(VimC2f(16, 16, 1)) == []
    nonfinite = {"a": torch.tensor([float("nan"), float("inf"), 3.0]), "b": torch.tensor([FP16_MAX])}
    assert float16_overflows(nonfinite) == []  # non-finite values and the limit itself are not overflows


def test_save_warns_once_per_tensor_for_ultra_vil_models_only(monkeypatch):
    """The wrapped `BaseTrainer.save_model` logs one warning naming each saturating tensor, once per run, then
    saves as before; a stock model gets no warning."""
    reg.register()
    assert getattr(trainer_mod.BaseTrainer.save_model, reg._PATCHED_SAVE, False)
    from ultralytics.utils import LOGGER

    logged, saved = [], []
    monkeypatch.setattr(LOGGER, "warning", lambda msg, *a, **k: logged.append(msg))
    save = reg._guarded_save(lambda self: saved.append(self) or True)

    class Trainer:  # what the wrapper reads of a trainer: ema.ema, the float32 EMA model
        def __init__(self, model):
            self.ema = type("EMA", (), {"ema": torch.nn.Sequential(model)})()

    trainer = Trainer(_overflowing_vim_c2f())
    assert save(trainer) and save(trainer)
    assert len(saved) == 2 and len(logged) == 1
    assert "0.cv2.bn.running_var" in logged[0] and "2.5e+05" in logged[0]
    stock = torch.nn.BatchNorm2d(4)
    stock.running_var[0] = 1e6
    save(Trainer(stock))
    assert len(logged) == 1  # stock models are Ultralytics' business
