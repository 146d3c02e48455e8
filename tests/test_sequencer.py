"""Sequencer's BiLSTM2D and Sequencer2D block (ultra_vil/sequencer.py): row / column structure on rectangular
grids (what one block can and cannot see), the token layout against per-row and per-column LSTM runs, sizes,
gradients. CPU, tiny sizes, seconds.
"""

from __future__ import annotations

import pytest
import torch

from ultra_vil.sequencer import BiLSTM2D, SequencerBlock

D = 8


def changed_pixels(module, x, grid, pixel):
    """(H, W) bool map of the outputs that change when the input token at `pixel` (row, col) changes."""
    H, W = grid
    t = pixel[0] * W + pixel[1]
    with torch.no_grad():
        y = module(x, grid)
        x2 = x.clone()
        x2[:, t] += torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(1))
        y2 = module(x2, grid)
    return ((y - y2).abs().amax(dim=(0, 2)) > 0).reshape(H, W)


def cross(grid, pixel):
    H, W = grid
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return (rows == pixel[0]) | (cols == pixel[1])


GRIDS_AND_PIXELS = [((4, 5), (1, 2)), ((5, 3), (4, 0)), ((3, 7), (0, 6)), ((1, 6), (0, 3)), ((6, 1), (2, 0))]


@pytest.mark.parametrize("grid,pixel", GRIDS_AND_PIXELS)
def test_one_block_reaches_exactly_the_row_and_column(grid, pixel):
    """Perturbing one pixel changes the output of one Sequencer block at every pixel of its row and its column
    (both sides: the LSTMs are bidirectional) and nowhere else: norms and channel MLP act per token, so the block
    as a whole, not only its BiLSTM2D, keeps the cross. The bare BiLSTM2D has the same footprint."""
    torch.manual_seed(0)
    x = torch.randn(2, grid[0] * grid[1], D)
    block = SequencerBlock(D, hidden_size=3).eval()
    assert torch.equal(changed_pixels(block, x, grid, pixel), cross(grid, pixel))
    assert torch.equal(changed_pixels(block.mixer, x, grid, pixel), cross(grid, pixel))


def test_two_blocks_reach_every_pixel():
    """Row then column: after two blocks every pixel depends on every other."""
    torch.manual_seed(0)
    grid = (4, 5)
    blocks = [SequencerBlock(D, hidden_size=3).eval() for _ in range(2)]

    def two(x, g):
        return blocks[1](blocks[0](x, g), g)

    assert changed_pixels(two, torch.randn(1, 20, D), grid, (1, 2)).all()


def test_layout_matches_lstms_run_on_single_rows_and_columns():
    """Output at (i, j) = fc(cat(rnn_v on column j, rnn_h on row i)) with the LSTMs run on that one column / row:
    a swapped H and W, or a reshape that mixes rows, fails this on a 3 x 5 grid."""
    torch.manual_seed(0)
    H, W = 3, 5
    mixer = BiLSTM2D(D, hidden_size=3)
    x = torch.randn(2, H * W, D)
    img = x.reshape(2, H, W, D)
    with torch.no_grad():
        y = mixer(x, (H, W)).reshape(2, H, W, D)
        for i, j in ((0, 0), (1, 3), (2, 4)):
            v, _ = mixer.rnn_v(img[:, :, j])  # (2, H, 2h) column j, top to bottom
            r, _ = mixer.rnn_h(img[:, i])  # (2, W, 2h) row i, left to right
            torch.testing.assert_close(y[:, i, j], mixer.fc(torch.cat([v[:, i], r[:, j]], -1)))


def test_sizes_gradients_and_grid_check():
    """Default hidden size D / 4 and MLP ratio 3: 12 D^2 + O(D) parameters (the size of a ViL block pair); every
    parameter gets a gradient; a grid that does not hold S tokens is refused."""
    dim = 32
    block = SequencerBlock(dim, drop_path=0.1)
    h = dim // 4
    lstm = 2 * (4 * h * dim + 4 * h * h + 8 * h)  # two directions: W_ih, W_hh, b_ih, b_hh
    expected = 2 * lstm + (4 * h * dim + dim) + (dim * 3 * dim + 3 * dim) + (3 * dim * dim + dim) + 4 * dim
    assert block.mixer.hidden_size == h
    assert sum(p.numel() for p in block.parameters()) == expected
    x = torch.randn(2, 12, dim)
    y = block(x, (3, 4))
    assert y.shape == x.shape
    y.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="does not hold 12 tokens"):
        block(x, (2, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        BiLSTM2D(3)  # 3 // 4 = 0 hidden units
    with pytest.raises(ValueError, match="hidden_size"):
        BiLSTM2D(8, hidden_size=0)


def test_classifier_preset_sequencer_t(tmp_path):
    """`sequencer_t`: ViL-T width (192), patch 16, 12 Sequencer2D blocks (one per ViL block pair), mean pooling:
    5,726,248 parameters (ViL-T: 6,390,760; Sequencer2D-S: 28M, hierarchical at widths 192/384 with 18 blocks).
    It trains with the classifier recipe of scripts/train_classifier.py (tiny width here) and its checkpoint
    rebuilds the same mixer; a CLS token is refused (a 2D mixer has no place for it)."""
    from test_train_classifier import TINY, make_shapes, train_classifier

    from ultra_vil.classifier import create_model, load_checkpoint

    model = create_model("sequencer_t")
    assert sum(p.numel() for p in model.parameters()) == 5_726_248
    assert model.pooling == "mean" and len(model.blocks.blocks) == 12
    assert type(model.blocks.blocks[0]) is SequencerBlock and model.blocks.blocks[0].mixer.hidden_size == 48
    with pytest.raises(ValueError, match="CLS"):
        create_model("sequencer_t", pooling="middle_cls")
    data = make_shapes(tmp_path / "shapes", n_train=4, n_val=2)
    argv = [*TINY, "--model", "sequencer_t", "--data", str(data), "--out-dir", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "8", "--mixup", "0", "--cutmix", "0"]  # fmt: skip
    assert train_classifier.main(argv) == 0
    back = load_checkpoint(tmp_path / "run" / "best.pt")
    assert back.config["mixer"] == "sequencer" and type(back.blocks.blocks[0]) is SequencerBlock
