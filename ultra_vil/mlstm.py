"""The matrix-LSTM (mLSTM) cell: the package's single implementation, in three equivalent forms.

Every model in ultra_vil (the ViL classifier, the YOLO modules) calls `mlstm(...)`. The three backends compute
the same function (xLSTM, arXiv:2405.04517, Sec. 2.3; ViL, arXiv:2406.04303):

    parallel   the stabilised quadratic form, O(S^2) memory: fastest for short sequences
    chunkwise  chunks of `chunk_size` with the (C, n, m) state carried between them: O(S) memory, any S
    recurrent  the step-by-step recurrence: the executable specification, and streaming

Math, per batch and head (exponential input gate, sigmoid forget gate, keys scaled by 1/sqrt(DK)):
    F_t = sum_{r<=t} logsigmoid(f_r);  logD[t, s] = F_t - F_s + i_s for s <= t, else -inf
    m_t = max_s logD[t, s];  C[t, s] = (q_t . k_s / sqrt(DK)) * exp(logD[t, s] - m_t)
    n_t = max(|sum_s C[t, s]|, exp(-m_t));  h_t = sum_s C[t, s] v_s / (n_t + eps)
Recurrent form: C_t = f_t C_{t-1} + i_t k_t v_t^T, n_t = f_t n_{t-1} + i_t k_t, stabilised by
m_t = max(log f_t + m_{t-1}, i_t). The state (C, n, m) is stored stabilised: the true memory is exp(m) * C.
An empty state is C = 0, n = 0, m = -inf, so the first stabiliser equals the first input-gate pre-activation.

Shape letters follow the NX-AI code: B batch, NH heads, S sequence length, DK key/query dim, DV value dim.
All arithmetic runs in float32 (float64 stays float64) with autocast disabled; h is returned in v's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent", "triton")

# `auto` uses the quadratic form up to this many steps and the chunkwise form above it. CPU: measured with
# scripts/benchmark.py --only mlstm (fwd+bwd, B=8, NH=4, DH=64, fp32, 2 cores): parallel 18 ms vs chunkwise 22 ms
# at S = 196, 176 ms vs 30 ms at S = 400. CUDA: not yet measured (no GPU was available when this was written);
# 512 keeps the quadratic form's S^2 memory small. Rerun the benchmark on a GPU and update it.
PARALLEL_MAX_SEQ = {"cpu": 256, "cuda": 512}


class MLSTMState(NamedTuple):
    """What the recurrence carries from one step (or chunk) to the next, stabilised by m."""

    C: Tensor  # (B, NH, DK, DV) matrix memory / exp(m)
    n: Tensor  # (B, NH, DK)     normaliser / exp(m)
    m: Tensor  # (B, NH)         log-scale stabiliser


def empty_state(B: int, NH: int, DK: int, DV: int, *, dtype: torch.dtype, device: torch.device) -> MLSTMState:
    """The state before the first step: nothing stored, m = -inf."""
    return MLSTMState(
        torch.zeros(B, NH, DK, DV, dtype=dtype, device=device),
        torch.zeros(B, NH, DK, dtype=dtype, device=device),
        torch.full((B, NH), float("-inf"), dtype=dtype, device=device),
    )


def select_backend(S: int, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend `auto` runs for a sequence of S steps on `device` (rules measured by scripts/benchmark.py).

    The quadratic form wins for short sequences; past `PARALLEL_MAX_SEQ[device]` the chunkwise form is both
    faster and the only one whose memory stays linear in S. float64 follows the same rules (it is only used
    for validation). Every backend can return the final state, so `return_state` does not change the choice.
    """
    device_type = torch.device(device).type
    limit = PARALLEL_MAX_SEQ.get(device_type, PARALLEL_MAX_SEQ["cpu"])
    return "parallel" if S <= limit else "chunkwise"


def mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    igate: Tensor,
    fgate: Tensor,
    *,
    backend: str = "auto",
    chunk_size: int = 64,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor, Tensor] | None = None,
    return_state: bool = False,
    reverse: bool = False,
) -> Tensor | tuple[Tensor, MLSTMState]:
    """Causal mLSTM over a whole sequence.

    Args:
        q, k: Queries and keys, (B, NH, S, DK).
        v: Values, (B, NH, S, DV).
        igate: Input-gate pre-activations, (B, NH, S) (exponential gate).
        fgate: Forget-gate pre-activations, (B, NH, S) (sigmoid gate, applied in log space).
        backend: "auto", "parallel", "chunkwise" or "recurrent".
        chunk_size: Steps per chunk of the chunkwise backend; S need not be a multiple of it.
        eps: Added to the normaliser.
        initial_state: (C, n, m) to continue from, as returned with `return_state=True`; None is the empty state.
        return_state: Also return the state after the last step.
        reverse: Traverse the sequence from step S-1 to step 0: exactly the flipped inputs' result, flipped back,
            without the flipping copies. initial_state is then the state before step S-1 and the returned state
            the one after step 0.

    Returns:
        h, (B, NH, S, DV) in v's dtype; with `return_state`, (h, MLSTMState) with the state in the compute dtype.
        Row t of h depends only on steps 0..t (steps t..S-1 with `reverse`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown mLSTM backend {backend!r}; expected one of {BACKENDS}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"mlstm expects q, k (B, NH, S, DK) and v (B, NH, S, DV), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if igate.shape != q.shape[:3] or fgate.shape != q.shape[:3]:
        raise ValueError(
            f"mlstm expects gates of shape (B, NH, S) = {tuple(q.shape[:3])}, "
            f"got igate {tuple(igate.shape)}, fgate {tuple(fgate.shape)}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    if backend == "auto":
        backend = select_backend(S, q.device, q.dtype)
    if backend == "triton":
        return _triton(q, k, v, igate, fgate, chunk_size, eps, initial_state, return_state, reverse)

    compute_dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    with torch.autocast(q.device.type, enabled=False):
        q_, k_, v_, i_, f_ = (t.to(compute_dtype) for t in (q, k, v, igate, fgate))
        k_ = k_ * (1.0 / math.sqrt(DK))  # the key scaling of the contract, applied once here
        logf = F.logsigmoid(f_)  # (B, NH, S)
        if initial_state is None:
            state = None
        else:
            C0, n0, m0 = initial_state
            if C0.shape != (B, NH, DK, DV) or n0.shape != (B, NH, DK) or m0.shape != (B, NH):
                raise ValueError(
                    f"initial_state must be C {(B, NH, DK, DV)}, n {(B, NH, DK)}, m {(B, NH)}; got "
                    f"{tuple(C0.shape)}, {tuple(n0.shape)}, {tuple(m0.shape)}"
                )
            state = MLSTMState(C0.to(compute_dtype), n0.to(compute_dtype), m0.to(compute_dtype))
        if S == 0:  # nothing to scan: empty output, state unchanged
            h = v_.new_zeros(B, NH, 0, DV)
            last = state if state is not None else empty_state(B, NH, DK, DV, dtype=compute_dtype, device=q.device)
        elif backend == "parallel":
            h, last = _parallel(q_, k_, v_, i_, logf, state, eps, return_state, reverse)
        elif backend == "chunkwise":
            h, last = _chunkwise(q_, k_, v_, i_, logf, state, eps, chunk_size, return_state, reverse)
        else:
            h, last = _recurrent(q_, k_, v_, i_, logf, state, eps, reverse)
    h = h.to(v.dtype)
    return (h, last) if return_state else h


def _triton(q, k, v, igate, fgate, chunk_size, eps, initial_state, return_state, reverse):
    """The fused kernel of ultra_vil/mlstm_triton.py, imported only when asked for (triton is optional)."""
    try:
        from ultra_vil import mlstm_triton
    except ImportError as e:  # triton itself, or the module, is missing
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor, or TRITON_INTERPRET=1") from e
    if not mlstm_triton.available(q.device):
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor, or TRITON_INTERPRET=1")
    if reverse:  # the kernel only runs forward in time: flip around it
        q, k, v, igate, fgate = (t.flip(2) for t in (q, k, v, igate, fgate))
    h, last = mlstm_triton.mlstm_triton(
        q, k, v, igate, fgate, chunk_size=chunk_size, eps=eps, initial_state=initial_state, return_state=return_state
    )
    if reverse:
        h = h.flip(2)
    return (h, last) if return_state else h


def _readout(num: Tensor, den: Tensor, m: Tensor, eps: float) -> Tensor:
    """h = num / (max(|den|, exp(-m)) + eps). num (..., DV), den and m (...)."""
    normaliser = torch.maximum(den.abs(), torch.exp(-m))
    return num / (normaliser + eps).unsqueeze(-1)


def _cumsum(x: Tensor, reverse: bool) -> Tensor:
    """Inclusive cumulative sum along the last dim in traversal order: sum_{r<=t}, or sum_{r>=t} with reverse."""
    return x.flip(-1).cumsum(-1).flip(-1) if reverse else x.cumsum(-1)


def _order_mask(rows: int, cols: int, reverse: bool, device, strict: bool = False) -> Tensor:
    """(rows, cols) bool: column s is traversed no later than row t (s <= t; s >= t with reverse); strict: before."""
    ones = torch.ones(rows, cols, dtype=torch.bool, device=device)
    return ones.triu(int(strict)) if reverse else ones.tril(-int(strict))


def _parallel(q, k, v, i, logf, state, eps, return_state, reverse=False):
    """Quadratic form; `state` enters as one extra, already-accumulated 'step' before the first traversed one."""
    B, NH, S, DK = q.shape
    Fcum = _cumsum(logf, reverse)  # (B, NH, S)  log decay from the traversal's start to step t
    logD = Fcum[..., :, None] - Fcum[..., None, :] + i[..., None, :]  # (B, NH, S, S)
    logD = logD.masked_fill(~_order_mask(S, S, reverse, q.device), float("-inf"))
    m = logD.amax(-1)  # (B, NH, S)
    if state is not None:
        log_state = Fcum + state.m[..., None]  # (B, NH, S)  weight of the carried state at step t
        m = torch.maximum(m, log_state)
    D = torch.exp(logD - m[..., None])  # (B, NH, S, S)  <= 1
    Cmat = (q @ k.transpose(-2, -1)) * D  # (B, NH, S, S)
    num = Cmat @ v  # (B, NH, S, DV)
    den = Cmat.sum(-1)  # (B, NH, S)
    if state is not None:
        w = torch.exp(log_state - m)  # (B, NH, S)
        num = num + w[..., None] * (q @ state.C)
        den = den + w * (q @ state.n[..., None]).squeeze(-1)
    h = _readout(num, den, m, eps)
    last = None
    if return_state:
        # the state after the last traversed step, from the same weights the last row of the quadratic form uses
        end = 0 if reverse else S - 1
        a = Fcum[..., end : end + 1] - Fcum + i  # (B, NH, S)  log weight of input s at the end
        m_end = a.amax(-1)  # (B, NH)
        if state is not None:
            m_end = torch.maximum(m_end, Fcum[..., end] + state.m)
        wa = torch.exp(a - m_end[..., None])  # (B, NH, S)
        C_end = (k * wa[..., None]).transpose(-2, -1) @ v  # (B, NH, DK, DV)
        n_end = (k * wa[..., None]).sum(-2)  # (B, NH, DK)
        if state is not None:
            ws = torch.exp(Fcum[..., end] + state.m - m_end)  # (B, NH)
            C_end = C_end + ws[..., None, None] * state.C
            n_end = n_end + ws[..., None] * state.n
        last = MLSTMState(C_end, n_end, m_end)
    return h, last


def _chunkwise(q, k, v, i, logf, state, eps, L, return_state, reverse=False):
    """Chunks of L steps: each chunk's summary, the state entering every chunk, then all chunks in parallel.

    The traversal's end (the end of the sequence, its front with reverse) is padded to a multiple of L with
    steps that neither write (input gate -inf) nor forget (log forget gate 0), so padding changes neither
    earlier outputs nor the final state. Memory is O(S * (L + DK * DV / L)) per batch and head: linear in S.
    """
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    pad = (-S) % L
    if pad:
        where = (pad, 0) if reverse else (0, pad)
        q, k, v = (F.pad(t, (0, 0, *where)) for t in (q, k, v))
        i = F.pad(i, where, value=float("-inf"))
        logf = F.pad(logf, where, value=0.0)
    NC = (S + pad) // L
    qc, kc, vc = (t.reshape(B, NH, NC, L, t.shape[-1]) for t in (q, k, v))  # (B, NH, NC, L, D*)
    ic, fc = i.reshape(B, NH, NC, L), logf.reshape(B, NH, NC, L)
    Fc = _cumsum(fc, reverse)  # (B, NH, NC, L)  decay from the chunk's traversal start to step t (inclusive)
    g = Fc[..., 0] if reverse else Fc[..., -1]  # (B, NH, NC)  decay over the whole chunk

    # what each chunk alone writes into the memory, stabilised by its own max
    a = g[..., None] - Fc + ic  # (B, NH, NC, L)  log weight of input s at the chunk's traversal end
    m_loc = a.amax(-1)  # (B, NH, NC)  finite: every chunk holds at least one real step
    wa = torch.exp(a - m_loc[..., None])  # (B, NH, NC, L)
    kw = kc * wa[..., None]  # (B, NH, NC, L, DK)
    C_loc = kw.transpose(-2, -1) @ vc  # (B, NH, NC, DK, DV)
    n_loc = kw.sum(-2)  # (B, NH, NC, DK)

    # the state entering each chunk c = 0..NC-1 and the final state (row NC), all at once: the scan over chunks is
    # linear, so state c is a weighted sum of the summaries of the chunks j traversed before it (and the initial
    # state), with log weights decay(end of chunk j -> start of chunk c) + m_loc[j]; no Python loop, so compile
    # does not unroll NC steps.
    # These are sums over the whole sequence; differences of such sums lose digits in float32 once they are large
    # (ulp(1e5) ~ 0.008 in the exponent), so the (small, O(NC^2)) log weights are formed in float64
    A = _cumsum(g.double(), reverse)  # (B, NH, NC)  decay from the traversal's start to the end of chunk c
    Gex = A - g.double()  # (B, NH, NC)  ... to the start of chunk c
    Gex = torch.cat([Gex, A[..., :1] if reverse else A[..., -1:]], -1)  # (B, NH, NC+1)  row NC: the end
    logw = (Gex[..., :, None] - A[..., None, :] + m_loc[..., None, :]).to(q.dtype)  # (B, NH, NC+1, NC)
    before = torch.ones(NC + 1, NC, dtype=torch.bool, device=q.device)
    before[:NC] = _order_mask(NC, NC, reverse, q.device, strict=True)  # j traversed before c; all j before the end
    logw = logw.masked_fill(~before, float("-inf"))
    m_in_all = logw.amax(-1)  # (B, NH, NC+1); -inf where nothing was written yet
    if state is not None:
        log_init = (Gex + state.m[..., None]).to(q.dtype)  # (B, NH, NC+1)
        m_in_all = torch.maximum(m_in_all, log_init)
    m_ref = torch.where(torch.isfinite(m_in_all), m_in_all, torch.zeros_like(m_in_all))  # no exp(-inf - -inf)
    w_in = torch.exp(logw - m_ref[..., None])  # (B, NH, NC+1, NC)
    C_all = (w_in @ C_loc.flatten(-2)).unflatten(-1, (DK, DV))  # (B, NH, NC+1, DK, DV)
    n_all = w_in @ n_loc  # (B, NH, NC+1, DK)
    if state is not None:
        w0 = torch.exp(log_init - m_ref)  # (B, NH, NC+1)
        C_all = C_all + w0[..., None, None] * state.C[:, :, None]
        n_all = n_all + w0[..., None] * state.n[:, :, None]
    # m_in stays -inf while the state is empty, so an empty state cannot move the stabiliser of any output
    C_in, n_in, m_in = C_all[:, :, :NC], n_all[:, :, :NC], m_in_all[..., :NC]  # entering chunk c
    last = MLSTMState(C_all[:, :, NC], n_all[:, :, NC], m_in_all[..., NC]) if return_state else None

    # outputs: the carried state plus the (anti-)causal quadratic form inside each chunk
    log_state = Fc + m_in[..., None]  # (B, NH, NC, L)
    logD = Fc[..., :, None] - Fc[..., None, :] + ic[..., None, :]  # (B, NH, NC, L, L)
    logD = logD.masked_fill(~_order_mask(L, L, reverse, q.device), float("-inf"))
    m_t = torch.maximum(logD.amax(-1), log_state)  # (B, NH, NC, L)
    D = torch.exp(logD - m_t[..., None])  # (B, NH, NC, L, L)
    Cmat = (qc @ kc.transpose(-2, -1)) * D  # (B, NH, NC, L, L)
    w = torch.exp(log_state - m_t)  # (B, NH, NC, L)
    num = Cmat @ vc + w[..., None] * (qc @ C_in)  # (B, NH, NC, L, DV)
    den = Cmat.sum(-1) + w * (qc @ n_in[..., None]).squeeze(-1)  # (B, NH, NC, L)
    h = _readout(num, den, m_t, eps).reshape(B, NH, NC * L, DV)  # (B, NH, S + pad, DV)
    return (h[:, :, pad:] if reverse else h[:, :, :S]), last


def _recurrent(q, k, v, i, logf, state, eps, reverse=False):
    """One step at a time: the specification the other backends are tested against."""
    B, NH, S, DK = q.shape
    if state is None:
        state = empty_state(B, NH, DK, v.shape[-1], dtype=q.dtype, device=q.device)
    hs = []
    for t in range(S - 1, -1, -1) if reverse else range(S):
        h_t, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], logf[:, :, t], state, eps)
        hs.append(h_t)
    return torch.stack(hs[::-1] if reverse else hs, 2), state  # (B, NH, S, DV)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, state: MLSTMState, eps: float = 1e-6):
    """One recurrent step on already-scaled keys and log forget gates.

    Args:
        q, k: (B, NH, DK), k already multiplied by 1/sqrt(DK).
        v: (B, NH, DV).
        i: Input-gate pre-activation, (B, NH).
        logf: logsigmoid of the forget-gate pre-activation, (B, NH).
        state: The state after the previous step.

    Returns:
        (h_t (B, NH, DV), the new state).
    """
    C, n, m = state
    m_new = torch.maximum(logf + m, i)  # (B, NH)
    f_ = torch.exp(logf + m - m_new)  # (B, NH)  0 while the state is empty (m = -inf)
    i_ = torch.exp(i - m_new)  # (B, NH)
    C = f_[..., None, None] * C + i_[..., None, None] * (k[..., :, None] * v[..., None, :])  # (B, NH, DK, DV)
    n = f_[..., None] * n + i_[..., None] * k  # (B, NH, DK)
    num = (q[..., None, :] @ C).squeeze(-2)  # (B, NH, DV)
    den = (q * n).sum(-1)  # (B, NH)
    return _readout(num, den, m_new, eps), MLSTMState(C, n, m_new)
