"""The ViL classifier (ultra_vil/classifier.py): reference sizes, every preset trains, bad input, checkpoints."""

import pytest
import torch

from ultra_vil import create_model, load_checkpoint, save_checkpoint
from ultra_vil.classifier import POOLINGS, VARIANTS, VisionLSTM

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


def test_presets_name_their_released_weights():
    """The preset registry knows each released file, so a file of another preset is refused by name."""
    from ultra_vil.presets import PRESETS, release_of

    assert [w.file for w in PRESETS["vil_t"].weights] == ["vil2_tiny16_e800_in1k.th", "vil2_tiny16_e400_in1k.th"]
    preset, release = release_of("/somewhere/vil2_small16_e400_in1k.th")
    assert preset.name == "vil_s" and release.top1 == 81.5 and release.url.endswith("/vil2_small16_e400_in1k.th")
    assert release_of("my_finetune.pt") is None
    with pytest.raises(ValueError, match="is the released vil_b: create_model\\('vil_b'"):
        create_model("vil_t", pretrained="vil2_base16_e400_in1k.th")  # refused before the file is read


def test_config_dataclass_round_trips_the_checkpoint_dict():
    """VisionLSTMConfig reads a checkpoint's plain config dict and writes the dict a model records; a model rebuilt
    from a checkpoint's dict keeps that dict as it was (older keys and the preset name included)."""
    from ultra_vil.classifier import VisionLSTMConfig, build_from_config

    for name, kw in [("vil_t", {}), ("vim_t", {}), ("vil_t", {"backend": "chunkwise", "chunk_size": 32})]:
        model = create_model(name, num_classes=3, img_size=32, **kw)
        config = VisionLSTMConfig.from_dict(model.config)
        assert config.name == name and VisionLSTMConfig.from_dict(config.to_dict()) == config
        assert {**VisionLSTMConfig.defaults(), **model.config} == {**VisionLSTMConfig.defaults(), **config.to_dict()}
        rebuilt = VisionLSTM(**config.kwargs())
        assert rebuilt.config == {k: v for k, v in config.to_dict().items() if k != "name"}
        assert build_from_config(model.config).config == model.config
        assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert "mixer" not in VisionLSTMConfig().to_dict() and VisionLSTMConfig(mixer="vim").to_dict()["mixer"] == "vim"
    assert VisionLSTMConfig.from_dict({"img_size": [32, 48]}).img_size == (32, 48)


# ------------------------------------------------------------------------ input sizes: refused, never cropped
def _tiny(**kw):
    return create_model("vil_t", dim=32, num_blocks=2, num_classes=3, img_size=64, patch_size=16, **kw).eval()


def test_input_that_does_not_tile_is_refused():
    """64 x 100 with patch 16: a bare patch conv would drop the last 4 columns and give the 64 x 96 crop's output
    without a word; a ValueError names the size and the patch."""
    model = _tiny()
    with pytest.raises(ValueError, match=r"64 x 100.*patches of 16"):
        model(torch.randn(1, 3, 64, 100))
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)  # a size that tiles still runs (another grid)


def test_input_smaller_than_a_patch_is_refused_clearly():
    """8 x 8 with patch 16: a ValueError naming the size and the patch, not the conv's RuntimeError ("Kernel size
    can't be greater than actual input size")."""
    with pytest.raises(ValueError, match=r"8 x 8.*patches of 16"):
        _tiny()(torch.randn(1, 3, 8, 8))


def test_overlapping_patches_check_the_stride():
    model = create_model("vil_t", dim=32, num_blocks=2, num_classes=3, img_size=32, patch_size=8, patch_stride=4)
    model.eval()
    assert model(torch.randn(1, 3, 36, 32)).shape == (1, 3)  # 36 = 8 + 7 * 4
    with pytest.raises(ValueError, match="stride 4"):
        model(torch.randn(1, 3, 34, 32))


# ------------------------------------------------------------------------------------- middle_cls on odd grids
@pytest.mark.parametrize("side", [112, 96])  # grids 7 x 7 (odd S = 49) and 6 x 6 (even S = 36)
def test_middle_cls_pools_the_cls_token(side):
    """The trap on a 7 x 7 grid: writing the CLS token at 49 // 2 = 24 and reading it at 50 // 2 = 25 (a patch
    token). The index the blocks are told (their cls_index argument) is where the CLS token is, and the pooled
    vector must be that token's output."""
    model = _tiny(pooling="middle_cls")
    seen = {}
    model.blocks.register_forward_pre_hook(lambda mod, args: seen.update(cls_index=args[2]))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, S + 1, D)
        pooled = model.pool(tokens)
    grid = side // 16
    assert tokens.shape[1] == grid * grid + 1
    assert seen["cls_index"] == grid * grid // 2
    torch.testing.assert_close(pooled, tokens[:, seen["cls_index"]], rtol=0, atol=0)
