"""The Vim mixer (ultra_vil/vim.py): the selective scan against its float64 step-by-step recurrence (outputs and
gradients of every input), numerics at extreme decays, and the direction structure of the bidirectional block
(forward causal in row-major order, backward in reverse order) on rectangular grids. CPU, tiny sizes, seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ultra_vil.vim import SSMBranch, VimBlock, VimMixer, selective_scan

BT, DI, N = 2, 6, 5  # DI != N: a transposed state cannot hide


def make_inputs(S: int, seed: int = 0, dtype=torch.float64, decay_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(BT, S, DI, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(BT, S, DI, generator=g, dtype=dtype) + 0.5) * decay_scale
    A = -torch.exp(torch.randn(DI, N, generator=g, dtype=dtype))  # a spread of decay rates, all negative
    B = torch.randn(BT, S, N, generator=g, dtype=dtype)
    C = torch.randn(BT, S, N, generator=g, dtype=dtype)
    D = torch.randn(DI, generator=g, dtype=dtype)
    return u, delta, A, B, C, D


def scan_with_grads(inputs, seed: int = 1, **kw):
    """y and the gradients of <y, W> for a fixed random W with respect to all six inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = selective_scan(*leaves, **kw)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
    (y * w).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def assert_rel_close(got, ref, rel, what):
    """max |got - ref| <= rel * max |ref|: a relative error that is not fooled by elements near zero."""
    err = (got.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel} x {scale:.3e}"


# S in {1, 7, 64, 65}; for each, chunk sizes that divide S and that do not (and one longer than S)
CASES = [(1, 1), (1, 4), (7, 7), (7, 4), (7, 16), (64, 16), (64, 64), (64, 24), (65, 13), (65, 16), (65, 64)]


@pytest.mark.parametrize("S,chunk", CASES)
def test_chunkwise_float32_matches_float64_recurrence(S, chunk):
    """fp32 chunkwise vs the float64 step-by-step recurrence: y and the gradients of u, delta, A, B, C, D within
    1e-4 relative."""
    inputs = make_inputs(S, seed=S + chunk)
    y_ref, g_ref = scan_with_grads(inputs, backend="recurrent")
    y, grads = scan_with_grads([t.float() for t in inputs], chunk_size=chunk)
    assert y.dtype == torch.float32
    assert_rel_close(y, y_ref, 1e-4, "y")
    for name, g, r in zip(("u", "delta", "A", "B", "C", "D"), grads, g_ref):
        assert_rel_close(g, r, 1e-4, f"grad {name}")


@pytest.mark.parametrize("S,chunk", [(7, 4), (65, 16), (64, 64)])
def test_chunkwise_float64_is_the_same_function(S, chunk):
    """In float64 the chunkwise form equals the recurrence to rounding (1e-10): it is an exact rearrangement."""
    inputs = make_inputs(S, seed=3)
    y_ref, g_ref = scan_with_grads(inputs, backend="recurrent")
    y, grads = scan_with_grads(inputs, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, g_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_extreme_decays_stay_finite_and_exact():
    """delta * A down to about -1e4 per step: exp of a cumulative sum taken across a chunk in the wrong direction
    would overflow; the chunkwise products of decays underflow to exact zeros and still match the reference."""
    inputs = make_inputs(65, seed=4, decay_scale=300.0)
    y_ref, g_ref = scan_with_grads(inputs, backend="recurrent")
    y, grads = scan_with_grads([t.float() for t in inputs], chunk_size=16)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    assert_rel_close(y, y_ref, 1e-4, "y")
    for name, g, r in zip(("u", "delta", "A", "B", "C", "D"), grads, g_ref):
        assert_rel_close(g, r, 1e-4, f"grad {name}")


def test_no_decay_is_a_running_sum():
    """delta -> 0 with delta * A = 0 exactly (A = 0): the state keeps everything, h_t = sum_s delta_s B_s u_s."""
    u, delta, A, B, C, _ = make_inputs(33, seed=5)
    A = torch.zeros_like(A)
    y = selective_scan(u, delta, A, B, C, chunk_size=8)
    h = ((delta * u)[..., None] * B[:, :, None, :]).cumsum(1)  # (BT, S, DI, N)
    torch.testing.assert_close(y, (h * C[:, :, None, :]).sum(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["chunkwise", "recurrent"])
def test_scan_is_causal(backend):
    """Changing the input at step t leaves every output before t bit-identical and changes the output at t."""
    u, delta, A, B, C, D = make_inputs(40, seed=6, dtype=torch.float32)
    t = 21
    y = selective_scan(u, delta, A, B, C, D, backend=backend, chunk_size=8)
    for name, idx in (("u", 0), ("delta", 1), ("B", 3)):
        changed = [u, delta, A, B, C, D]
        changed[idx] = changed[idx].clone()
        changed[idx][:, t] += 1.0
        y2 = selective_scan(*changed, backend=backend, chunk_size=8)
        assert torch.equal(y[:, :t], y2[:, :t]), name
        assert not torch.allclose(y[:, t], y2[:, t]), name


def test_half_precision_inputs():
    """bf16 inputs: the recurrence runs in float32 and y comes back in bf16, close to the float32 result."""
    inputs = make_inputs(20, seed=7, dtype=torch.float32)
    y32 = selective_scan(*inputs, chunk_size=8)
    y16 = selective_scan(*(t.bfloat16() for t in inputs), chunk_size=8)
    assert y16.dtype == torch.bfloat16
    assert_rel_close(y16.float(), y32.double(), 3e-2, "bf16 y")


def test_bad_scan_arguments():
    u, delta, A, B, C, _ = make_inputs(5, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(u, delta, A, B, C, backend="parallel")
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="shapes"):
        selective_scan(u, delta, A.T, B, C)


# ---------------------------------------------------------------------------------------------------------------
# the Vim mixer and block


def perturbation_effect(module, x, grid, t):
    """Which outputs change when token t of x changes: a bool mask over the S tokens."""
    with torch.no_grad():
        y = module(x, grid)
        x2 = x.clone()
        x2[:, t] += torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(9))
        y2 = module(x2, grid)
    return (y - y2).abs().amax(dim=(0, 2)) > 0  # (S,)


def silence(branch: SSMBranch):
    """Make a direction output zeros (a forward hook), so the mixer's output shows the other direction alone."""
    return branch.register_forward_hook(lambda module, args, out: torch.zeros_like(out))


@pytest.mark.parametrize("grid", [(3, 5), (5, 3), (1, 9)])
def test_directions_are_causal_in_row_major_and_reverse_order(grid):
    """On an H x W grid flattened row-major: with the backward branch silenced, perturbing token t changes exactly
    the outputs at t and after; with the forward branch silenced, exactly those at t and before; with both, all."""
    torch.manual_seed(0)
    H, W = grid
    S = H * W
    mixer = VimMixer(8, state_size=4, chunk_size=4).eval()
    x = torch.randn(2, S, 8)
    t = (H // 2) * W + W // 2  # the middle pixel, row-major index
    positions = torch.arange(S)
    handle = silence(mixer.bwd)
    assert torch.equal(perturbation_effect(mixer, x, grid, t), positions >= t)
    handle.remove()
    handle = silence(mixer.fwd)
    assert torch.equal(perturbation_effect(mixer, x, grid, t), positions <= t)
    handle.remove()
    assert perturbation_effect(mixer, x, grid, t).all()


def test_block_shapes_grads_and_grid_check():
    """A Vim block keeps (B, S, D) on a rectangular grid, every parameter gets a gradient, and a grid that does not
    hold S tokens is refused."""
    torch.manual_seed(0)
    block = VimBlock(8, drop_path=0.1, state_size=4, chunk_size=4)
    x = torch.randn(2, 12, 8)
    y = block(x, (3, 4))
    assert y.shape == x.shape
    y.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="does not hold 12 tokens"):
        block(x, (4, 4))


def test_mixer_is_the_two_directions_averaged_and_gated():
    """The mixer equals out_proj((fwd(x) + flip(bwd(flip(x)))) / 2 * SiLU(z)) with (x, z) = in_proj(tokens):
    a swapped flip or a missing gate would fail this."""
    torch.manual_seed(0)
    mixer = VimMixer(8, state_size=4, chunk_size=4)
    tokens = torch.randn(2, 10, 8)
    with torch.no_grad():
        xm, z = mixer.in_proj(tokens).chunk(2, -1)
        ref = mixer.out_proj((mixer.fwd(xm) + mixer.bwd(xm.flip(1)).flip(1)) / 2 * F.silu(z))
        torch.testing.assert_close(mixer(tokens, (2, 5)), ref)


def test_mamba_init_and_sizes():
    """Mamba's init: softplus(dt bias) in [1e-3, 0.1], A = -(1..N) per channel, D = 1; dt_rank = ceil(D / 16);
    the parameter count is 6.5 D^2 + O(D) for expansion 2 (in_proj 4D^2, out_proj 2D^2, two x/dt projections)."""
    torch.manual_seed(0)
    D, Nst = 64, 16
    mixer = VimMixer(D, state_size=Nst)
    for branch in (mixer.fwd, mixer.bwd):
        dt = F.softplus(branch.dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
        torch.testing.assert_close(-torch.exp(branch.A_log.detach()), -torch.arange(1, Nst + 1.0).repeat(2 * D, 1))
        assert torch.equal(branch.D, torch.ones(2 * D))
        assert branch.dt_rank == 4 and branch.x_proj.out_features == 4 + 2 * Nst
    DI, R = 2 * D, 4
    per_branch = DI * 4 + DI + DI * (R + 2 * Nst) + R * DI + DI + DI * Nst + DI  # conv, x_proj, dt_proj, A_log, D
    assert sum(p.numel() for p in mixer.parameters()) == D * 2 * DI + 2 * per_branch + DI * D


def test_bad_mixer_arguments():
    with pytest.raises(ValueError, match="state_size"):
        VimMixer(8, state_size=0)
    with pytest.raises(ValueError, match="backend"):
        VimMixer(8, backend="fused")


def test_classifier_preset_vim_t(tmp_path):
    """`vim_t`: Vim-Ti's shape (width 192, 24 blocks, patch 16, middle CLS token): 7,152,616 parameters (Vim-Ti:
    7M; ours has LayerNorm with bias where Vim has RMSNorm, and a ViL-style head). Mamba's A_log gets no weight
    decay. It trains with the classifier recipe of scripts/train_classifier.py (tiny width here) and its checkpoint
    rebuilds the same mixer."""
    from test_train_classifier import TINY, make_shapes, train_classifier

    from ultra_vil.classifier import create_model, load_checkpoint

    model = create_model("vim_t")
    assert sum(p.numel() for p in model.parameters()) == 7_152_616
    assert model.pooling == "middle_cls" and len(model.blocks.blocks) == 24
    assert type(model.blocks.blocks[0]) is VimBlock
    assert "blocks.blocks.3.mixer.bwd.A_log" in model.no_weight_decay()
    data = make_shapes(tmp_path / "shapes", n_train=4, n_val=2)
    argv = [*TINY, "--model", "vim_t", "--data", str(data), "--out-dir", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "8", "--mixup", "0", "--cutmix", "0"]  # fmt: skip
    assert train_classifier.main(argv) == 0
    back = load_checkpoint(tmp_path / "run" / "best.pt")
    assert back.config["mixer"] == "vim" and type(back.blocks.blocks[0]) is VimBlock
    with torch.no_grad():  # the CLS token sits in the middle of the sequence the scan reads
        assert back(torch.rand(1, 3, 32, 40)).shape == (1, 4)
