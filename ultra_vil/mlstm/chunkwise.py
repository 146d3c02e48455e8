"""The chunked scan behind `backend="parallel"` (one chunk: the stabilised quadratic form) and `"chunkwise"`.

Chunks of L steps with the (C, n, m) state carried between them, in one autograd Function with a hand-written
backward (activation memory linear in S). Shared numerics (gates, readout, state) come from `recurrent`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .recurrent import EXP_MAX, LOGF_MIN, _finite_ref


def _cumsum(x: Tensor, reverse: bool) -> Tensor:
    """Inclusive cumulative sum along the last dim in traversal order: sum_{r<=t}, or sum_{r>=t} with reverse."""
    return x.flip(-1).cumsum(-1).flip(-1) if reverse else x.cumsum(-1)


def _order_mask(rows: int, cols: int, reverse: bool, device, strict: bool = False) -> Tensor:
    """(rows, cols) bool: column s is traversed no later than row t (s <= t; s >= t with reverse); strict: before."""
    ones = torch.ones(rows, cols, dtype=torch.bool, device=device)
    return ones.triu(int(strict)) if reverse else ones.tril(-int(strict))


def _cumsum_adjoint(x: Tensor, reverse: bool) -> Tensor:
    """The backward of `_cumsum(., reverse)`: the cumulative sum the other way."""
    return _cumsum(x, not reverse)


def _sanitize(k: Tensor, v: Tensor, i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a non-finite key or value at step t out of every output before t.

    The quadratic and chunk forms multiply weights that are exactly 0 (future steps) with keys and values, and
    0 * NaN = NaN: one bad step would poison the whole sequence. Such steps get k = v = 0 and an input gate of NaN
    instead, so the NaN reaches exactly the outputs the recurrence would spoil (t and later) through the gates,
    which are masked with `where`. One read of k and v; the copies only when something is non-finite (CPU, eager)
    or always (CUDA and compile: no host sync, no graph break).
    """
    bad = ~torch.isfinite(k.sum(-1, dtype=i.dtype) + v.sum(-1, dtype=i.dtype))  # (B, NH, S)
    if k.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(bad.any()):
        return k, v, i
    return (
        k.masked_fill(bad[..., None], 0.0),
        v.masked_fill(bad[..., None], 0.0),
        i.masked_fill(bad, float("nan")),
    )


def _decay_cumsum(logf: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """The inclusive cumulative log decay `_cumsum(logf, reverse)` as float64 (sum of the other steps, number of
    steps clamped at LOGF_MIN): the decay is their `sum + count * LOGF_MIN`.

    Summed into one running sum, a clamped step would round every later partial sum to ulp(1e5) ~ 1.5e-11, and those
    roundings would add up along the sequence; kept apart, each decay is rounded once, when the two are combined.
    """
    x = logf.double()
    clamped = x == LOGF_MIN
    return _cumsum(x.masked_fill(clamped, 0.0), reverse), _cumsum(clamped.double(), reverse)


def _chunk_gates(ic: Tensor, fc: Tensor, reverse: bool):
    """Per-chunk log weights, (..., NC, L) gate tensors in -> the pieces both passes need.

    Returns:
        row: (..., NC, L) decay from the chunk's traversal start to step t, rounded to the compute dtype.
        col: (..., NC, L) i_s minus the rounding error of row_s, so row_t - row_s + col_s is the decay t <- s plus
            i_s to full precision: the difference is formed from two rounded numbers, exact to the rounding of the
            result itself, not of the (possibly large) cumulative sums. The error left, row_t's own rounding, shifts
            all of row t's log weights (and its stabiliser) alike, which num and den do not see.
        a: (..., NC, L) log weight of input s at the chunk's traversal end.
        g: (..., NC) float64 decay over the whole chunk.
        lo: (..., NC, L) row's rounding error (see col): the readout's exp(-m_t) needs the true
            m_t = (shifted m_t) + lo_t.
        A: ((..., NC), (..., NC)) float64 decay from the sequence's traversal start to the end of chunk c (the
            cumulative sum of g) as `_decay_cumsum`'s two parts, for `_chunk_mix`.

    The decays come from `_decay_cumsum` (clamped steps counted apart from the sum) and differences are taken part
    by part, so a clamped step costs no precision: lo is row's error against the exact sum + count * LOGF_MIN,
    which float64 may not hold (ulp(1e5) ~ 1.5e-11), so float64 rows get the same correction as float32 ones.
    """
    fin, cnt = _decay_cumsum(fc, reverse)  # (..., NC, L)  float64: no digits lost to the running sum
    end = 0 if reverse else -1
    g_fin, g_cnt = fin[..., end], cnt[..., end]  # (..., NC)
    g = g_fin + g_cnt * LOGF_MIN
    clamped = cnt * LOGF_MIN  # (..., NC, L)  exact: small integer multiples of LOGF_MIN
    row = (fin + clamped).to(fc.dtype)
    lo = (fin - (row.double() - clamped)).to(fc.dtype)  # row - clamped is exact (both near count * LOGF_MIN)
    col = ic - lo
    a = ((g_fin[..., None] - fin) + (g_cnt[..., None] - cnt) * LOGF_MIN).to(fc.dtype) + ic
    A = (_cumsum(g_fin, reverse), _cumsum(g_cnt, reverse))
    return row, col, a, g, lo, A


def _chunk_mix(A: tuple[Tensor, Tensor], m_loc: Tensor, m0: Tensor | None, reverse: bool, dtype: torch.dtype):
    """Log weights of the chunk summaries in the state entering chunk c = 0..NC-1 and in the final state (row NC).

    State c is a weighted sum of the summaries of the chunks j traversed before it (and the initial state), with log
    weight decay(end of chunk j -> start of chunk c) + m_loc[j]; the scan over chunks is linear, so all rows come at
    once (no Python loop: compile does not unroll NC steps). These decays are differences of sums over the whole
    sequence, so they are formed in float64 (ulp(1e5) ~ 0.008 in float32), part by part (see `_decay_cumsum`);
    the matrix is only (NC+1, NC).

    A: the decay from the traversal's start to the end of chunk c, (sum, clamped count), each (..., NC), from
    `_chunk_gates`. Returns logw (..., NC+1, NC) (-inf where j is not before c) and log_init (..., NC+1) or None.
    """
    NC = A[0].shape[-1]

    def to_start(x: Tensor) -> Tensor:  # (..., NC) to chunk ends -> (..., NC+1) to chunk starts, row NC: the end
        # (= x - g, formed without g so a NaN in chunk c reaches only later chunks)
        parts = [F.pad(x[..., 1:], (0, 1)), x[..., :1]] if reverse else [F.pad(x[..., :-1], (1, 0)), x[..., -1:]]
        return torch.cat(parts, -1)

    (A_fin, A_cnt), (G_fin, G_cnt) = A, (to_start(A[0]), to_start(A[1]))
    before = torch.ones(NC + 1, NC, dtype=torch.bool, device=A_fin.device)
    before[:NC] = _order_mask(NC, NC, reverse, A_fin.device, strict=True)
    decay = (G_fin[..., :, None] - A_fin[..., None, :]) + (G_cnt[..., :, None] - A_cnt[..., None, :]) * LOGF_MIN
    logw = decay.to(dtype) + m_loc[..., None, :]  # (..., NC+1, NC)
    logw = logw.masked_fill(~before, float("-inf"))
    log_init = None if m0 is None else (G_fin + G_cnt * LOGF_MIN + m0[..., None].double()).to(dtype)
    return logw, log_init


# Above this many chunks the states are mixed by a loop over chunks (two multiply-adds of (DK, DV) a chunk) instead
# of one (NC+1, NC) matmul: measured on CPU (B=8, NH=4, DK=DV=64, chunk 64; the scan alone, fwd + its backward
# product): equal at NC = 25 (S = 1600), the loop 2x faster at NC = 100 (S = 6400). The maxima stay vectorised.
LOOP_MIN_CHUNKS = 32


def _scan_weights(g, m_loc, m_all, reverse):
    """Per chunk c: the decay and write weights of one step of the state recurrence over chunks,
    state_after = alpha_c * state_before + beta_c * summary_c, all stabilised; and the traversal order."""
    NC = g.shape[-1]
    m_before = m_all[..., :NC]  # (B, NH, NC)  entering chunk c
    if reverse:  # after chunk c comes the state entering chunk c-1; after chunk 0, the final one
        m_after = torch.cat([m_all[..., NC:], m_all[..., : NC - 1]], -1)
    else:
        m_after = m_all[..., 1:]
    ref = _finite_ref(m_after)
    alpha = torch.exp(g.to(m_all.dtype) + m_before - ref)  # (B, NH, NC)  0 while the state is empty
    beta = torch.exp(m_loc - ref)  # (B, NH, NC)
    order = range(NC - 1, -1, -1) if reverse else range(NC)
    return alpha, beta, order


def _state_scan(C_loc, n_loc, g, m_loc, m_all, C0, n0, reverse):
    """C_all, n_all (the state entering each chunk; row NC the final one) by a loop in traversal order."""
    B, NH, NC, DK, DV = C_loc.shape
    alpha, beta, order = _scan_weights(g, m_loc, m_all, reverse)
    C_all = C_loc.new_empty(B, NH, NC + 1, DK, DV)
    n_all = n_loc.new_empty(B, NH, NC + 1, DK)
    C = C_loc.new_zeros(B, NH, DK, DV) if C0 is None else C0  # m_all of the first chunk is m0: weight 1
    n = n_loc.new_zeros(B, NH, DK) if n0 is None else n0
    for c in order:
        C_all[:, :, c], n_all[:, :, c] = C, n
        a, b = alpha[..., c], beta[..., c]
        C = torch.addcmul(a[..., None, None] * C, b[..., None, None], C_loc[:, :, c])
        n = torch.addcmul(a[..., None] * n, b[..., None], n_loc[:, :, c])
    C_all[:, :, NC], n_all[:, :, NC] = C, n
    return C_all, n_all


def _state_scan_backward(dC_all, dn_all, g, m_loc, m_all, log_init, reverse):
    """The adjoint of `_state_scan`: (dC_loc, dn_loc, dC0, dn0), by the same loop the other way."""
    B, NH, NC1, DK, DV = dC_all.shape
    NC = NC1 - 1
    alpha, beta, order = _scan_weights(g, m_loc, m_all, reverse)
    dC_loc = dC_all.new_empty(B, NH, NC, DK, DV)
    dn_loc = dn_all.new_empty(B, NH, NC, DK)
    T, t = dC_all[:, :, NC], dn_all[:, :, NC]  # adjoint of the state after the chunk being undone
    for c in reversed(order):
        a, b = alpha[..., c], beta[..., c]
        dC_loc[:, :, c], dn_loc[:, :, c] = b[..., None, None] * T, b[..., None] * t
        T = torch.addcmul(dC_all[:, :, c], a[..., None, None], T)
        t = torch.addcmul(dn_all[:, :, c], a[..., None], t)
    if log_init is None:
        return dC_loc, dn_loc, None, None
    return dC_loc, dn_loc, T, t  # the first chunk's m is m0, so C0 enters with weight 1


# The chunked scan's two passes, as plain functions: ultra_vil/mlstm/ops.py registers them as one torch.library
# custom op with its autograd formula, so that torch.compile treats the scan as one opaque call.
#
# A hand-written backward that recomputes the (L, L) matrices (FlashAttention-style). Saved for backward: q, k, v,
# the gates, the (C, n, m) state entering every chunk, and per step m and the normaliser's denominator:
# O(S * (DK + DV) + S / L * DK * DV) per batch and head, nothing of size S * L. The parallel backend is this with
# one chunk of L = S. Inputs are chunked views (B, NH, NC, L, D) of tensors whose S is a multiple of L (the
# caller pads). The stabilisers (m of every state, m_loc of every summary) cancel out of h except through the
# normaliser's max(|den|, exp(-m_t)) + eps; backward differentiates that dependence through the chain of maxima
# (to the argmax of each), which is what autograd does on the recurrence.


def chunks_forward(qc, kc, vc, ic, fc, C0, n0, m0, eps: float, reverse: bool, out_dtype, need_final: bool):
    """The scan's outputs and what its backward needs: (h (B, NH, NC, L, DV), C_all (B, NH, NC+1, DK, DV),
    n_all (B, NH, NC+1, DK), m_all (B, NH, NC+1), den, m_t (B, NH, NC, L), kept). Row c < NC of the states enters
    chunk c, row NC is the final state; `kept` is () or, for one chunk, (D, P, argmax, row max) of its (L, L) form.
    """
    B, NH, NC, L, DK = qc.shape
    DV = vc.shape[-1]
    acc = ic.dtype
    log_scale = -0.5 * math.log(DK)  # keys scaled by 1/sqrt(DK), folded into the exponents
    row, col, a, g, lo, A = _chunk_gates(ic, fc, reverse)

    # what each chunk alone writes into the memory, stabilised by its own max (-inf: nothing written). One chunk
    # and no final state wanted (the parallel backend's usual call): no summary is read, so none is made
    skip = NC == 1 and not need_final
    if skip:
        m_loc = torch.full_like(g, float("-inf"), dtype=acc)  # (B, NH, 1)
        n_loc = qc.new_zeros(B, NH, 1, DK, dtype=acc)
        C_loc = qc.new_zeros(B, NH, 1, DK, DV, dtype=acc)
    else:
        m_loc = a.amax(-1)  # (B, NH, NC)
        wa = torch.exp(a - (_finite_ref(m_loc) - log_scale)[..., None]).nan_to_num_(nan=0.0)  # (B, NH, NC, L)
        kw = kc * wa[..., None]  # (B, NH, NC, L, DK)  acc dtype; scaled keys times their write weights
        n_loc = kw.sum(-2)  # (B, NH, NC, DK)
        C_loc = _mm(kw.to(qc.dtype).transpose(-2, -1), vc, acc)  # (B, NH, NC, DK, DV)
        del kw

    logw, log_init = _chunk_mix(A, m_loc, m0, reverse, acc)
    m_all = logw.amax(-1)  # (B, NH, NC+1)
    if log_init is not None:
        m_all = torch.maximum(m_all, log_init)
    if NC > LOOP_MIN_CHUNKS:  # the loop: O(NC) work where the matmul below is O(NC^2)
        C_all, n_all = _state_scan(C_loc, n_loc, g, m_loc, m_all, C0, n0, reverse)
    else:
        w_in = torch.exp(logw - _finite_ref(m_all)[..., None])  # (B, NH, NC+1, NC)
        C_all = (w_in @ C_loc.flatten(-2)).unflatten(-1, (DK, DV))  # (B, NH, NC+1, DK, DV)
        n_all = w_in @ n_loc  # (B, NH, NC+1, DK)
        if log_init is not None:
            w0 = torch.exp(log_init - _finite_ref(m_all))  # (B, NH, NC+1)
            C_all += w0[..., None, None] * C0[:, :, None]
            n_all += w0[..., None] * n0[:, :, None]
        del w_in
    del C_loc

    has_state = NC > 1 or C0 is not None  # else every chunk starts empty: no state terms to compute
    # one chunk (the parallel backend): the quadratic form's memory is O(S^2) anyway, so keep its two (S, S)
    # matrices for backward instead of recomputing them (short sequences: speed matters more than memory)
    keep = NC == 1
    h, den, m_t, kept = _intra_forward(qc, kc, vc, row, col, lo, C_all[:, :, :NC], n_all[:, :, :NC],
                                       m_all[..., :NC], eps, reverse, log_scale, out_dtype, has_state, keep)
    return h, C_all, n_all, m_all, den, m_t, kept


def chunks_backward(saved, kept, dh, dC_fin, dn_fin, dm_fin, eps: float, reverse: bool, need_final: bool):
    """The gradients (dq, dk, dv, di, df, dC0, dn0, dm0; None for an absent initial state) of `chunks_forward`'s
    inputs from those of h and the final state. `saved`: (qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all,
    h, den, m_t), its inputs and outputs; `kept`: its `kept`.

    Long (about 90 lines) on purpose: one pass of the reverse-mode formulas, kept in the order of the forward's
    steps (chunk gates, inter-chunk states, intra-chunk matrices recomputed, then q/k/v/gate gradients) so
    that each line can be checked against its forward line; split into helpers it would pass a dozen tensors
    between them. Tested against the float64 recurrence's autograd gradients.
    """
    qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all, h, den, m_t = saved
    B, NH, NC, L, DK = qc.shape
    skip = NC == 1 and not need_final  # as forward decided
    has_state = NC > 1 or C0 is not None
    acc = ic.dtype
    mm = qc.dtype
    log_scale = -0.5 * math.log(DK)
    row, col, a, g, lo, A = _chunk_gates(ic, fc, reverse)
    C_in, n_in, m_in = C_all[:, :, :NC], n_all[:, :, :NC], m_all[..., :NC]

    # the readout h = num / nrm, nrm = max(|den|, e) + eps, e = exp(-m_t) (capped)
    dh = dh.to(acc)
    e = torch.exp((-m_t - lo).clamp(max=EXP_MAX[acc]))
    den_wins = den.abs() >= e
    nrm = torch.where(den_wins, den.abs(), e) + eps  # (B, NH, NC, L)
    dhh = (dh * h).sum(-1)  # (B, NH, NC, L)  dh . h
    dnum = dh / nrm[..., None]  # (B, NH, NC, L, DV)
    dden = torch.where(den_wins, -dhh / nrm * den.sign(), 0.0)
    # m_t moves num, den and e together; what is left is the eps term (and e's cap): dm = -eps (dh . h) / nrm
    e_live = torch.where(den_wins, den.abs(), torch.where(-m_t - lo < EXP_MAX[acc], e, 0.0))
    dm_t = dhh * (e_live / nrm - 1.0)  # (B, NH, NC, L)

    dq, dk, dv, dlogD_row, dlogD_col, dls, dC_in, dn_in, state_wins, idx = _intra_backward(
        qc, kc, vc, row, col, C_in, n_in, m_in, m_t, dnum, dden, reverse, log_scale, has_state, kept
    )
    # route dm_t to the argmax of its row: one step of the chunk, or the carried state
    dm_row = torch.where(state_wins, 0.0, dm_t)
    dls = dls + torch.where(state_wins, dm_t, 0.0)
    dm_in = torch.where(state_wins, dm_t, 0.0).sum(-1)  # (B, NH, NC)  the chain to earlier chunks
    dFc = dlogD_row - dlogD_col + dls + dm_row
    dFc.scatter_add_(-1, idx, -dm_row)
    dic = dlogD_col.scatter_add(-1, idx, dm_row)

    # the states: row c < NC of C_all enters chunk c, row NC is the final state (an output)
    dC_all = torch.cat([dC_in, dC_fin[:, :, None].to(acc)], 2)  # (B, NH, NC+1, DK, DV)
    dn_all = torch.cat([dn_in, dn_fin[:, :, None].to(acc)], 2)  # (B, NH, NC+1, DK)
    # the final m is an output: the stabilised C and n move against it
    dm_end = dm_fin.to(acc) - (dC_fin * C_all[:, :, NC]).sum((-2, -1)) - (dn_fin * n_all[:, :, NC]).sum(-1)
    dm_all = torch.cat([dm_in, dm_end[..., None]], -1)  # (B, NH, NC+1)
    dm_all = dm_all.masked_fill(m_all == float("-inf"), 0.0)  # an empty state's m = -inf depends on nothing
    dGex = (dC_all * C_all).sum((-2, -1)) + (dn_all * n_all).sum(-1) + dm_all  # (B, NH, NC+1)

    m_loc = torch.full_like(g, float("-inf"), dtype=acc) if skip else a.amax(-1)
    logw, log_init = _chunk_mix(A, m_loc, m0, reverse, acc)
    m_ref = _finite_ref(m_all)
    dC0 = dn0 = dm0 = None
    if NC > LOOP_MIN_CHUNKS:
        dC_loc, dn_loc, dC0, dn0 = _state_scan_backward(dC_all, dn_all, g, m_loc, m_all, log_init, reverse)
    else:
        w_in = torch.exp(logw - m_ref[..., None])  # (B, NH, NC+1, NC)
        dC_loc = (w_in.transpose(-2, -1) @ dC_all.flatten(-2)).unflatten(-1, C_all.shape[-2:])  # (B,NH,NC,DK,DV)
        dn_loc = w_in.transpose(-2, -1) @ dn_all  # (B, NH, NC, DK)
        if log_init is not None:
            w0 = torch.exp(log_init - m_ref)  # (B, NH, NC+1)
            dC0 = (w0[..., None, None] * dC_all).sum(2)
            dn0 = (w0[..., None] * dn_all).sum(2)
    if log_init is not None:
        dm0 = (dC0 * C0).sum((-2, -1)) + (dn0 * n0).sum(-1)
    # dm_all to the argmax of each state's stabiliser: a chunk summary j, or the initial state
    lw_max, j_star = logw.max(-1)  # (B, NH, NC+1)
    init_wins = (log_init > lw_max) if log_init is not None else torch.zeros_like(lw_max, dtype=torch.bool)
    dm_chunk = torch.where(init_wins | (lw_max == float("-inf")), 0.0, dm_all)
    if dm0 is not None:
        dm0 = dm0 + torch.where(init_wins, dm_all, 0.0).sum(-1)
    dm_loc = torch.zeros_like(m_loc).scatter_add_(-1, j_star, dm_chunk)  # (B, NH, NC)
    dA = -torch.zeros_like(m_loc).scatter_add_(-1, j_star, dm_chunk)

    # the summaries C_loc = sum_s wa_s k_s v_s^T (keys scaled), n_loc = sum_s wa_s k_s
    if skip:  # none was made: nothing reads them
        da = torch.zeros_like(a)
    else:
        wa = torch.exp(a - (_finite_ref(m_loc) - log_scale)[..., None]).nan_to_num_(nan=0.0)  # (B, NH, NC, L)
        dC_loc_mm = dC_loc.to(mm)
        Z = _mm(vc, dC_loc_mm.transpose(-2, -1), acc) + dn_loc[:, :, :, None]  # (B, NH, NC, L, DK)
        dk = dk.addcmul_(Z, wa[..., None])
        da = (kc * Z).sum(-1) * wa  # (B, NH, NC, L)
        dv = dv + _mm((kc * wa[..., None]).to(mm), dC_loc_mm, acc)
        dA = dA - da.sum(-1)
        _, s_star = a.max(-1)  # (B, NH, NC)
        da = da.scatter_add(-1, s_star[..., None], dm_loc[..., None])

    # a = g - Fc + i;  A = cumsum(g) over chunks, Gex = [A - g, A[end]];  g = Fc[end of chunk]
    dic = dic + da
    dFc = dFc - da
    dg = da.sum(-1) - dGex[..., :NC]
    dA = dA + dGex[..., :NC]
    end = 0 if reverse else NC - 1
    dA[..., end] += dGex[..., NC]
    dg = dg + _cumsum_adjoint(dA, reverse)
    dFc[..., 0 if reverse else L - 1] += dg
    dfc = _cumsum_adjoint(dFc, reverse)
    return dq.to(mm), dk.to(mm), dv.to(mm), dic, dfc, dC0, dn0, dm0


def _mm(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """a @ b for operands in the matmul dtype, accumulated and returned in `acc` (float32 out of bf16/fp16 inputs:
    tensor cores on CUDA; on CPU the same numbers by upcasting the operands)."""
    if a.dtype == acc:
        return a @ b
    if a.is_cuda:
        *batch, M, K = a.shape
        N = b.shape[-1]
        return torch.bmm(a.reshape(-1, M, K), b.reshape(-1, K, N), out_dtype=acc).reshape(*batch, M, N)
    return a.to(acc) @ b.to(acc)


def _intra_forward(qc, kc, vc, row, col, lo, C_in, n_in, m_in, eps, reverse, log_scale, out_dtype, has_state=True,
                   keep=False):
    """Outputs of every chunk: the (anti-)causal quadratic form inside it plus its entering state.

    Returns h, den, m_t and, with `keep`, (D, P, argmax of each row) for backward (else ())."""
    acc, mm = row.dtype, qc.dtype
    L = qc.shape[-2]
    logD = row[..., :, None] - row[..., None, :]  # (B, NH, NC, L, L)  decay t <- s
    logD += col[..., None, :]
    logD.masked_fill_(~_order_mask(L, L, reverse, qc.device), float("-inf"))
    if keep:
        m_t, idx = logD.max(-1)  # (B, NH, NC, L)
        mrow = m_t
    else:
        m_t = logD.amax(-1)  # (B, NH, NC, L)
    if has_state:
        ls = row + m_in[..., None]  # (B, NH, NC, L)  log weight of the entering state at step t
        m_t = torch.maximum(m_t, ls)
    m_ref = _finite_ref(m_t)
    D = logD.sub_((m_ref - log_scale)[..., None]).exp_()  # (B, NH, NC, L, L)  weights times 1/sqrt(DK)
    P = _mm(qc, kc.transpose(-2, -1), acc).mul_(D)  # (B, NH, NC, L, L)
    kept = (D, P, idx, mrow) if keep else ()
    del D, logD
    den = P.sum(-1)  # (B, NH, NC, L)
    num = _mm(P.to(mm), vc, acc)  # (B, NH, NC, L, DV)
    if has_state:
        w = torch.exp(ls - m_ref)  # (B, NH, NC, L)
        # q . n in float32: den is a sum with cancellation (small where h is large); n in bf16 costs 0.3 in dq
        den = den + w * (qc * n_in[:, :, :, None, :]).sum(-1)
        num = num.addcmul_(w[..., None], _mm(qc, C_in.to(mm), acc))
    nrm = torch.maximum(den.abs(), torch.exp((-m_t - lo).clamp(max=EXP_MAX[acc]))) + eps  # m_t + lo: the true m
    h = num.div_(nrm[..., None]).to(out_dtype)
    return h, den, m_t, kept


def _intra_backward(qc, kc, vc, row, col, C_in, n_in, m_in, m_t, dnum, dden, reverse, log_scale, has_state=True,
                    kept=()):
    """Backward of `_intra_forward` with m_t held fixed; recomputes the (L, L) matrices unless forward kept them."""
    acc, mm = row.dtype, qc.dtype
    L = qc.shape[-2]
    m_ref = _finite_ref(m_t)
    if kept:
        D, P, idx, mrow = kept
    else:
        logD = row[..., :, None] - row[..., None, :]
        logD += col[..., None, :]
        logD.masked_fill_(~_order_mask(L, L, reverse, qc.device), float("-inf"))
        mrow, idx = logD.max(-1)  # (B, NH, NC, L)
        D = logD.sub_((m_ref - log_scale)[..., None]).exp_()  # (B, NH, NC, L, L)
        del logD
        P = _mm(qc, kc.transpose(-2, -1), acc).mul_(D)  # (B, NH, NC, L, L)
    ls = row + m_in[..., None]
    state_wins = ls > mrow
    dnum_mm = dnum.to(mm)
    dv = _mm(P.to(mm).transpose(-2, -1), dnum_mm, acc)  # (B, NH, NC, L, DV)
    dP = _mm(dnum_mm, vc.transpose(-2, -1), acc).add_(dden[..., None])  # (B, NH, NC, L, L)
    dlogD = P * dP if kept else P.mul_(dP)  # d/d logD = dP * P (masked entries: P = 0); kept ones stay intact
    dlogD_row, dlogD_col = dlogD.sum(-1), dlogD.sum(-2)
    del dlogD, P
    dS = dP.mul_(D).to(mm)  # (B, NH, NC, L, L)  d/d(q k^T)
    del D
    dq = _mm(dS, kc, acc)
    dk = _mm(dS.transpose(-2, -1), qc, acc)
    del dS, dP
    if not has_state:
        zero = torch.zeros_like
        return dq, dk, dv, dlogD_row, dlogD_col, zero(row), zero(C_in), zero(n_in), state_wins, idx
    # the state term: num += w q C_in, den += w q . n_in
    w = torch.exp(ls - m_ref)  # (B, NH, NC, L)
    Y = _mm(dnum_mm, C_in.to(mm).transpose(-2, -1), acc) + dden[..., None] * n_in[:, :, :, None]  # (B,NH,NC,L,DK)
    dls = (qc * Y).sum(-1) * w
    dq = dq.addcmul_(w[..., None], Y)
    qw = (qc * w[..., None]).to(mm)  # (B, NH, NC, L, DK)
    dC_in = _mm(qw.transpose(-2, -1), dnum_mm, acc)  # (B, NH, NC, DK, DV)
    dn_in = (qc * (w * dden)[..., None]).sum(-2).to(acc)  # (B, NH, NC, DK)
    return dq, dk, dv, dlogD_row, dlogD_col, dls, dC_in, dn_in, state_wins, idx


def fit_chunk(S: int, chunk_size: int) -> int:
    """The chunk length for S steps: the largest divisor of S in [ceil(chunk_size / 2), chunk_size], so that no
    step is padded, else chunk_size (the tail is padded). S <= chunk_size is one chunk of S."""
    if S <= chunk_size:
        return S
    for L in range(chunk_size, (chunk_size + 1) // 2 - 1, -1):
        if S % L == 0:
            return L
    return chunk_size
