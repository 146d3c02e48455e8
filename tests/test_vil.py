"""Contracts of the ViL layer, block and block pair (ultra_vil/vil.py), on CPU.

The layer is checked against a sequence formulation written here from the paper's equations: explicit 3x3
neighbourhood sums for the conv, einsum for the block-diagonal projections, the float64 mLSTM recurrence of
test_mlstm, a hand-written group norm. Grids are rectangular (H != W) so that a transposed reshape cannot pass.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script

from helpers.mlstm_reference import reference as mlstm_reference
from ultra_vil.vil import TRAVERSALS, ViLBlock, ViLBlockPair, ViLLayer, ViLStack, block_directions

@pytest.fixture(autouse=True)
def float64_default():
    """Exactness is the point here: every test in this file runs in float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def randomize(module, seed=0):
    """Random values for every parameter, so zero-initialised gates and norms cannot hide a wiring error."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def conv3x3_depthwise(img, weight, bias):
    """(B, E, H, W) depthwise 3x3 'same' conv as an explicit sum over the 9 neighbours."""
    B, E, H, W = img.shape
    padded = F.pad(img, (1, 1, 1, 1))
    out = bias.view(1, E, 1, 1).expand(B, E, H, W).clone()
    for dy in range(3):
        for dx in range(3):
            out = out + weight[:, 0, dy, dx].view(1, E, 1, 1) * padded[:, :, dy : dy + H, dx : dx + W]
    return out


def headwise(x, lin):
    w = lin.weight  # (NB, bs, bs), rows = outputs
    xb = x.reshape(*x.shape[:-1], w.shape[0], w.shape[1])
    return torch.einsum("bsni,noi->bsno", xb, w).reshape(x.shape) + lin.bias


def sequence_layer(layer, x, grid):
    """ViLLayer for one direction in sequence form: tokens in traversal order on the traversal's grid."""
    (direction,) = layer.directions
    mixer = layer.mixers[0]
    B, S, D = x.shape
    H, W = grid
    # the traversal as an explicit permutation of row-major indices
    idx = torch.arange(S).reshape(H, W)
    if direction.startswith("col"):
        idx, (H, W) = idx.t(), (W, H)
    order = idx.reshape(-1)
    if direction.endswith("bwd"):
        order = order.flip(0)
    up = x @ layer.proj_up.weight.t() + layer.proj_up.bias
    E = up.shape[-1] // 2
    x_m, z = up[..., :E][:, order], up[..., E:]
    img = x_m.transpose(1, 2).reshape(B, E, H, W)
    x_c = F.silu(conv3x3_depthwise(img, mixer.conv.weight, mixer.conv.bias).reshape(B, E, S).transpose(1, 2))
    q, k, v = headwise(x_c, mixer.q_proj), headwise(x_c, mixer.k_proj), headwise(x_m, mixer.v_proj)
    qkv = torch.cat([q, k, v], -1)
    ig = (qkv @ mixer.igate.weight.t() + mixer.igate.bias).transpose(1, 2)
    fg = (qkv @ mixer.fgate.weight.t() + mixer.fgate.bias).transpose(1, 2)
    NH = mixer.num_heads
    heads = [t.reshape(B, S, NH, E // NH).transpose(1, 2) for t in (q, k, v)]
    h, _ = mlstm_reference(*heads, ig, fg)  # (B, NH, S, DH)
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    hn = ((h - mu) / torch.sqrt(var + 1e-5)).transpose(1, 2).reshape(B, S, E)
    hn = hn * (1 + mixer.outnorm.weight) + mixer.outnorm.bias
    h_seq = hn + mixer.learnable_skip * x_c
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(S)
    h_row = h_seq[:, inverse]  # back to row-major
    return (h_row * F.silu(z)) @ layer.proj_down.weight.t() + layer.proj_down.bias


@pytest.mark.parametrize("direction", ["row_fwd", "row_bwd", "col_fwd", "col_bwd"])
@pytest.mark.parametrize("grid", [(3, 5), (4, 2)])
def test_layer_equals_sequence_formulation(direction, grid):
    """The module equals the written-out sequence formulation on rectangular grids, every traversal."""
    layer = randomize(ViLLayer(8, (direction,)))
    x = torch.randn(2, grid[0] * grid[1], 8)
    torch.testing.assert_close(layer(x, grid), sequence_layer(layer, x, grid), rtol=1e-10, atol=1e-10)


def test_backward_direction_is_forward_on_reversed_sequence():
    """The bottom-right block is the top-left block applied to the reversed sequence (same parameters)."""
    fwd, bwd = randomize(ViLBlock(8, ("row_fwd",))), ViLBlock(8, ("row_bwd",))
    bwd.load_state_dict(fwd.state_dict())
    x, grid = torch.randn(2, 12, 8), (3, 4)
    # float64 round-off only: the block runs the cell and the conv reversed instead of flipping, which sums in
    # another order (bit-identical only while the code flipped the sequence)
    torch.testing.assert_close(bwd(x, grid), fwd(x.flip(1), grid).flip(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", ["row_fwd", "row_bwd"])
def test_block_is_causal_in_raster_order(direction):
    """Perturbing pixel p changes no output the traversal reaches before p's 3x3 neighbourhood.

    The forward block reads top-left to bottom-right: token t sees pixels up to t + W + 1 through the conv,
    so outputs t < p - W - 1 must stay bit-identical. The backward block mirrors this.
    """
    H, W = 5, 7
    torch.manual_seed(0)
    block = ViLBlock(8, (direction,))  # reference init: forget gates near 1, so the memory reaches far
    x = torch.randn(1, H * W, 8)
    p = 2 * W + 3
    x2 = x.clone()
    x2[:, p] += torch.randn(8)  # not a constant shift: the block's LayerNorm would remove that exactly
    y, y2 = block(x, (H, W)), block(x2, (H, W))
    changed = (y - y2).abs().amax(-1)[0] > 0  # (S,)
    if direction == "row_fwd":
        assert not changed[: p - W - 1].any()
        assert changed[p:].all()  # the memory carries p to every later token
    else:
        assert not changed[p + W + 2 :].any()
        assert changed[: p + 1].all()


def test_zero_output_projection_is_identity_on_rectangular_map():
    """With proj_down zeroed a block is exactly the identity (the residual path), on an H != W grid."""
    block = randomize(ViLBlock(8))
    with torch.no_grad():
        block.layer.proj_down.weight.zero_()
        block.layer.proj_down.bias.zero_()
    x = torch.randn(2, 15, 8)
    assert torch.equal(block(x, (3, 5)), x)


def test_same_module_runs_on_two_grids():
    """One module, two grid sizes (and a transposed one): each run equals its sequence formulation."""
    pair = randomize(ViLBlockPair(8))
    for grid in [(3, 5), (6, 4), (5, 3)]:
        x = torch.randn(1, grid[0] * grid[1], 8)
        out = pair(x, grid)
        fwd = pair.rowwise_from_top_left
        ref1 = x + sequence_layer(fwd.layer, fwd.norm(x), grid)
        bwd = pair.rowwise_from_bot_right
        ref2 = ref1 + sequence_layer(bwd.layer, bwd.norm(ref1), grid)
        torch.testing.assert_close(out, ref2, rtol=1e-10, atol=1e-10)


def test_grid_must_match_tokens():
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        ViLLayer(8)(torch.randn(1, 10, 8), (3, 4))


@pytest.mark.parametrize("traversal", list(TRAVERSALS))
def test_every_traversal_trains(traversal):
    """Each traversal design runs forward and backward on a rectangular map and every parameter gets a gradient."""
    stack = ViLStack(8, 4, traversal, drop_path=0.1)
    x = torch.randn(2, 12, 8, requires_grad=True)
    stack(x, (3, 4)).square().sum().backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad is not None


def test_shared_traversals_have_fewer_parameters():
    own = sum(p.numel() for p in ViLStack(8, 2, "bidirectional").parameters())
    shared = sum(p.numel() for p in ViLStack(8, 2, "bidirectional_shared").parameters())
    single = sum(p.numel() for p in ViLStack(8, 2, "alternating").parameters())
    assert single == shared < own


def test_alternating_directions():
    """Even blocks read from the top-left, odd blocks from the bottom-right; odd block counts are allowed."""
    assert [block_directions("alternating", b) for b in range(3)] == [("row_fwd",), ("row_bwd",), ("row_fwd",)]
    stack = ViLStack(8, 3)
    assert [blk.layer.directions for blk in stack.blocks] == [("row_fwd",), ("row_bwd",), ("row_fwd",)]
    pair_params = sum(p.numel() for p in ViLBlockPair(8).parameters())
    assert sum(p.numel() for p in ViLStack(8, 2).parameters()) == pair_params


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = randomize(ViLStack(8, 2))
    ckpt = ViLStack(8, 2, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 8)
    for m in (plain, ckpt):
        m(x, (3, 4)).square().sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_reference_initialisation():
    """VisionLSTM2 init: forget bias linspace(3, 6), zero gate weights, norms at 1 + 0, skip 1."""
    torch.set_default_dtype(torch.float32)
    layer = ViLLayer(192)
    mixer = layer.mixers[0]
    torch.testing.assert_close(mixer.fgate.bias, torch.linspace(3.0, 6.0, 4))
    assert mixer.fgate.weight.abs().sum() == 0 and mixer.igate.weight.abs().sum() == 0
    assert torch.equal(mixer.learnable_skip, torch.ones(384))
    assert abs(layer.proj_up.weight.std().item() - (2 / (5 * 192)) ** 0.5) < 0.005  # small_init
    assert abs(layer.proj_down.weight.std().item() - 2 / 192**0.5) < 0.01  # wang_init, num_blocks = 1


FIXTURE = Path(__file__).parent / "fixtures" / "vil_fixture.json"
FIXTURE_MODELS = {  # name -> constructor, as in tests/fixtures/make_vil_fixture.py
    "pair": lambda: ViLBlockPair(16),
    "cls": lambda: ViLStack(8, 2, "alternating"),
    "quad": lambda: ViLStack(8, 1, "quaddirectional"),
}


@pytest.fixture(scope="module")
def rebuilt_fixture_models():
    """make_vil_fixture.build(): the fixture's state dicts and inputs, regenerated (no weights are committed)."""
    return load_script("make_vil_fixture", "tests/fixtures").build()


@pytest.mark.parametrize("name", list(FIXTURE_MODELS))
def test_checkpoint_of_commit_3c73528_gives_identical_outputs(name, rebuilt_fixture_models):
    """State dicts as the code of commit 3c73528 saved them load strictly and give its float64 outputs.

    The weights are regenerated (seeded), and the fixture file pins them to the old code: the names in order,
    every tensor's shape and sum, the inputs' sum, and the old code's outputs. The fixture covers row_fwd and
    row_bwd (the pair), the middle-CLS path and the column traversals; its parameters are all perturbed from the
    init, so gates, skip and norms all take part.
    """
    saved = json.loads(FIXTURE.read_text())[name]
    rebuilt = rebuilt_fixture_models[name]
    state = rebuilt["state_dict"]
    model = FIXTURE_MODELS[name]().double().eval()
    assert list(model.state_dict()) == saved["names"]  # the names and their order are the contract
    assert [list(v.shape) for v in state.values()] == saved["shapes"]
    sums = torch.tensor([float(v.double().sum()) for v in state.values()], dtype=torch.float64)
    torch.testing.assert_close(sums, torch.tensor([float.fromhex(s) for s in saved["sums"]], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12,
                               msg="the regenerated weights differ from 3c73528's (init or perturbation changed)")
    assert abs(float(rebuilt["x"].sum()) - float.fromhex(saved["x_sum"])) < 1e-12
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        args = (tuple(saved["grid"]),) if saved["cls_index"] is None else (tuple(saved["grid"]), saved["cls_index"])
        y = model(rebuilt["x"], *args)
    expected = torch.tensor([float.fromhex(v) for v in saved["y"]], dtype=torch.float64).reshape(saved["y_shape"])
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_output_gate_has_autograd_gradients(bias):
    """The output gate's hand-written backward (it saves less) equals autograd through the plain ops."""
    from ultra_vil.layers import MultiHeadNorm
    from ultra_vil.vil import _NormSkipGate, norm_skip

    B, NH, S, DH = 2, 3, 5, 4
    norm = randomize(MultiHeadNorm(NH * DH, NH, bias))
    skip = torch.randn(NH * DH, requires_grad=True)
    h = torch.randn(B, NH, S, DH, requires_grad=True)
    x_c, z = (torch.randn(B, S, NH * DH, requires_grad=True) for _ in range(2))
    inputs = [h, x_c, z, norm.weight, skip] + ([norm.bias] if bias else [])
    g = torch.randn(B, S, NH * DH)
    fused = _NormSkipGate.apply(h, x_c, z, norm.weight, norm.bias, skip, norm.eps)
    plain = norm_skip(h, x_c, norm, skip) * F.silu(z)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, inputs, g), torch.autograd.grad(plain, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("direction", ["row_fwd", "row_bwd"])
def test_layer_equals_sequence_formulation_when_blocks_straddle_heads(direction):
    """Head dim 6 with q/k/v blocks of 4 (YOLO widths allow it): a block may span two heads."""
    layer = randomize(ViLLayer(12, (direction,)))  # E = 24, 4 heads of 6
    x, grid = torch.randn(2, 15, 12), (3, 5)
    torch.testing.assert_close(layer(x, grid), sequence_layer(layer, x, grid), rtol=1e-10, atol=1e-10)
