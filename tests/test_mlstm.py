"""Numerical contracts of the mLSTM cell (ultra_vil.mlstm), all on CPU.

The reference below is written independently of the package: a float64 loop over the stabilised recurrence
of xLSTM (Sec. 2.3). Every backend must reproduce it, forward and backward, to the precision of its dtype.
"""

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ultra_vil.bench.memory import cpu_memory_mb
from helpers.mlstm_reference import reference
from ultra_vil.mlstm import BACKENDS, PARALLEL_MAX_SEQ, mlstm, select_backend

mlstm_module = importlib.import_module("ultra_vil.mlstm")  # the package (ultra_vil.mlstm is also the function)
chunkwise_module = importlib.import_module("ultra_vil.mlstm.chunkwise")
dispatch_module = importlib.import_module("ultra_vil.mlstm.dispatch")
B, NH, DK, DV = 2, 3, 8, 6  # NH != DK != DV: transposes cannot hide


def make_inputs(S, dtype=torch.float64, seed=0, gate_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, NH, S, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g, dtype=torch.float64)
    i = gate_scale * torch.randn(B, NH, S, generator=g, dtype=torch.float64)
    f = gate_scale * torch.randn(B, NH, S, generator=g, dtype=torch.float64) + 2.0
    return [t.to(dtype) for t in (q, k, v, i, f)]


def rel_err(a, b):
    """||a - b|| / ||b|| over the whole tensor; the absolute error where b is exactly zero (e.g. the forget-gate
    gradient at S = 1, which meets only the empty state)."""
    diff, scale = (a.double() - b.double()).norm().item(), b.double().norm().item()
    return diff / scale if scale > 0 else diff


TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}
CASES = [  # (backend, chunk_size)
    ("parallel", 64),
    ("chunkwise", 64),
    ("chunkwise", 16),  # divides 64 and 400; 65 runs as 5 chunks of 13 (fit_chunk), 7 as one chunk
    ("chunkwise", 7),  # 65 and 400 as chunks of 5, 64 of 4
    ("recurrent", 64),
    ("auto", 64),
]


def check_against_reference(S, dtype, backend, chunk_size, gate_scale=3.0, seed=0):
    inputs = make_inputs(S, dtype, seed, gate_scale)
    leaves = [t.clone().requires_grad_() for t in inputs]
    h = mlstm(*leaves, backend=backend, chunk_size=chunk_size)
    assert h.dtype == dtype and h.shape == (B, NH, S, DV)
    assert torch.isfinite(h).all()
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    h.backward(grad_out)

    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]  # the dtype-rounded inputs, in float64
    h_ref, _ = reference(*ref_leaves)
    h_ref.backward(grad_out.double())
    tol = TOL[dtype]
    assert rel_err(h, h_ref) < tol, f"forward, {backend}"
    for name, a, b in zip("q k v igate fgate".split(), leaves, ref_leaves):
        assert torch.isfinite(a.grad).all(), f"grad of {name} not finite"
        assert rel_err(a.grad, b.grad) < tol, f"grad of {name}, {backend}, chunk {chunk_size}: {rel_err(a.grad, b.grad)}"


@pytest.mark.parametrize("backend,chunk_size", CASES)
@pytest.mark.parametrize("S", [1, 7, 64, 65, 400])
def test_matches_float64_reference(backend, chunk_size, S):
    """Forward and all five gradients equal the float64 recurrence to 1e-10 (relative, whole tensor)."""
    if backend == "recurrent" and S == 400:
        S = 130  # the Python step loop is slow in backward; 130 still spans several 64-chunks
    check_against_reference(S, torch.float64, backend, chunk_size)


def test_fit_chunk_avoids_padding_where_a_divisor_exists():
    assert [mlstm_module.fit_chunk(S, 64) for S in (7, 64, 65, 100, 196, 400, 784, 1600, 3600, 4096)] == [
        7, 64, 64, 50, 49, 50, 56, 64, 60, 64]  # fmt: skip
    fit = mlstm_module.fit_chunk
    assert (fit(65, 16), fit(7, 6), fit(401, 64)) == (13, 6, 64)


@pytest.mark.parametrize("S,chunk_size", [(7, 6), (65, 64), (131, 64), (67, 16)])
@pytest.mark.parametrize("reverse", [False, True])
def test_padded_tail_matches_reference(S, chunk_size, reverse):
    """S with no divisor in [chunk/2, chunk]: the tail chunk is padded (steps that neither write nor forget);
    forward, the five gradients and the final state equal the float64 recurrence (reverse: of the flipped input)."""
    assert mlstm_module.fit_chunk(S, chunk_size) == chunk_size and S % chunk_size  # the padded path
    inputs = make_inputs(S, torch.float64, seed=S)
    leaves = [t.clone().requires_grad_() for t in inputs]
    h, (C, n, m) = mlstm(*leaves, backend="chunkwise", chunk_size=chunk_size, return_state=True, reverse=reverse)
    flip = (lambda t: t.flip(2)) if reverse else (lambda t: t)
    ref_leaves = [flip(t.detach()).requires_grad_() for t in inputs]
    h_ref, (C_r, n_r, m_r) = reference(*ref_leaves)
    h_ref = flip(h_ref)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h.backward(g)
    h_ref.backward(g)
    assert rel_err(h, h_ref) < 1e-10
    scale, scale_r = torch.exp(m)[..., None], torch.exp(m_r)[..., None]  # C and n are stored divided by exp(m)
    assert rel_err(C * scale[..., None], C_r * scale_r[..., None]) < 1e-10
    assert rel_err(n * scale, n_r * scale_r) < 1e-10
    for a, b in zip(leaves, ref_leaves):
        assert rel_err(a.grad, flip(b.grad)) < 1e-10


@pytest.mark.parametrize("backend,chunk_size", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(backend, chunk_size, dtype):
    """float32 under 1e-4 and bf16 under 2e-2 of a float64 reference computed from the same rounded inputs."""
    check_against_reference(65, dtype, backend, chunk_size, seed=3)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_extreme_gates_stay_finite_and_exact(backend):
    """Gate pre-activations up to +-30: exp(30) would swamp float32 without the stabiliser; outputs stay exact."""
    check_against_reference(65, torch.float32, backend, 16, gate_scale=10.0, seed=5)
    q, k, v, i, f = make_inputs(65, torch.float32)
    i = torch.where(torch.arange(65) % 2 == 0, 30.0, -30.0).expand_as(i).contiguous()
    f = torch.where(torch.arange(65) % 3 == 0, -30.0, 30.0).expand_as(f).contiguous()
    h = mlstm(q, k, v, i, f, backend=backend, chunk_size=16)
    assert torch.isfinite(h).all()
    assert rel_err(h, reference(q, k, v, i, f)[0]) < 1e-4


def test_float16_inputs():
    """fp16 in, fp16 out, float32 inside."""
    q, k, v, i, f = make_inputs(65, torch.float16)
    for backend in ("parallel", "chunkwise"):
        h = mlstm(q, k, v, i, f, backend=backend, chunk_size=16)
        assert h.dtype == torch.float16
        assert rel_err(h, reference(q, k, v, i, f)[0]) < 5e-3  # fp16 output rounding is 2^-11 ~ 5e-4


@pytest.mark.parametrize("backend,chunk_size", CASES)
def test_causal(backend, chunk_size):
    """Changing every input at step t leaves all earlier outputs bit-identical, and changes step t."""
    S, t = 65, 37
    inputs = make_inputs(S, torch.float32)
    h = mlstm(*inputs, backend=backend, chunk_size=chunk_size)
    changed = [x.clone() for x in inputs]
    for x in changed:
        x[:, :, t] += 1.5
    h2 = mlstm(*changed, backend=backend, chunk_size=chunk_size)
    assert torch.equal(h[:, :, :t], h2[:, :, :t])  # the past never sees step t
    assert not torch.allclose(h[:, :, t], h2[:, :, t])  # ...but step t itself does


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_state_carries_over(backend):
    """Running two halves with the returned state equals one run; the final state equals the reference's."""
    S, cut = 100, 41
    q, k, v, i, f = make_inputs(S)
    h_ref, (C, n, m) = reference(q, k, v, i, f)
    first = [x[:, :, :cut] for x in (q, k, v, i, f)]
    second = [x[:, :, cut:] for x in (q, k, v, i, f)]
    h1, state = mlstm(*first, backend=backend, chunk_size=16, return_state=True)
    h2, last = mlstm(*second, backend=backend, chunk_size=16, initial_state=state, return_state=True)
    assert rel_err(torch.cat([h1, h2], 2), h_ref) < 1e-10
    # the true memory is exp(m) * C: compare it in a scale-free way via the stabilised pieces
    torch.testing.assert_close(last.m, m, rtol=1e-12, atol=1e-12)
    assert rel_err(last.C, C) < 1e-10 and rel_err(last.n, n) < 1e-10


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("backend,chunk_size", CASES)
@pytest.mark.parametrize("S", [1, 7, 64, 65])
def test_reverse_equals_flipped(backend, chunk_size, S, with_state):
    """reverse=True is the forward scan of the flipped sequence, flipped back (float64, outputs, all five gradients
    and the final state); initial_state enters before step S-1 and the returned state is the one after step 0."""
    inputs = make_inputs(S, seed=7)
    state = None
    if with_state:  # a non-trivial state: the one a forward scan over other inputs ends with
        state = reference(*make_inputs(9, seed=8))[1]
    grad_out = torch.randn(B, NH, S, DV, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for reverse in (False, True):
        leaves = [t.clone().requires_grad_() for t in inputs]
        args = leaves if reverse else [t.flip(2) for t in leaves]
        h, last = mlstm(*args, backend=backend, chunk_size=chunk_size, initial_state=state, return_state=True,
                        reverse=reverse)
        h = h if reverse else h.flip(2)
        (h * grad_out).sum().backward()
        results.append((h, last, [t.grad for t in leaves]))
    (h_flip, st_flip, g_flip), (h_rev, st_rev, g_rev) = results
    assert rel_err(h_rev, h_flip) < 1e-12
    for name, a, b in zip("q k v igate fgate".split(), g_rev, g_flip):
        assert rel_err(a, b) < 1e-12, f"grad of {name}"
    for a, b in zip(st_rev, st_flip):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if S > 1:  # ...and it is not the forward scan (the test can fail)
        assert not torch.allclose(h_rev, mlstm(*inputs, backend=backend, chunk_size=chunk_size, initial_state=state))


def test_reverse_is_anticausal():
    """With reverse, changing step t leaves all later outputs bit-identical (the traversal reaches them first)."""
    S, t = 65, 30
    inputs = make_inputs(S, torch.float32)
    changed = [x.clone() for x in inputs]
    for x in changed:
        x[:, :, t] += 1.5
    for backend, cs in CASES:
        h = mlstm(*inputs, backend=backend, chunk_size=cs, reverse=True)
        h2 = mlstm(*changed, backend=backend, chunk_size=cs, reverse=True)
        assert torch.equal(h[:, :, t + 1 :], h2[:, :, t + 1 :]), backend
        assert not torch.allclose(h[:, :, t], h2[:, :, t])


@pytest.mark.parametrize("backend,chunk_size", CASES)
@pytest.mark.parametrize("S", [1, 7, 64, 65, 400])
def test_state_gradients_match_reference(backend, chunk_size, S):
    """With an initial state that requires grad and a loss on h and on the final (C, n, m): the gradients of all five
    inputs and of C0, n0, m0 equal the float64 recurrence's to 1e-10 (the chunk-state path of the backward)."""
    if backend == "recurrent" and S == 400:
        S = 130
    inputs = make_inputs(S, seed=11)
    state = [t.detach() for t in reference(*make_inputs(5, seed=12))[1]]
    state[2] = state[2] + 1.5  # m0 far enough from the first gates that both branches of the max occur
    gen = torch.Generator().manual_seed(4)
    w_h = torch.randn(B, NH, S, DV, generator=gen, dtype=torch.float64)
    w_C, w_n, w_m = (torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in state)

    def loss(h, C, n, m):  # the true memory exp(m) C: a loss on it sees the stabiliser as the model does
        return (h * w_h).sum() + (C * torch.exp(m)[..., None, None] * w_C).sum() + (n * w_n).sum() + (m * w_m).sum()

    leaves = [t.clone().requires_grad_() for t in inputs + state]
    h, last = mlstm(*leaves[:5], backend=backend, chunk_size=chunk_size, initial_state=leaves[5:], return_state=True)
    loss(h, *last).backward()
    ref_leaves = [t.clone().requires_grad_() for t in inputs + state]
    h_ref, last_ref = reference(*ref_leaves[:5], state=ref_leaves[5:])
    loss(h_ref, *last_ref).backward()
    for name, a, b in zip("q k v igate fgate C0 n0 m0".split(), leaves, ref_leaves):
        assert rel_err(a.grad, b.grad) < 1e-10, f"grad of {name}: {rel_err(a.grad, b.grad):.1e}"


def test_gradcheck_small():
    """torch.autograd.gradcheck (finite differences, float64) of the hand-written backward, state in and out."""
    S = 9
    inputs = [t[:1, :2] for t in make_inputs(S, seed=13)]
    state = [t[:1, :2].detach() for t in reference(*make_inputs(4, seed=14))[1]]
    for backend, cs, reverse in (("chunkwise", 4, False), ("chunkwise", 4, True), ("parallel", 64, False)):
        def fn(q, k, v, i, f, C0, n0, m0):
            h, (C, n, m) = mlstm(q, k, v, i, f, backend=backend, chunk_size=cs, initial_state=(C0, n0, m0),
                                 return_state=True, reverse=reverse)
            return h, C * torch.exp(m)[..., None, None], n * torch.exp(m)[..., None]

        leaves = [t.clone().requires_grad_() for t in inputs + state]
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_state_scan_loop_equals_matmul(monkeypatch, reverse):
    """The two ways of mixing chunk states (a loop over chunks above LOOP_MIN_CHUNKS, one matmul below) agree:
    outputs, final state and all gradients including the initial state's, in float64."""
    inputs = make_inputs(130, seed=21)
    state = [t.detach() for t in reference(*make_inputs(5, seed=22))[1]]
    results = []
    for loop_min in (0, 10**9):
        monkeypatch.setattr(chunkwise_module, "LOOP_MIN_CHUNKS", loop_min)
        leaves = [t.clone().requires_grad_() for t in inputs + state]
        h, (C, n, m) = mlstm(*leaves[:5], backend="chunkwise", chunk_size=7, initial_state=leaves[5:],
                             return_state=True, reverse=reverse)
        (h.sum() + (C * torch.exp(m)[..., None, None]).sum() + n.sum()).backward()
        results.append([h, C, n, m] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-12


def test_padding_never_changes_results():
    """Chunk sizes that do not divide S (the end is padded) give the same numbers as ones that do."""
    q, k, v, i, f = make_inputs(130)
    exact = mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=65)  # 130 = 2 x 65: no padding
    for cs in (3, 64, 128, 500):  # 500 > S: one padded chunk
        h, st = mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=cs, return_state=True)
        assert rel_err(h, exact) < 1e-12
        _, (C, n, m) = reference(q, k, v, i, f)
        assert rel_err(st.C, C) < 1e-10  # padded steps neither write nor forget


def test_bad_arguments_raise():
    q, k, v, i, f = make_inputs(5)
    with pytest.raises(ValueError, match="flash"):
        mlstm(q, k, v, i, f, backend="flash")
    with pytest.raises(ValueError, match="gates"):
        mlstm(q, k, v, i[..., None], f)
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=0)
    with pytest.raises(ValueError, match="q, k"):
        mlstm(q, k[..., :3], v, i, f)


def test_auto_dispatch_rules():
    """`auto` runs the quadratic form up to the table's `parallel_max_seq` and the linear-memory chunkwise form
    above it, per device and dtype; missing dtypes (float64) fall back to cpu/float32 or cuda/bfloat16."""
    assert set(BACKENDS) == {"auto", "parallel", "chunkwise", "recurrent", "triton"}
    for device, limit in PARALLEL_MAX_SEQ.items():
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        assert limit == mlstm_module.DISPATCH[device][dtype_name(dtype)]["parallel_max_seq"]
        assert select_backend(1, device, dtype) == "parallel"
        assert select_backend(limit, device, dtype) == "parallel"
        assert select_backend(limit + 1, device, dtype) == "chunkwise"
        assert select_backend(limit + 1, device, torch.float64) == "chunkwise"  # the default entry's limit
        assert select_backend(25600, device, dtype, B=8) == "chunkwise"
    for device, table in mlstm_module.DISPATCH.items():
        if device == "comment":
            continue
        for name, entry in table.items():
            limit = entry["parallel_max_seq"]
            assert select_backend(limit, device, getattr(torch, name)) == "parallel"
            assert select_backend(limit + 1, device, getattr(torch, name)) == "chunkwise"
    # CUDA keeps its unmeasured rule until a GPU run writes the table: no triton
    assert all(e["triton_min_seq"] is None for e in mlstm_module.DISPATCH["cuda"].values())


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def test_dispatch_table_is_package_data():
    """The table sits inside the package (so wheels ship it) and has exactly the benchmark's format."""
    path = mlstm_module.DISPATCH_TABLE_PATH
    assert path.parent == Path(mlstm_module.__file__).parent and path.name == "mlstm_dispatch.json"
    table = json.loads(path.read_text())
    assert isinstance(table["comment"], str) and set(table) == {"comment", "cpu", "cuda"}
    for device in ("cpu", "cuda"):
        for entry in table[device].values():
            assert set(entry) == {"parallel_max_seq", "triton_min_seq"}
            assert isinstance(entry["parallel_max_seq"], int)


def test_auto_picks_triton_only_from_a_measured_threshold(monkeypatch):
    """triton only where the table has a threshold, S reaches it and the kernel can run."""
    table = {"comment": "test", "cpu": {"float32": {"parallel_max_seq": 100, "triton_min_seq": 1000}},
             "cuda": {"bfloat16": {"parallel_max_seq": 512, "triton_min_seq": None}}}
    monkeypatch.setattr(dispatch_module, "DISPATCH", table)
    monkeypatch.setattr(dispatch_module, "_triton_usable", lambda device: True)
    assert select_backend(100, "cpu", torch.float32) == "parallel"
    assert select_backend(999, "cpu", torch.float32) == "chunkwise"
    assert select_backend(1000, "cpu", torch.float32) == "triton"
    assert select_backend(1000, "cpu", torch.bfloat16) == "triton"  # missing dtype: the cpu/float32 entry
    assert select_backend(10**6, "cuda", torch.float16) == "chunkwise"  # no threshold: never
    monkeypatch.setattr(dispatch_module, "_triton_usable", lambda device: False)
    assert select_backend(1000, "cpu", torch.float32) == "chunkwise"


def test_triton_backend_needs_the_kernel(monkeypatch):
    """backend='triton' where the kernel cannot run raises a clear error (no silent fallback)."""
    mlstm_triton = pytest.importorskip("ultra_vil.mlstm.triton")
    monkeypatch.setattr(mlstm_triton, "available", lambda device: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mlstm(*make_inputs(5, torch.float32), backend="triton")


def memory_inputs(S, seed=0):
    """The shape the memory numbers below were measured at: B = 1, NH = 4, DK = DV = 64 (a ViL-T head is 96)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 4, S, 64, generator=g).requires_grad_() for _ in range(3))
    i, f = torch.randn(1, 4, S, generator=g), torch.randn(1, 4, S, generator=g) + 2.0
    return q, k, v, i.requires_grad_(), f.requires_grad_()


def test_chunkwise_activation_memory_is_linear_and_small():
    """What forward keeps for backward grows linearly in S, and at S = 4096 (chunk 64) is < 1/4 of what plain
    autograd through the same formulation keeps: measured with this probe 11.2 MiB at S = 1024 and
    44.9 MiB at S = 4096 (chunk-sized (L, L) matrices saved by autograd); now 2.1 and 8.4 MiB (h itself, 4 MiB, and
    the chunk states, 4 MiB). The peak of forward + backward also stays linear."""

    def run(S, backend="chunkwise"):
        inputs = memory_inputs(S)
        _, kept, h = cpu_memory_mb(lambda: mlstm(*inputs, backend=backend, chunk_size=64))
        peak, _, _ = cpu_memory_mb(lambda: mlstm(*inputs, backend=backend, chunk_size=64).sum().backward())
        return kept, peak

    (kept_s, peak_s), (kept_l, peak_l) = run(1024), run(4096)
    assert kept_s > 0 and peak_s > 0
    assert kept_l < 44.9 / 4, f"chunkwise keeps {kept_l:.1f} MiB for backward at S = 4096"
    assert kept_l / kept_s < 4.5 and peak_l / peak_s < 4.5, (kept_l / kept_s, peak_l / peak_s)
    # the parallel backend is one chunk of L = S: its peak (not what it keeps) is quadratic, which the probe sees
    _, quad_s = run(256, "parallel")
    _, quad_l = run(1024, "parallel")
    assert quad_l / quad_s > 8.0


def test_long_sequence_float32_keeps_precision():
    """S = 25600 with strong forgetting (|cumulative log decay| ~ 5e4): float32 chunkwise stays within 1e-4 of the
    same computation in float64, which the tests above tie to the recurrence."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 25600, 16, generator=g) for _ in range(3))
    i, f = torch.randn(1, 1, 25600, generator=g), torch.randn(1, 1, 25600, generator=g) - 2.0
    h32 = mlstm(q, k, v, i, f, backend="chunkwise")
    h64 = mlstm(*(t.double() for t in (q, k, v, i, f)), backend="chunkwise")
    assert rel_err(h32, h64) < 1e-4


def test_float32_precision_at_1024_steps():
    """Every backend in float32 within 5e-5 (max abs) of float64 at S = 1024, randn inputs, DK = 64, DV = 128.

    A parallel form that takes its decays as differences of one cumulative sum over the whole sequence is 2.9e-3
    off here; the chunkwise form 3.2e-5, the recurrence 7.6e-6."""
    g = torch.Generator().manual_seed(0)
    S = 1024
    q, k = (torch.randn(1, 2, S, 64, generator=g) for _ in range(2))
    v = torch.randn(1, 2, S, 128, generator=g)
    i, f = (torch.randn(1, 2, S, generator=g) for _ in range(2))
    h64 = mlstm(*(t.double() for t in (q, k, v, i, f)), backend="chunkwise")
    for backend in ("parallel", "chunkwise", "recurrent", "auto"):
        err = (mlstm(q, k, v, i, f, backend=backend).double() - h64).abs().max().item()
        assert err < 5e-5, f"{backend}: {err:.2e}"


@pytest.mark.parametrize("backend,chunk_size", CASES)
def test_gradients_finite_for_huge_gates(backend, chunk_size):
    """Gate pre-activations of +-1e4 (float32): outputs and all five gradients finite.

    The trap: gradients turn NaN once an input gate is below about -88 if exp(-m) overflows in the readout's
    backward (inf * 0)."""
    S = 65
    q, k, v, _, _ = make_inputs(S, torch.float32)
    sign = torch.where(torch.arange(S) % 3 == 0, 1.0, -1.0)
    i = (1e4 * sign).expand(B, NH, S).contiguous()
    f = (-1e4 * sign.roll(1)).expand(B, NH, S).contiguous()
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
    h = mlstm(*leaves, backend=backend, chunk_size=chunk_size)
    h.backward(torch.randn(h.shape, generator=torch.Generator().manual_seed(1)))
    assert torch.isfinite(h).all()
    for name, t in zip("q k v igate fgate".split(), leaves):
        assert torch.isfinite(t.grad).all(), f"grad of {name} not finite"
    # far below -88 everywhere: h is (numerically) 0 and nothing is NaN
    leaves = [t.clone().requires_grad_() for t in (q, k, v, torch.full_like(i, -1e4), torch.zeros_like(f))]
    h = mlstm(*leaves, backend=backend, chunk_size=chunk_size)
    h.sum().backward()
    assert torch.isfinite(h).all() and all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("backend,chunk_size", CASES)
@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_causal(backend, chunk_size, which, bad):
    """A NaN or inf in any one input at step t leaves every output before t bit-identical (as in the recurrence).

    The trap: the quadratic and chunk forms multiply masked-out weights with it (0 * NaN = NaN) and spoil all of h
    unless the masked entries are selected away."""
    S, t = 65, 37
    inputs = make_inputs(S, torch.float32)
    h = mlstm(*inputs, backend=backend, chunk_size=chunk_size)
    spoiled = [x.clone() for x in inputs]
    if which < 3:
        spoiled[which][:, :, t, 1] = bad
    else:
        spoiled[which][:, :, t] = bad
    h2 = mlstm(*spoiled, backend=backend, chunk_size=chunk_size)
    assert torch.equal(h[:, :, :t], h2[:, :, :t])
    h3 = mlstm(*spoiled, backend=backend, chunk_size=chunk_size, reverse=True)  # and mirrored
    h_rev = mlstm(*inputs, backend=backend, chunk_size=chunk_size, reverse=True)
    assert torch.equal(h_rev[:, :, t + 1 :], h3[:, :, t + 1 :])


@pytest.mark.parametrize("backend,chunk_size", CASES)
def test_input_gate_minus_inf_gives_zero(backend, chunk_size):
    """An input gate of -inf everywhere writes nothing: h = 0 exactly, not NaN (the trap: exp(-inf - -inf));
    the final state stays empty."""
    q, k, v, i, f = make_inputs(20, torch.float32)
    h, (C, n, m) = mlstm(q, k, v, torch.full_like(i, float("-inf")), f, backend=backend, chunk_size=chunk_size,
                         return_state=True)
    assert torch.equal(h, torch.zeros_like(h))
    assert torch.equal(C, torch.zeros_like(C)) and torch.equal(n, torch.zeros_like(n)) and (m == float("-inf")).all()


def gates_with_infinities(S, dtype=torch.float64, seed=0):
    """make_inputs with infinite gates: a forget gate of -inf (sigmoid 0: forget everything) inside a 16-chunk, at
    the 64-chunk boundary and the step after it, and at step 100; +inf (forget nothing) at step 30; an input gate of
    -inf (write nothing) at step 40 and at step 101, right after a -inf forget gate."""
    q, k, v, i, f = make_inputs(S, dtype, seed)
    f[:, :, [20, 64, 65, 100]] = -math.inf
    f[:, :, 30] = math.inf
    i[:, :, [40, 101]] = -math.inf
    return [q, k, v, i, f]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend,chunk_size", [*CASES, ("chunkwise", 4)])  # chunk 4: 65 chunks, the state loop
def test_infinite_gates_match_reference(backend, chunk_size, reverse, with_state, dtype):
    """Forget gates of -inf and +inf and input gates of -inf at steps spread over several chunks: h, the final
    state and the gradients of all five inputs and of the initial state are finite and equal the float64 recurrence
    (which handles them exactly: exp(-inf) = 0) to 1e-10 in float64, 1e-4 in float32; with reverse, of the flipped
    inputs. The trap: cumulative log decays of -inf, whose differences are -inf - -inf = NaN."""
    S = 130
    inputs = gates_with_infinities(S)
    state = None
    if with_state:
        state = [t.detach() for t in reference(*make_inputs(5, seed=12))[1]]
        state[2] = state[2] + 1.5
    gen = torch.Generator().manual_seed(4)
    w_h = torch.randn(B, NH, S, DV, generator=gen, dtype=torch.float64)
    w_C = torch.randn(B, NH, DK, DV, generator=gen, dtype=torch.float64)
    w_n = torch.randn(B, NH, DK, generator=gen, dtype=torch.float64)

    def loss(h, C, n, m):  # the true memory exp(m) C and n: scale-free in the stabiliser
        e = torch.exp(m.double())
        memory = (C.double() * e[..., None, None] * w_C).sum() + (n.double() * e[..., None] * w_n).sum()
        return (h.double() * w_h).sum() + memory

    rounded = [t.to(dtype).double() for t in inputs + (state or [])]
    leaves = [t.to(dtype, copy=True).requires_grad_() for t in rounded]
    h, last = mlstm(*leaves[:5], backend=backend, chunk_size=chunk_size, initial_state=leaves[5:] or None,
                    return_state=True, reverse=reverse)
    loss(h, *last).backward()
    flip = (lambda t: t.flip(2)) if reverse else (lambda t: t)
    ref_leaves = [t.clone().requires_grad_() for t in rounded]
    h_ref, last_ref = reference(*(flip(t) for t in ref_leaves[:5]), state=ref_leaves[5:] or None)
    loss(flip(h_ref), *last_ref).backward()
    tol = TOL[dtype]
    assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in last[:2])
    assert rel_err(h, flip(h_ref)) < tol, f"h: {rel_err(h, flip(h_ref)):.1e}"
    e, e_ref = torch.exp(last.m.double()), torch.exp(last_ref[2])
    assert rel_err(last.C * e[..., None, None], last_ref[0] * e_ref[..., None, None]) < tol
    assert rel_err(last.n * e[..., None], last_ref[1] * e_ref[..., None]) < tol
    for name, a, b in zip("q k v igate fgate C0 n0 m0".split(), leaves, ref_leaves):
        assert torch.isfinite(a.grad).all(), f"grad of {name} not finite"
        assert rel_err(a.grad, b.grad) < tol, f"grad of {name}: {rel_err(a.grad, b.grad):.1e}"


@pytest.mark.parametrize("backend,chunk_size", CASES)
def test_forget_and_input_gate_minus_inf_at_one_step(backend, chunk_size):
    """Both gates -inf at one step (forget everything, write nothing: the memory is empty there) in the middle of
    a chunk: every backend gives the recurrent backend's outputs and gradients (float64, 1e-10), all finite."""
    S, t = 65, 37
    inputs = make_inputs(S)
    inputs[3][:, :, t] = -math.inf
    inputs[4][:, :, t] = -math.inf
    grad_out = torch.randn(B, NH, S, DV, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for be in (backend, "recurrent"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        h = mlstm(*leaves, backend=be, chunk_size=chunk_size)
        (h * grad_out).sum().backward()
        results.append([h] + [x.grad for x in leaves])
    for name, a, b in zip("h q k v igate fgate".split(), *results):
        assert torch.isfinite(a).all(), f"{name} not finite"
        assert rel_err(a, b) < 1e-10, f"{name}: {rel_err(a, b):.1e}"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("which", ["q", "k", "v", "igate", "fgate", "initial_state"])
def test_non_floating_inputs_raise(which, dtype):
    """Integer or bool inputs raise a TypeError naming the argument and its dtype (computed in float32 and cast back
    to v's dtype they would give int64 zeros)."""
    names = ["q", "k", "v", "igate", "fgate"]
    inputs = make_inputs(5, torch.float32)
    state = [t.float() for t in reference(*make_inputs(3))[1]]
    if which == "initial_state":
        state[0] = state[0].to(dtype)
    else:
        inputs[names.index(which)] = inputs[names.index(which)].to(dtype)
    for backend in ("auto", "recurrent"):
        with pytest.raises(TypeError, match=rf"{which}.*{dtype}.*floating point only"):
            mlstm(*inputs, backend=backend, initial_state=state)


def dispatch_table(parallel_max_seq=100, triton_min_seq=None):
    return {"comment": "test", "cpu": {"float32": {"parallel_max_seq": parallel_max_seq,
                                                   "triton_min_seq": triton_min_seq}}}


BROKEN_TABLES = {  # name: (file content, None = no file; a word the warning must contain)
    "missing": (None, "cannot be read"),
    "empty": ("", "not valid JSON"),
    "malformed": ('{"comment": "x", "cpu": ', "not valid JSON"),
    "no_cpu": (json.dumps({"comment": "x", "cuda": {"bfloat16": {"parallel_max_seq": 512, "triton_min_seq": None}}}),
               "cpu"),
    "string_threshold": (json.dumps(dispatch_table("512")), "parallel_max_seq"),
    "negative_threshold": (json.dumps(dispatch_table(-1)), "parallel_max_seq"),
    "negative_triton": (json.dumps(dispatch_table(100, -1)), "triton_min_seq"),
    "not_an_object": ("[1, 2]", "object"),
}


@pytest.mark.parametrize("case", BROKEN_TABLES)
def test_load_dispatch_falls_back_with_one_warning(tmp_path, case):
    """A missing, empty, malformed or invalid table gives the built-in thresholds and exactly one warning naming
    the file and the problem, instead of an exception (the table is read when ultra_vil is imported)."""
    content, problem = BROKEN_TABLES[case]
    path = tmp_path / "mlstm_dispatch.json"
    if content is not None:
        path.write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = mlstm_module.load_dispatch(path)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert str(path) in message and problem in message, message
    assert table == mlstm_module.DEFAULT_DISPATCH and table is not mlstm_module.DEFAULT_DISPATCH


def test_load_dispatch_reads_a_valid_table(tmp_path):
    """A valid table is returned as written, without a warning; the shipped one and the built-in defaults are valid
    (the shipped table also loads without a warning)."""
    path = tmp_path / "mlstm_dispatch.json"
    path.write_text(json.dumps(dispatch_table(96, 2048)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mlstm_module.load_dispatch(path) == dispatch_table(96, 2048)
        assert mlstm_module.load_dispatch(mlstm_module.DISPATCH_TABLE_PATH) == mlstm_module.DISPATCH
    mlstm_module.validate_dispatch(mlstm_module.DEFAULT_DISPATCH, complete=True)
    with pytest.raises(ValueError, match="where.json: .*cpu"):  # complete: the entry every fallback ends at
        mlstm_module.validate_dispatch({"comment": "x"}, "where.json", complete=True)
    mlstm_module.validate_dispatch({"comment": "x"}, "where.json")  # the format alone allows an empty table


@pytest.mark.parametrize("case", ["missing", "malformed"])
def test_import_survives_a_broken_dispatch_table(tmp_path, case):
    """`import ultra_vil` (classifier, mlstm with backend="auto") works in a fresh process whose package copy has a
    missing or malformed mlstm_dispatch.json, with one warning naming the file."""
    package = tmp_path / "ultra_vil"
    shutil.copytree(Path(mlstm_module.__file__).parents[1], package, ignore=shutil.ignore_patterns("__pycache__"))
    table = package / "mlstm" / "mlstm_dispatch.json"
    if case == "missing":
        table.unlink()
    else:
        table.write_text(BROKEN_TABLES[case][0])
    code = (
        "import torch, ultra_vil\n"
        "from ultra_vil.mlstm import DEFAULT_DISPATCH, DISPATCH, select_backend\n"
        f"assert ultra_vil.__file__.startswith({str(package)!r}), ultra_vil.__file__\n"
        "assert DISPATCH == DEFAULT_DISPATCH\n"
        "q = torch.randn(1, 1, 5, 4)\n"
        "h = ultra_vil.mlstm(q, q, q, q[..., 0], q[..., 0])\n"
        "assert h.shape == (1, 1, 5, 4) and select_backend(5, 'cpu', torch.float32) == 'parallel'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    assert out.stderr.count("Warning") == 1 and str(table) in out.stderr, out.stderr[-3000:]
