"""The fused Triton mLSTM (ultra_vil/mlstm/triton.py) against the float64 recurrence, on CPU under TRITON_INTERPRET=1.

triton.jit reads TRITON_INTERPRET when it decorates a kernel; the module builds its kernels on first use, so setting
the variable here, before any kernel exists, is enough even if another test imported triton earlier. The interpreter
runs the same kernel code as the GPU (masks, tiles, loops), one program at a time in numpy, so shapes stay small.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is built (see the module docstring)

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the optional fused backend cannot be tested")

from ultra_vil.mlstm import triton as mt
from ultra_vil.mlstm import mlstm

DEVICE = torch.device("cpu") if os.environ.get("TRITON_INTERPRET") == "1" else torch.device("cuda")
if not mt.available(DEVICE):
    pytest.skip(
        "TRITON_INTERPRET is set to something other than 1 and there is no CUDA device", allow_module_level=True
    )

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def rel_err(a, b):
    """||a - b|| / ||b|| over the whole tensor; absolute where b is exactly zero."""
    diff, scale = (a.double() - b.double()).norm().item(), b.double().norm().item()
    return diff / scale if scale > 0 else diff


def make_inputs(B, NH, S, DK, DV, with_state, seed=0):
    """([q, k, v, igate, fgate] (+ [C0, n0, m0]), [projections of h, C, n, m]): the self-check's own inputs."""
    return mt.reference_inputs(B, NH, S, DK, DV, with_state, seed)


def run(ts, weights, *, triton, dtype=torch.float64, chunk_size=64, reverse=False):
    """(h, C, n, m, and the gradients of q, k, v, igate, fgate [, C0, n0, m0]) as float64 on CPU. The reference
    runs `reverse` as the recurrence over flipped inputs, flipped back."""
    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # gates and state stay float32
    ts = [t.detach().to(DEVICE, dtype if j < 3 else gate_dtype).requires_grad_() for j, t in enumerate(ts)]
    init = tuple(ts[5:]) if len(ts) > 5 else None
    if triton:
        h, st = mt.mlstm_triton(*ts[:5], chunk_size=chunk_size, initial_state=init, return_state=True, reverse=reverse)
    elif reverse:
        h, st = mlstm(*(t.flip(2) for t in ts[:5]), backend="recurrent", initial_state=init, return_state=True)
        h = h.flip(2)
    else:
        h, st = mlstm(*ts[:5], backend="recurrent", initial_state=init, return_state=True)
    outs = [h, *st]
    loss = sum((o.double() * w.to(DEVICE)).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, ts)
    return [t.detach().double().cpu() for t in (*outs, *grads)]


NAMES = ["h", "C", "n", "m", "dq", "dk", "dv", "digate", "dfgate", "dC0", "dn0", "dm0"]
CASES = [  # (B, NH, S, DK, DV, chunk_size, dtype, initial state, reverse)
    (1, 2, 1, 32, 32, 64, torch.float32, True, False),  # one step: only the initial state and the diagonal
    (2, 1, 7, 48, 32, 16, torch.float32, False, False),  # DK not a power of two (3 tiles of 16), one partial chunk
    (1, 2, 64, 32, 64, 64, torch.float32, True, False),  # S a multiple of the chunk
    (1, 2, 65, 96, 32, 16, torch.float32, True, False),  # ViL-T head dim (3 tiles of 32), a 1-step tail chunk
    (2, 1, 130, 32, 96, 64, torch.float32, False, False),  # three chunks, DV 96
    (1, 1, 40, 32, 32, 24, torch.float32, True, False),  # a chunk size that is not a power of two (masked tile of 32)
    (1, 1, 20, 64, 192, 16, torch.float32, False, False),  # ViL-S head dim for values (3 tiles of 64)
    (1, 1, 9, 256, 32, 16, torch.float32, True, False),  # the largest head dim we ship
    (1, 2, 65, 32, 32, 16, torch.bfloat16, True, False),  # bf16 tiles, float32 state
    (1, 1, 64, 96, 32, 32, torch.bfloat16, False, False),
    (1, 1, 33, 32, 48, 16, torch.float16, True, False),
    (1, 2, 65, 96, 32, 16, torch.float32, True, True),  # reverse traversal: tiles addressed backwards
    (1, 1, 40, 32, 48, 24, torch.bfloat16, True, True),
]


def check_against_recurrence(ts, weights, dtype, L, reverse):
    """The kernel's outputs, final state and gradients against the float64 recurrence, each within TOL[dtype]."""
    ts = [t.to(dtype).double() if j < 3 else t for j, t in enumerate(ts)]  # the reference sees the rounded inputs
    ref = run(ts, weights, triton=False, reverse=reverse)
    got = run(ts, weights, triton=True, dtype=dtype, chunk_size=L, reverse=reverse)
    errs = {name: rel_err(a, b) for name, a, b in zip(NAMES, got, ref)}
    if len(ts) > 5:
        # d m0 = <dC0, C0> + <dn0, n0> + (stabiliser path): DK * DV terms that largely cancel (one scalar per head),
        # so its error is measured against the sum of the terms' magnitudes, the condition of that sum
        C0, n0 = ts[5], ts[6]
        terms = (ref[9] * C0).abs().sum((-2, -1)) + (ref[10] * n0).abs().sum(-1)  # (B, NH)
        errs["dm0"] = ((got[11] - ref[11]).abs() / terms).max().item()
    bad = {name: e for name, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]}: {bad} (all: {errs})"
    return got


@pytest.mark.parametrize("B,NH,S,DK,DV,L,dtype,with_state,reverse", CASES)
def test_matches_float64_recurrence(B, NH, S, DK, DV, L, dtype, with_state, reverse):
    """Outputs, final state and all gradients (q, k, v, both gates, the initial state) equal the float64 recurrence
    to the dtype's tolerance, for every S / chunk / head-dim combination the tiling has to mask."""
    ts, weights = make_inputs(B, NH, S, DK, DV, with_state)
    check_against_recurrence(ts, weights, dtype, L, reverse)


@pytest.mark.parametrize(
    "dtype,with_state,reverse",
    [(torch.float32, False, False), (torch.float32, True, True), (torch.bfloat16, True, False)],
)
def test_infinite_gates_match_recurrence(dtype, with_state, reverse):
    """Forget gates of -inf (forget everything) inside a chunk, at a chunk's first step and the one after, and
    later; +inf (forget nothing); input gates of -inf (write nothing), one right after a -inf forget gate: outputs,
    final state and every gradient are finite and equal the float64 recurrence to the dtype's tolerance (they used
    to be NaN from the first -inf forget gate on: -inf - -inf in the chunk's cumulative log decays)."""
    S = 70
    ts, weights = make_inputs(1, 2, S, 32, 32, with_state)
    ts[4][:, :, [5, 16, 17, 40]] = float("-inf")  # chunk 16: steps 16 and 17 open the second chunk
    ts[4][:, :, 25] = float("inf")
    ts[3][:, :, [30, 41]] = float("-inf")
    got = check_against_recurrence(ts, weights, dtype, 16, reverse)
    for name, t in zip(NAMES, got):
        assert torch.isfinite(t).all(), f"{name} not finite"


def test_dtype_of_outputs():
    """h comes back in v's dtype and the state in float32, as the contract says."""
    ts, _ = make_inputs(1, 1, 5, 32, 32, False)
    q, k, v = (t.to(DEVICE, torch.bfloat16) for t in ts[:3])
    h, st = mt.mlstm_triton(q, k, v, ts[3].float().to(DEVICE), ts[4].float().to(DEVICE), return_state=True)
    assert h.dtype == torch.bfloat16 and h.shape == (1, 1, 5, 32)
    assert all(t.dtype == torch.float32 for t in st) and st.C.shape == (1, 1, 32, 32)
    h2, none = mt.mlstm_triton(q, k, v, ts[3].to(DEVICE), ts[4].to(DEVICE))
    assert none is None and torch.equal(h, h2)  # return_state does not change h


@pytest.mark.parametrize("gate", [1e4, -1e4])
def test_extreme_gates_finite_and_exact(gate):
    """Gate pre-activations of +-1e4 (exp overflows float32 a hundred times over) give finite outputs and
    gradients that still match float64 to float32's resolution of such gates: every exponent stays <= 0."""
    ts, weights = make_inputs(1, 2, 37, 32, 32, True)
    g = torch.Generator().manual_seed(1)
    noise = [torch.randn(ts[3].shape, generator=g, dtype=torch.float64) for _ in range(3)]
    # input gates +-1e4 and the forget gate saturated open (+1e4) or shut (-1e4); distinct values, because at
    # exact ties of the stabiliser's max the recurrence splits d m in halves and any split is a valid subgradient
    ts[3] = gate * torch.sign(noise[0]) + noise[1]
    ts[4] = gate + noise[2]
    ts[3:5] = [t.float().double() for t in ts[3:5]]  # float32 holds 1e4 + x to 1e-3: the reference gets the same
    ref = run(ts, weights, triton=False)
    got = run(ts, weights, triton=True, dtype=torch.float32, chunk_size=16)
    for name, a, b in zip(NAMES, got, ref):
        assert torch.isfinite(a).all(), f"{name} not finite at gates {gate}"
        # where float64 overflows too (exp(1e4) is inf in float64), compare the rest
        # float32 resolves log weights near 1e4 to 1e4 * 2**-24 = 6e-4, and every weight is the exp of a difference
        # of such numbers (e.g. log f_0 + m_0 vs i_0 when both are near -1e4): 1e-4 is out of reach, 5e-3 is not
        ok = torch.isfinite(b)
        assert rel_err(a[ok], b[ok]) <= 5e-3, f"{name}: {rel_err(a[ok], b[ok])}"


def test_input_gate_minus_inf_gives_zero():
    """An input gate of -inf everywhere writes nothing: h = 0 exactly (not NaN) and the gradients are finite."""
    ts, _ = make_inputs(1, 1, 20, 32, 32, False)
    q, k, v = (t.float().to(DEVICE).requires_grad_() for t in ts[:3])
    i = torch.full((1, 1, 20), float("-inf"), device=DEVICE)
    f = ts[4].float().to(DEVICE).requires_grad_()
    h, st = mt.mlstm_triton(q, k, v, i, f, chunk_size=16, return_state=True)
    assert torch.equal(h, torch.zeros_like(h)) and torch.isneginf(st.m).all()
    h.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, f))


def test_causal():
    """Changing step t (q, k, v and both gates) leaves every output before t bit-identical, inside the same chunk
    and across chunks (masked entries are exact zeros, not small numbers)."""
    ts, _ = make_inputs(1, 2, 50, 32, 32, False)
    ts = [t.float().to(DEVICE) for t in ts]
    h0, _ = mt.mlstm_triton(*ts, chunk_size=16)
    for t in (5, 16, 37):
        changed = [x.clone() for x in ts]
        for x in changed:
            x[:, :, t] += 50.0
        h1, _ = mt.mlstm_triton(*changed, chunk_size=16)
        assert torch.equal(h0[:, :, :t], h1[:, :, :t]), f"outputs before step {t} changed"
        assert not torch.equal(h0[:, :, t], h1[:, :, t])  # the test can fail: step t itself does change


@pytest.mark.parametrize("which", ["q", "k", "v", "igate", "fgate"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_causal(which, bad):
    """A NaN or inf at step t (inside a chunk, one component of q / k / v, or a gate) leaves every output before t
    bit-identical, as in the recurrence, and spoils step t itself (where the recurrence does)."""
    ts, _ = make_inputs(1, 1, 40, 32, 32, False)
    ts = [x.float().to(DEVICE) for x in ts]
    h0, _ = mt.mlstm_triton(*ts, chunk_size=16)
    t = 21  # the middle of the second chunk: rows above it share its tiles
    j = ["q", "k", "v", "igate", "fgate"].index(which)
    changed = [x.clone() for x in ts]
    if j < 3:
        changed[j][0, 0, t, 3] = bad
    else:
        changed[j][0, 0, t] = bad
    h1, _ = mt.mlstm_triton(*changed, chunk_size=16)
    assert torch.equal(h0[:, :, :t], h1[:, :, :t]), f"a {bad} in {which} at step {t} reached earlier outputs"
    if not (which == "igate" and bad < 0 or which == "fgate" and bad > 0):  # -inf / +inf gates are valid inputs
        assert not torch.isfinite(h1[:, :, t]).all()


def test_continues_from_state():
    """Two calls chained through the returned state equal one call over the whole sequence (float32)."""
    ts, _ = make_inputs(1, 2, 45, 32, 32, False)
    ts = [t.float().to(DEVICE) for t in ts]
    h, st = mt.mlstm_triton(*ts, chunk_size=16, return_state=True)
    first = [x[:, :, :20] for x in ts]
    second = [x[:, :, 20:] for x in ts]
    ha, sta = mt.mlstm_triton(*first, chunk_size=16, return_state=True)
    hb, stb = mt.mlstm_triton(*second, chunk_size=16, initial_state=sta, return_state=True)
    assert rel_err(torch.cat([ha, hb], 2), h) < 1e-5
    for a, b in zip(stb, st):
        assert rel_err(a, b) < 1e-5


def test_mlstm_backend_triton_runs_this_kernel():
    """`mlstm(..., backend="triton")` (ultra_vil.mlstm) is this kernel, both traversal directions."""
    ts, _ = make_inputs(1, 2, 30, 32, 32, False)
    ts = [x.float().to(DEVICE) for x in ts]
    for reverse in (False, True):
        h = mlstm(*ts, backend="triton", chunk_size=16, reverse=reverse)
        h_direct, _ = mt.mlstm_triton(*ts, chunk_size=16, reverse=reverse)
        assert torch.equal(h, h_direct)


def test_empty_sequence():
    """S = 0: an empty output and the state handed in (or the empty state), as the other backends do."""
    ts, _ = make_inputs(1, 2, 0, 32, 32, True)
    h, st = mt.mlstm_triton(*[x.float() for x in ts[:5]], initial_state=ts[5:], return_state=True)
    assert h.shape == (1, 2, 0, 32) and torch.equal(st.m, ts[7].float())
    h, st = mt.mlstm_triton(*[x.float() for x in ts[:5]], return_state=True)
    assert torch.isneginf(st.m).all() and not st.C.any()


def test_rejects_bad_input():
    """float64 (use chunkwise), mismatched shapes and bad chunk sizes fail loudly."""
    ts, _ = make_inputs(1, 1, 4, 32, 32, False)
    with pytest.raises(ValueError, match="float64"):
        mt.mlstm_triton(*ts)
    ts = [t.float() for t in ts]
    with pytest.raises(ValueError, match="gates"):
        mt.mlstm_triton(*ts[:3], ts[3][..., :2], ts[4])
    with pytest.raises(ValueError, match="chunk_size"):
        mt.mlstm_triton(*ts, chunk_size=0)


def test_check_on_device_passes_here():
    """The GPU self-check that scripts/benchmark.py runs first also runs (and passes) under the interpreter."""
    err = mt.check_on_device(DEVICE)
    assert 0 < err <= 1e-4


def test_kernels_compile_for_hopper():
    """The interpreter skips what only the GPU compiler checks (tl.dot shapes and dtypes, layouts, registers), so
    every kernel is also compiled for sm_90 (H100 / H200) here, without a GPU: masked head dims (40: one masked
    64-wide tile, two 32-wide), a masked chunk tile (24 in 32), reverse addressing, initial and final state."""
    pytest.importorskip("triton.backends.nvidia", reason="this triton build has no NVIDIA backend")
    code = (  # a fresh process: triton imported here under TRITON_INTERPRET=1 cannot compile (see compile_report)
        "import torch\nfrom ultra_vil.mlstm import triton as mt\n"
        "r = mt.compile_report(90, torch.bfloat16, DK=40, DV=40, chunk_size=24, reverse=True)\n"
        "assert set(r) == {'_fwd_states', '_fwd_out', '_bwd_states', '_bwd_chunk'}, r\n"
        "print(r)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_import_without_triton():
    """`from ultra_vil.mlstm import triton` works where triton is missing; the backend then reports itself unavailable."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch\nfrom ultra_vil.mlstm import triton as mt\n"
        "assert not mt.available(torch.device('cpu')) and not mt.available('cuda')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
