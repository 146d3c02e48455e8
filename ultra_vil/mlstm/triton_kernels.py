"""The four Triton kernels of the fused mLSTM (built on first use; see ultra_vil.mlstm.triton for what each does).

`triton.jit` resolves `tl` through this module's globals, so `_kernels` imports triton into them when it first
builds; importing this module never needs triton.
"""

from __future__ import annotations

import functools

triton = tl = None  # set by _kernels() on first use


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """Build the four kernels (keyed on interpreter mode: triton.jit picks interpreter or compiler when called).

    Long (the whole file) because triton.jit kernels must be defined where `tl` resolves, and the four kernels are
    defined here together after the one lazy import of triton. Each kernel is one GPU program (a chunk's states,
    its outputs, and their two backward passes); `_bwd_chunk` is long because it computes the dq, dk, dv of one
    chunk in registers, which is what fusing means; split into device functions it would pass the same dozen
    tiles. Each kernel is tested against the float64 recurrence under TRITON_INTERPRET=1.
    """
    # the kernels resolve `tl` through this module's globals, as triton.jit requires
    global triton, tl, _state_tile
    import triton
    import triton.language as tl

    @triton.jit
    def _state_tile(DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        """A state kernel program's place: (batch * head, key tile, value tile), the tile's key and value offsets
        (BK,), (BV,), their masks, and the (BK, BV) mask and offsets of its piece of a (DK, DV) state."""
        bh = tl.program_id(0).to(tl.int64)
        pk = tl.program_id(1)
        pv = tl.program_id(2)
        offk = pk * BK + tl.arange(0, BK)  # (BK,)
        offv = pv * BV + tl.arange(0, BV)  # (BV,)
        mk = offk < DK
        mv = offv < DV
        return bh, pk, pv, offk, offv, mk, mv, mk[:, None] & mv[None, :], offk[:, None] * DV + offv[None, :]

    @triton.jit
    def _fwd_states(
        K, V, I, LF, C0, N0, M0, CS, NS, MS,
        S, NC, scale,
        DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, HAS_INIT: tl.constexpr, PREC: tl.constexpr, RT: tl.constexpr, CT: tl.constexpr,
        REVERSE: tl.constexpr, LF_MIN: tl.constexpr,
    ):  # fmt: skip
        bh, pk, pv, offk, offv, mk, mv, mkv, ckv = _state_tile(DK, DV, BK, BV)
        tau = tl.arange(0, BL)  # (BL,) step within the chunk; >= L is masked (chunk sizes not a power of two)
        if HAS_INIT:
            C = tl.load(C0 + bh * DK * DV + ckv, mask=mkv, other=0.0).to(tl.float32)  # (BK, BV)
            n = tl.load(N0 + bh * DK + offk, mask=mk, other=0.0).to(tl.float32)  # (BK,)
            m = tl.load(M0 + bh).to(tl.float32)
        else:
            C = tl.zeros([BK, BV], dtype=tl.float32)
            n = tl.zeros([BK], dtype=tl.float32)
            m = tl.full([], float("-inf"), tl.float32)
        first = (pk == 0) & (pv == 0)
        for c in range(NC):
            st = bh * (NC + 1) + c  # state slot: the state entering chunk c
            tl.store(CS + st * DK * DV + ckv, C, mask=mkv)
            tl.store(NS + st * DK + offk, n, mask=mk & (pv == 0))
            tl.store(MS + st, m, mask=first)
            t = c * L + tau  # (BL,)
            valid = (tau < L) & (t < S)
            p = S - 1 - t if REVERSE else t  # (BL,) position in memory: reverse traverses S-1 -> 0
            # masked steps neither write (i = -inf) nor forget (log f = 0)
            i = tl.load(I + bh * S + p, mask=valid, other=float("-inf"))  # (BL,)
            kv_ok = valid & (i == i)  # noqa: PLR0124  (BL,) NaN gate: non-finite k or v, load as 0 (mlstm_triton)
            lf = tl.load(LF + bh * S + p, mask=valid, other=0.0)  # (BL,)
            # the decay from the chunk start to step tau, inclusive, is Fc + Kc * LF_MIN: steps clamped at LF_MIN
            # (forget gate 0) are counted, not summed, so the decays after one keep float32's precision
            hard = lf <= LF_MIN  # (BL,)
            Fc = tl.cumsum(tl.where(hard, 0.0, lf), 0)  # (BL,) sum of the other steps
            Kc = tl.cumsum(hard.to(tl.float32), 0)  # (BL,) number of clamped steps
            gf = tl.sum(tl.where(hard, 0.0, lf), 0)
            gk = tl.sum(hard.to(tl.float32), 0)
            g = gf + gk * LF_MIN  # decay over the whole chunk
            a = (gf - Fc) + (gk - Kc) * LF_MIN + i  # (BL,) log weight of step tau's input at the chunk end
            m_new = tl.maximum(g + m, tl.max(a, 0))  # the recurrence's m after the chunk, exactly
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing written yet: avoid -inf - -inf
            decay = tl.exp(g + m - m_ref)  # <= 1; 0 while the state is empty
            wk = tl.exp(a - m_ref) * scale  # (BL,) <= 1 (times the key scaling of the contract)
            kt = tl.load(K + (bh * S + p[:, None]) * DK + offk[None, :], mask=kv_ok[:, None] & mk[None, :], other=0.0)
            vt = tl.load(V + (bh * S + p[:, None]) * DV + offv[None, :], mask=kv_ok[:, None] & mv[None, :], other=0.0)
            kw = kt.to(tl.float32) * wk[:, None]  # (BL, BK)
            C = decay * C + tl.dot(tl.trans(kw.to(RT).to(CT)), vt.to(RT).to(CT), input_precision=PREC)  # (BK, BV)
            n = decay * n + tl.sum(kw, 0)  # (BK,)
            m = m_new
        st = bh * (NC + 1) + NC  # the final state
        tl.store(CS + st * DK * DV + ckv, C, mask=mkv)
        tl.store(NS + st * DK + offk, n, mask=mk & (pv == 0))
        tl.store(MS + st, m, mask=first)

    @triton.jit
    def _fwd_out(
        Q, K, V, I, LF, CS, NS, MS, H, MR, NR, SR,
        S, NC, scale, eps,
        DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, NK: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr, RT: tl.constexpr, CT: tl.constexpr,
        REVERSE: tl.constexpr, SPLIT: tl.constexpr, LF_MIN: tl.constexpr,
    ):  # fmt: skip
        c = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        pv = tl.program_id(2)
        tau = tl.arange(0, BL)
        offv = pv * BV + tl.arange(0, BV)
        mv = offv < DV
        t = c * L + tau  # (BL,)
        valid = (tau < L) & (t < S)
        p = S - 1 - t if REVERSE else t  # (BL,) position in memory: reverse traverses S-1 -> 0
        i = tl.load(I + bh * S + p, mask=valid, other=float("-inf"))
        kv_ok = valid & (i == i)  # noqa: PLR0124  (BL,) NaN gate: non-finite k or v, load as 0 (mlstm_triton)
        lf = tl.load(LF + bh * S + p, mask=valid, other=0.0)
        hard = lf <= LF_MIN  # (BL,) clamped steps: the decay is Fc + Kc * LF_MIN (as in _fwd_states)
        Fc = tl.cumsum(tl.where(hard, 0.0, lf), 0)  # (BL,)
        Kc = tl.cumsum(hard.to(tl.float32), 0)  # (BL,)
        st = bh * (NC + 1) + c
        m_c = tl.load(MS + st)  # stabiliser of the entering state; -inf if empty
        causal = tau[:, None] >= tau[None, :]  # (BL, BL)
        dec = (Fc[:, None] - Fc[None, :]) + (Kc[:, None] - Kc[None, :]) * LF_MIN  # (BL, BL) decay tau <- sigma
        logD = tl.where(causal, dec + i[None, :], float("-inf"))  # (BL, BL)
        log_state = Fc + Kc * LF_MIN + m_c  # (BL,) log weight of the entering state at step tau
        m_row = tl.maximum(tl.max(logD, 1), log_state)  # (BL,) = the recurrence's m_t
        m_ref = tl.where(m_row == float("-inf"), 0.0, m_row)
        Dm = tl.exp(logD - m_ref[:, None])  # (BL, BL) <= 1, 0 above the diagonal
        w = tl.exp(log_state - m_ref)  # (BL,) <= 1
        Sqk = tl.zeros([BL, BL], dtype=tl.float32)
        qC = tl.zeros([BL, BV], dtype=tl.float32)
        qn = tl.zeros([BL], dtype=tl.float32)
        for kt in range(NK):  # constexpr trip count
            offk = kt * BK + tl.arange(0, BK)
            mk = offk < DK
            mq = valid[:, None] & mk[None, :]  # (BL, BK)
            qt = tl.load(Q + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq, other=0.0)  # (BL, BK)
            kk = tl.load(
                K + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq & kv_ok[:, None], other=0.0
            )  # (BL, BK)
            Sqk += tl.dot(qt.to(RT).to(CT), tl.trans(kk.to(RT).to(CT)), input_precision=PREC)  # (BL, BL)
            Ct = tl.load(
                CS + st * DK * DV + offk[:, None] * DV + offv[None, :], mask=mk[:, None] & mv[None, :], other=0.0
            )
            Chi = Ct.to(RT)  # (BK, BV)
            qC += tl.dot(qt.to(RT).to(CT), Chi.to(CT), input_precision=PREC)  # (BL, BV)
            if SPLIT:  # the state's bf16 rounding error as a second bf16 term: C to ~16 bits for two dots
                Clo = (Ct - Chi.to(tl.float32)).to(RT)
                qC += tl.dot(qt.to(RT).to(CT), Clo.to(CT), input_precision=PREC)
            nt = tl.load(NS + st * DK + offk, mask=mk, other=0.0)  # (BK,)
            qn += tl.sum(qt.to(tl.float32) * nt[None, :], 1)  # (BL,)
        vt = tl.load(V + (bh * S + p[:, None]) * DV + offv[None, :], mask=kv_ok[:, None] & mv[None, :], other=0.0)
        P = Sqk * scale * Dm  # (BL, BL)
        num = tl.dot(P.to(RT).to(CT), vt.to(RT).to(CT), input_precision=PREC) + w[:, None] * qC  # (BL, BV)
        den = tl.sum(P, 1) + w * qn  # (BL,)
        floor = tl.exp(-m_row)  # inf where m = -inf: then h = 0 (nothing written)
        nrm = tl.maximum(tl.abs(den), floor) + eps  # (BL,)
        h = num / nrm[:, None]  # (BL, BV)
        tl.store(
            H + (bh * S + p[:, None]) * DV + offv[None, :], h.to(H.dtype.element_ty), mask=valid[:, None] & mv[None, :]
        )
        # what the backward needs per step: m_t, the normaliser and d(normaliser)/d(den) in {-1, 0, 1}
        sgn = tl.where(tl.abs(den) > floor, tl.where(den >= 0, 1.0, -1.0), 0.0)
        rmask = valid & (pv == 0)
        tl.store(MR + bh * S + p, m_row, mask=rmask)
        tl.store(NR + bh * S + p, nrm, mask=rmask)
        tl.store(SR + bh * S + p, sgn, mask=rmask)

    @triton.jit
    def _bwd_states(
        Q, DH, I, LF, MS, MR, INVN, DDEN, DCF, DNF, DCS, DNS,
        S, NC,
        DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, HAS_DFIN: tl.constexpr, PREC: tl.constexpr, RT: tl.constexpr, CT: tl.constexpr,
        REVERSE: tl.constexpr, LF_MIN: tl.constexpr,
    ):  # fmt: skip
        bh, pk, pv, offk, offv, mk, mv, mkv, ckv = _state_tile(DK, DV, BK, BV)
        tau = tl.arange(0, BL)
        if HAS_DFIN:
            dC = tl.load(DCF + bh * DK * DV + ckv, mask=mkv, other=0.0).to(tl.float32)  # (BK, BV)
            dn = tl.load(DNF + bh * DK + offk, mask=mk, other=0.0).to(tl.float32)  # (BK,)
        else:
            dC = tl.zeros([BK, BV], dtype=tl.float32)
            dn = tl.zeros([BK], dtype=tl.float32)
        for j in range(NC):
            c = NC - 1 - j
            st = bh * (NC + 1) + c
            # the gradient w.r.t. the state leaving chunk c (entering c + 1)
            tl.store(DCS + (st + 1) * DK * DV + ckv, dC, mask=mkv)
            tl.store(DNS + (st + 1) * DK + offk, dn, mask=mk & (pv == 0))
            t = c * L + tau
            valid = (tau < L) & (t < S)
            p = S - 1 - t if REVERSE else t  # (BL,) position in memory: reverse traverses S-1 -> 0
            lf = tl.load(LF + bh * S + p, mask=valid, other=0.0)
            hard = lf <= LF_MIN  # clamped steps: the decay is Fc + Kc * LF_MIN (as in _fwd_states)
            Fc = tl.cumsum(tl.where(hard, 0.0, lf), 0) + tl.cumsum(hard.to(tl.float32), 0) * LF_MIN
            g = tl.sum(tl.where(hard, 0.0, lf), 0) + tl.sum(hard.to(tl.float32), 0) * LF_MIN
            m_c = tl.load(MS + st)
            m_next = tl.load(MS + st + 1)
            m_row = tl.load(MR + bh * S + p, mask=valid, other=float("inf"))  # masked rows: every weight 0
            invn = tl.load(INVN + bh * S + p, mask=valid, other=0.0)
            dden = tl.load(DDEN + bh * S + p, mask=valid, other=0.0)
            empty = m_c == float("-inf")  # the entering state holds nothing: it reaches neither outputs nor next state
            w = tl.where(empty, 0.0, tl.exp(Fc + m_c - m_row))  # (BL,)
            decay = tl.where(empty, 0.0, tl.exp(g + m_c - m_next))
            qt = tl.load(Q + (bh * S + p[:, None]) * DK + offk[None, :], mask=valid[:, None] & mk[None, :], other=0.0)
            dht = tl.load(DH + (bh * S + p[:, None]) * DV + offv[None, :], mask=valid[:, None] & mv[None, :], other=0.0)
            dnum = dht.to(tl.float32) * invn[:, None]  # (BL, BV)
            qw = qt.to(tl.float32) * w[:, None]  # (BL, BK)
            dC = decay * dC + tl.dot(tl.trans(qw.to(RT).to(CT)), dnum.to(RT).to(CT), input_precision=PREC)  # (BK, BV)
            dn = decay * dn + tl.sum(qw * dden[:, None], 0)  # (BK,)
        st = bh * (NC + 1)  # the gradient w.r.t. the initial state
        tl.store(DCS + st * DK * DV + ckv, dC, mask=mkv)
        tl.store(DNS + st * DK + offk, dn, mask=mk & (pv == 0))

    @triton.jit
    def _bwd_chunk(
        Q, K, V, DH, I, LF, CS, NS, MS, MR, INVN, DDEN, DCS, DNS, DQ, DKK, DVV,
        S, NC, scale,
        DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, NK: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr, RT: tl.constexpr, CT: tl.constexpr,
        REVERSE: tl.constexpr, SPLIT: tl.constexpr, LF_MIN: tl.constexpr,
    ):  # fmt: skip
        c = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        tau = tl.arange(0, BL)
        t = c * L + tau
        valid = (tau < L) & (t < S)
        p = S - 1 - t if REVERSE else t  # (BL,) position in memory: reverse traverses S-1 -> 0
        i = tl.load(I + bh * S + p, mask=valid, other=float("-inf"))
        kv_ok = valid & (i == i)  # noqa: PLR0124  (BL,) NaN gate: non-finite k or v, load as 0 (mlstm_triton)
        lf = tl.load(LF + bh * S + p, mask=valid, other=0.0)
        hard = lf <= LF_MIN  # clamped steps: the decay is Fc + Kc * LF_MIN (as in _fwd_states)
        Fc = tl.cumsum(tl.where(hard, 0.0, lf), 0)
        Kc = tl.cumsum(hard.to(tl.float32), 0)
        gf = tl.sum(tl.where(hard, 0.0, lf), 0)
        gk = tl.sum(hard.to(tl.float32), 0)
        st = bh * (NC + 1) + c
        m_c = tl.load(MS + st)
        m_next = tl.load(MS + st + 1)
        m_row = tl.load(MR + bh * S + p, mask=valid, other=float("inf"))  # masked rows: every weight 0
        invn = tl.load(INVN + bh * S + p, mask=valid, other=0.0)
        dden = tl.load(DDEN + bh * S + p, mask=valid, other=0.0)
        m_ref = tl.where(m_row == float("-inf"), 0.0, m_row)
        causal = tau[:, None] >= tau[None, :]
        dec = (Fc[:, None] - Fc[None, :]) + (Kc[:, None] - Kc[None, :]) * LF_MIN  # (BL, BL) decay tau <- sigma
        logD = tl.where(causal, dec + i[None, :], float("-inf"))
        Dm = tl.exp(logD - m_ref[:, None])  # (BL, BL) as in the forward
        # (BL,) weight of the entering state
        w = tl.where(m_c == float("-inf"), 0.0, tl.exp(Fc + Kc * LF_MIN + m_c - m_row))
        m_next_ref = tl.where(m_next == float("-inf"), 0.0, m_next)
        # (BL,) weight of k_s in the state leaving the chunk
        wk = tl.exp((gf - Fc) + (gk - Kc) * LF_MIN + i - m_next_ref) * scale

        Sqk = tl.zeros([BL, BL], dtype=tl.float32)
        for kt in range(NK):
            offk = kt * BK + tl.arange(0, BK)
            mq = valid[:, None] & (offk < DK)[None, :]
            qt = tl.load(Q + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq, other=0.0)
            kk = tl.load(K + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq & kv_ok[:, None], other=0.0)
            Sqk += tl.dot(qt.to(RT).to(CT), tl.trans(kk.to(RT).to(CT)), input_precision=PREC)
        dPv = tl.zeros([BL, BL], dtype=tl.float32)
        for vt_i in range(NV):
            offv = vt_i * BV + tl.arange(0, BV)
            mdv = valid[:, None] & (offv < DV)[None, :]
            dht = tl.load(DH + (bh * S + p[:, None]) * DV + offv[None, :], mask=mdv, other=0.0)
            vv = tl.load(V + (bh * S + p[:, None]) * DV + offv[None, :], mask=mdv & kv_ok[:, None], other=0.0)
            dnum = dht.to(tl.float32) * invn[:, None]
            dPv += tl.dot(dnum.to(RT).to(CT), tl.trans(vv.to(RT).to(CT)), input_precision=PREC)  # (BL, BL)
        P = Sqk * scale * Dm  # (BL, BL)
        dS = (dPv + dden[:, None]) * Dm  # (BL, BL) d loss / d(q.k scale) per entry, over D

        for vt_i in range(NV):
            offv = vt_i * BV + tl.arange(0, BV)
            mv = offv < DV
            mdv = valid[:, None] & mv[None, :]
            dht = tl.load(DH + (bh * S + p[:, None]) * DV + offv[None, :], mask=mdv, other=0.0)
            dnum = dht.to(tl.float32) * invn[:, None]  # (BL, BV)
            dv = tl.dot(tl.trans(P.to(RT).to(CT)), dnum.to(RT).to(CT), input_precision=PREC)  # (BL, BV)
            for kt in range(NK):
                offk = kt * BK + tl.arange(0, BK)
                mk = offk < DK
                kk = tl.load(
                    K + (bh * S + p[:, None]) * DK + offk[None, :], mask=kv_ok[:, None] & mk[None, :], other=0.0
                )
                dCt = tl.load(
                    DCS + (st + 1) * DK * DV + offk[:, None] * DV + offv[None, :],
                    mask=mk[:, None] & mv[None, :],
                    other=0.0,
                )
                kw = kk.to(tl.float32) * wk[:, None]  # (BL, BK)
                dv += tl.dot(kw.to(RT).to(CT), dCt.to(RT).to(CT), input_precision=PREC)  # (BL, BV)
            tl.store(DVV + (bh * S + p[:, None]) * DV + offv[None, :], dv, mask=mdv)

        for kt in range(NK):
            offk = kt * BK + tl.arange(0, BK)
            mk = offk < DK
            mq = valid[:, None] & mk[None, :]
            qt = tl.load(Q + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq, other=0.0)
            kk = tl.load(K + (bh * S + p[:, None]) * DK + offk[None, :], mask=mq & kv_ok[:, None], other=0.0)
            dq = tl.dot(dS.to(RT).to(CT), kk.to(RT).to(CT), input_precision=PREC) * scale  # (BL, BK)
            dk = tl.dot(tl.trans(dS.to(RT).to(CT)), qt.to(RT).to(CT), input_precision=PREC) * scale  # (BL, BK)
            aq = tl.zeros([BL, BK], dtype=tl.float32)
            ak = tl.zeros([BL, BK], dtype=tl.float32)
            for vt_i in range(NV):
                offv = vt_i * BV + tl.arange(0, BV)
                mv = offv < DV
                mdv = valid[:, None] & mv[None, :]
                dht = tl.load(DH + (bh * S + p[:, None]) * DV + offv[None, :], mask=mdv, other=0.0)
                vv = tl.load(V + (bh * S + p[:, None]) * DV + offv[None, :], mask=mdv & kv_ok[:, None], other=0.0)
                dnum = dht.to(tl.float32) * invn[:, None]
                ckv = offk[:, None] * DV + offv[None, :]
                mkv = mk[:, None] & mv[None, :]
                Ct = tl.load(CS + st * DK * DV + ckv, mask=mkv, other=0.0)  # (BK, BV) entering state
                dCt = tl.load(DCS + (st + 1) * DK * DV + ckv, mask=mkv, other=0.0)  # (BK, BV) leaving state's grad
                Chi = Ct.to(RT)  # (BK, BV)
                aq += tl.dot(dnum.to(RT).to(CT), tl.trans(Chi.to(CT)), input_precision=PREC)  # (BL, BK)
                if SPLIT:
                    Clo = (Ct - Chi.to(tl.float32)).to(RT)
                    aq += tl.dot(dnum.to(RT).to(CT), tl.trans(Clo.to(CT)), input_precision=PREC)
                ak += tl.dot(vv.to(RT).to(CT), tl.trans(dCt.to(RT).to(CT)), input_precision=PREC)  # (BL, BK)
            nt = tl.load(NS + st * DK + offk, mask=mk, other=0.0)
            dnt = tl.load(DNS + (st + 1) * DK + offk, mask=mk, other=0.0)
            dq += w[:, None] * (aq + dden[:, None] * nt[None, :])
            dk += wk[:, None] * (ak + dnt[None, :])
            tl.store(DQ + (bh * S + p[:, None]) * DK + offk[None, :], dq, mask=mq)
            tl.store(DKK + (bh * S + p[:, None]) * DK + offk[None, :], dk, mask=mq)

    return _fwd_states, _fwd_out, _bwd_states, _bwd_chunk
