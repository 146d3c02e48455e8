"""The ViL classifier (ultra_vil/classifier.py): reference sizes, every preset trains, bad input, checkpoints."""

import pytest
import torch

from ultra_vil import create_model, load_checkpoint, save_checkpoint
from ultra_vil.classifier import POOLINGS, VARIANTS

REFERENCE_PARAMS = {"vil_t": 6_390_760, "vil_s": 23_397_160, "vil_b": 89_260_456}  # VisionLSTM2, legacy_norm=False


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_parameter_counts_match_reference(name):
    """Defaults (224 px, patch 16, bilateral concat, 1000 classes) give the VisionLSTM2 counts exactly."""
    assert n_params(create_model(name)) == REFERENCE_PARAMS[name]


def test_plus_variants_have_the_papers_block_counts():
    assert len(create_model("vil_t_plus", img_size=32).blocks.blocks) == 29  # odd: a forward block ends the stack
    assert len(create_model("vil_s_plus", img_size=32).blocks.blocks) == 26


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_preset_trains(name):
    """Forward + backward at a tiny size; every parameter gets a gradient; logits finite."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("pooling", POOLINGS)
def test_poolings(pooling):
    torch.manual_seed(0)
    model = create_model("vil_t", dim=32, num_blocks=3, num_classes=5, img_size=32, patch_size=8, pooling=pooling)
    x = torch.randn(2, 3, 32, 48)  # rectangular: 4 x 6 grid
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.forward_features(x, as_map=True).shape == (2, 32, 4, 6)


def test_forward_features_tokens_and_map_agree():
    torch.manual_seed(0)
    model = create_model("vil_t", dim=32, num_blocks=2, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 40)
    tokens = model.forward_features(x)  # (B, S, D), row-major
    fmap = model.forward_features(x, as_map=True)  # (B, D, H', W')
    assert tokens.shape == (2, 20, 32) and fmap.shape == (2, 32, 4, 5)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens)


def test_overlapping_patches_long_sequence():
    """Patch 16 with stride 8 (the paper's long-sequence fine-tune): (64 - 16) / 8 + 1 = 7 tokens a side."""
    model = create_model("vil_t", dim=32, num_blocks=2, img_size=64, patch_stride=8)
    assert model.forward_features(torch.randn(1, 3, 64, 64), as_map=True).shape == (1, 32, 7, 7)


@pytest.mark.parametrize(
    "kwargs, value",
    [
        (dict(name="vil_q"), "vil_q"),
        (dict(name="vil_t", pooling="max"), "max"),
        (dict(name="vil_t", img_size=230), "230"),
        (dict(name="vil_t", dim=20), "dim=20"),
        (dict(name="vil_t", traversal="spiral"), "spiral"),
        (dict(name="vil_t", patch_size=16, patch_stride=20), "20"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, value):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=value):
        create_model(name, **kwargs)


def test_wrong_channel_count_is_a_clear_error():
    model = create_model("vil_t", dim=32, num_blocks=2, img_size=32)
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))


def test_checkpoint_round_trip_weights_only(tmp_path):
    """save_checkpoint writes tensors + a plain config; load_checkpoint (weights_only=True) rebuilds it exactly."""
    torch.manual_seed(0)
    model = create_model("vil_t", dim=32, num_blocks=3, num_classes=4, img_size=32, pooling="mean").eval()
    path = tmp_path / "vil.pt"
    save_checkpoint(model, path, epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["config"]["pooling"] == "mean"
    loaded = load_checkpoint(path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    bigger = load_checkpoint(path, img_size=64)  # fine-tune at another resolution: pos embed resized
    assert bigger.pos_embed.shape == (1, 4, 4, 32)
    assert torch.isfinite(bigger(torch.randn(1, 3, 64, 64))).all()
