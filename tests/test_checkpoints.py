"""ultra_vil/checkpoints.py: the released ViL weight formats load by name, and every unusable file is a clear error.

The two official formats are synthesised here from the names and shapes of research/official-checkpoints.md (ViL-T,
random values; nothing is downloaded): the VisionLSTM2 state dict that torch.hub's model holds, and the raw
`{"state_dict": ...}` of the released .th files, whose training-code names the authors' hub entry renames.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from helpers.vil2 import CLASSES, DIM, E, PAIRS, SIDES, VIL2_BLOCK, vil2_state
from ultra_vil import checkpoints
from ultra_vil.checkpoints import CheckpointError
from ultra_vil.classifier import VisionLSTM, create_model, load_checkpoint, save_checkpoint
from ultra_vil.errors import UserError

def raw_state(vil2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training-code names of the released .th files: the hub entry's renaming rules run backwards."""
    out = {}
    for k, v in vil2.items():
        parts = k.split(".")
        if parts[0] == "blocks":
            i = 2 * int(parts[1]) + SIDES.index(parts[2])
            rest = ".".join(parts[3:])
            rest = rest.replace("layer.conv.", "layer.conv1d.").replace("layer.", "xlstm.")
            rest = "xlstm_norm." + rest[len("norm."):] if rest.startswith("norm.") else rest
            k = f"blocks.{i}.{rest}"
        elif k.startswith("norm."):
            k = "post_blocks_norm." + parts[1]
        elif k.startswith("legacy_norm."):
            k = "head.0." + parts[1]
        elif k.startswith("head."):
            k = "head.1." + parts[1]
        out[k] = v
    return out


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    vil2 = vil2_state()
    assert len(vil2) == 513  # the count the shared note gives for ViL-T
    torch.save(vil2, tmp / "vil2.pth")
    torch.save({"state_dict": raw_state(vil2)}, tmp / "vil2_tiny16_e800_in1k.th")
    return dict(vil2=vil2, hub=tmp / "vil2.pth", raw=tmp / "vil2_tiny16_e800_in1k.th", tmp=tmp)


def test_both_official_formats_load_with_every_tensor_used_and_give_identical_models(official_files):
    """VisionLSTM2 names and raw names fill every parameter of create_model('vil_t', legacy_norm=True), and the two
    models are the same tensor for tensor; tensors land where they mean the same thing (spot checks, both sides of
    a pair, the mLSTM cell, the 1 + w norms, the legacy norm)."""
    vil2 = official_files["vil2"]
    a = create_model("vil_t", legacy_norm=True, pretrained=official_files["hub"])
    b = create_model("vil_t", legacy_norm=True, pretrained=official_files["raw"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) == 513
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    blocks = a.blocks.blocks
    assert torch.equal(a.patch_embed.weight, vil2["patch_embed.proj.weight"])
    assert torch.equal(a.pos_embed, vil2["pos_embed.embed"])
    assert torch.equal(blocks[0].layer.mixers[0].q_proj.weight, vil2["blocks.0.rowwise_from_top_left.layer.q_proj.weight"])
    assert torch.equal(blocks[7].layer.mixers[0].fgate.bias,
                       vil2["blocks.3.rowwise_from_bot_right.layer.mlstm_cell.fgate.bias"])  # fmt: skip
    assert torch.equal(blocks[22].layer.mixers[0].learnable_skip, vil2["blocks.11.rowwise_from_top_left.layer.learnable_skip"])
    assert torch.equal(blocks[23].norm.weight, vil2["blocks.11.rowwise_from_bot_right.norm.weight"])
    assert torch.equal(blocks[5].layer.mixers[0].outnorm.bias,
                       vil2["blocks.2.rowwise_from_bot_right.layer.mlstm_cell.outnorm.bias"])  # fmt: skip
    assert torch.equal(a.legacy_norm.weight, vil2["legacy_norm.weight"]) and torch.equal(a.head.bias, vil2["head.bias"])
    # the same q/k/v/conv bias shape (E,) everywhere: a loader by shape or order would have mixed them up
    assert not torch.equal(blocks[0].layer.mixers[0].q_proj.bias, blocks[0].layer.mixers[0].k_proj.bias)


def test_legacy_norm_runs_after_pooling(official_files):
    """legacy_norm=True applies a plain LayerNorm(2 * dim) to the pooled features before the head."""
    model = create_model("vil_t", legacy_norm=True, pretrained=official_files["hub"], img_size=32).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = model.pool(model.forward_features(x))
        expected = model.head(torch.nn.functional.layer_norm(pooled, (2 * DIM,), model.legacy_norm.weight,
                                                             model.legacy_norm.bias))  # fmt: skip
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-6)
        without = model.head(pooled)
    assert not torch.allclose(model(x), without)


def test_position_embedding_resized_and_head_dropped_for_other_classes(official_files, caplog):
    """At 160 px the 14 x 14 embedding is resized to 10 x 10 (bicubic, as at run time); 10 classes drop the head
    with a message and keep everything else."""
    with caplog.at_level(logging.INFO, logger="ultra_vil.checkpoints"):
        model = create_model("vil_t", num_classes=10, img_size=160, legacy_norm=True, pretrained=official_files["raw"])
    assert "head re-initialised" in caplog.text and str(official_files["raw"]) in caplog.text
    expected = checkpoints.interpolate_pos_embed(official_files["vil2"]["pos_embed.embed"], (10, 10))
    assert model.pos_embed.shape == (1, 10, 10, DIM) and torch.equal(model.pos_embed.data, expected)
    assert model.head.weight.shape == (10, E)
    assert torch.equal(model.norm.weight, official_files["vil2"]["norm.weight"])


def test_renamed_or_missing_tensor_fails_naming_it(official_files):
    """One tensor renamed: the error names the stray name and the parameter left empty; one missing: names it.
    Both are UserErrors that name the file."""
    tmp, vil2 = official_files["tmp"], dict(official_files["vil2"])
    renamed = dict(vil2)
    renamed["blocks.4.rowwise_from_top_left.layer.k_projection.weight"] = renamed.pop(
        "blocks.4.rowwise_from_top_left.layer.k_proj.weight")  # fmt: skip
    torch.save(renamed, tmp / "renamed.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("vil_t", legacy_norm=True, pretrained=tmp / "renamed.pth")
    msg = str(info.value)
    assert str(tmp / "renamed.pth") in msg
    assert "blocks.blocks.8.layer.k_projection.weight" in msg  # the stray tensor, after mapping
    assert "blocks.blocks.8.layer.mixers.0.k_proj.weight" in msg  # the parameter it should have filled
    assert isinstance(info.value, UserError)

    raw = raw_state(vil2)
    del raw["blocks.13.xlstm.mlstm_cell.igate.bias"]
    torch.save({"state_dict": raw}, tmp / "missing.th")
    with pytest.raises(CheckpointError, match=r"1 parameter\(s\) missing.*blocks\.blocks\.13\.layer\.mixers\.0\.igate\.bias"):
        create_model("vil_t", legacy_norm=True, pretrained=tmp / "missing.th")


def test_legacy_norm_mismatch_says_what_to_set(official_files):
    """A released file into a model without legacy_norm: the two legacy_norm tensors are unmatched, with the hint."""
    with pytest.raises(CheckpointError, match=r"legacy_norm=True.*legacy_norm\.bias, legacy_norm\.weight"):
        create_model("vil_t", pretrained=official_files["raw"])


def test_unusable_files_are_errors_naming_the_file(tmp_path):
    """Missing, empty, truncated, foreign (pickled Python objects) and wrong-content files: one CheckpointError each,
    with the path in the message."""
    model = VisionLSTM(dim=16, num_blocks=2, img_size=32, patch_size=16, num_classes=2)
    good = tmp_path / "good.pt"
    save_checkpoint(model, good)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "foreign.pt")  # a pickled module, as Ultralytics saves
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    # foreign.pt: refused by weights_only loading, or - once a process has allow-listed torch.nn classes for
    # torch.load, as the Ultralytics safe-load registration of other tests does - by the format check
    cases = {"absent.pt": ("no such file",), "empty.pt": ("0 bytes",), "cut.pt": ("truncated",),
             "foreign.pt": ("weights_only", "not a ViL checkpoint"), "other.pt": ("not a ViL checkpoint",)}  # fmt: skip
    for name, causes in cases.items():
        with pytest.raises(CheckpointError) as info:
            create_model("vil_t", dim=16, num_blocks=2, img_size=32, num_classes=2, pretrained=tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and any(c in message for c in causes), (name, message)


def test_visionlstm_built_directly_records_its_config_and_round_trips(tmp_path):
    """save_checkpoint works on VisionLSTM(...) (its config is recorded at construction); load_checkpoint rebuilds
    it, resizes the position embedding for another img_size, and the loader serves create_model(pretrained=...)."""
    torch.manual_seed(0)
    model = VisionLSTM(dim=16, num_blocks=3, img_size=32, patch_size=16, num_classes=3, pooling="mean").eval()
    path = tmp_path / "direct.pt"
    save_checkpoint(model, path, epoch=1)
    again = load_checkpoint(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    bigger = load_checkpoint(path, img_size=64)
    assert bigger.pos_embed.shape == (1, 4, 4, 16)
    via_create = create_model("vil_t", dim=16, num_blocks=3, img_size=32, num_classes=3, pooling="mean",
                              pretrained=path).eval()  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model(x), via_create(x))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    """A writer that fails half-way leaves the previous file intact and no temp file behind."""
    target = tmp_path / "last.pt"
    checkpoints.atomic_save({"a": torch.ones(3)}, target)
    before = target.read_bytes()

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.atomic_write(target, broken)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    checkpoints.atomic_write(tmp_path / "rows.csv", "a,b\n")
    assert (tmp_path / "rows.csv").read_text() == "a,b\n"


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    """Text and random bytes named .pt: before, the message ended in the unpickler's raw error (`...: 101`, the
    KeyError of a text file) or blamed "Python objects besides tensors" for bytes that are no pickle at all. Now it
    says the file is not a PyTorch checkpoint, with torch.load's error (its type first) in brackets."""
    text = tmp_path / "notes.pt"
    text.write_text("hello, these are my notes, not weights\n")  # the unpickler: KeyError 101 ("e")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(3)).tolist()))
    assert noise.read_bytes()[:2] != b"PK"
    for path in (text, noise):
        with pytest.raises(CheckpointError) as info:
            create_model("vil_t", dim=16, num_blocks=2, img_size=32, num_classes=2, pretrained=path)
        message = str(info.value)
        assert message.startswith(f"{path}: is not a PyTorch checkpoint ("), message
        assert "torch.load: " in message and not message.endswith(": 101"), message
        assert "Python objects" not in message, message
