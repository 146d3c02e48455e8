"""The chunked scan (backends `parallel` and `chunkwise`) as torch.library custom ops: `ultra_vil::mlstm_chunks` and
its backward `ultra_vil::mlstm_chunks_backward`, with fake (meta) implementations and the autograd formula.

Why custom ops: to torch.compile the scan is then one opaque call with known output shapes. Dynamo traces through
it without a graph break and inductor fuses everything around it (the ViL layer's projections, conv, norms, skip,
gate), but it does not generate code for the scan's own float64 gate sums, masks and stabilisers. Inductor's CPU
code generator miscompiles those (torch 2.14.1, gcc 12: a C++ compile error, or vectorised kernels that write out
of bounds and corrupt the heap; tests/test_compile.py keeps a reduced case), and the scan's matmuls are extern
calls either way. Eager code runs the same two functions (`chunk_scan`): through an autograd Function when it
trains, the forward alone in inference and under `torch.jit.trace` (the TorchScript-based ONNX exporter records
their operations; it knows no ultra_vil:: op).

Outputs may not alias inputs or each other, so the op returns the whole state tensors (the final state is their
last row, taken outside) and the one-chunk (L, L) matrices backward reuses; where forward keeps none they are empty
tensors. Shapes: qc, kc (B, NH, NC, L, DK), vc (B, NH, NC, L, DV), ic, fc (B, NH, NC, L); states C0 (B, NH, DK, DV),
n0 (B, NH, DK), m0 (B, NH) or None.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunkwise import chunks_backward, chunks_forward
from .recurrent import MLSTMState

def _empty(like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return like.new_empty(0, dtype=dtype)


@torch.library.custom_op("ultra_vil::mlstm_chunks", mutates_args=())
def mlstm_chunks(
    qc: Tensor, kc: Tensor, vc: Tensor, ic: Tensor, fc: Tensor,
    C0: Optional[Tensor], n0: Optional[Tensor], m0: Optional[Tensor],
    eps: float, reverse: bool, out_dtype: torch.dtype, need_final: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """`chunks_forward` with its `kept` spelt out: (h, C_all, n_all, m_all, den, m_t, D, P, idx, mrow)."""
    h, C_all, n_all, m_all, den, m_t, kept = chunks_forward(qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse, out_dtype,
                                                            need_final)  # fmt: skip
    D, P, idx, mrow = kept if kept else (_empty(ic), _empty(ic), _empty(ic, torch.int64), _empty(ic))
    if mrow is m_t:  # one chunk, no state: the row max is m_t itself, and outputs may not alias each other
        mrow = mrow.clone()
    return tuple(t.contiguous() for t in (h, C_all, n_all, m_all, den, m_t, D, P, idx, mrow))


@mlstm_chunks.register_fake
def _(qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse, out_dtype, need_final):
    B, NH, NC, L, DK = qc.shape
    DV = vc.shape[-1]
    new = ic.new_empty  # the accumulation dtype: float32 (float64 for float64 inputs)
    keep = NC == 1
    kept = ((new(B, NH, NC, L, L), new(B, NH, NC, L, L), new(B, NH, NC, L, dtype=torch.int64), new(B, NH, NC, L))
            if keep else (_empty(ic), _empty(ic), _empty(ic, torch.int64), _empty(ic)))  # fmt: skip
    return (new(B, NH, NC, L, DV, dtype=out_dtype), new(B, NH, NC + 1, DK, DV), new(B, NH, NC + 1, DK),
            new(B, NH, NC + 1), new(B, NH, NC, L), new(B, NH, NC, L), *kept)  # fmt: skip


@torch.library.custom_op("ultra_vil::mlstm_chunks_backward", mutates_args=())
def mlstm_chunks_backward(
    qc: Tensor, kc: Tensor, vc: Tensor, ic: Tensor, fc: Tensor,
    C0: Optional[Tensor], n0: Optional[Tensor], m0: Optional[Tensor],
    C_all: Tensor, n_all: Tensor, m_all: Tensor, h: Tensor, den: Tensor, m_t: Tensor,
    D: Tensor, P: Tensor, idx: Tensor, mrow: Tensor,
    dh: Tensor, dC_fin: Tensor, dn_fin: Tensor, dm_fin: Tensor,
    eps: float, reverse: bool, need_final: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """`chunks_backward`: (dq, dk, dv, di, df, dC0, dn0, dm0), the last three empty without an initial state."""
    saved = (qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all, h, den, m_t)
    kept = (D, P, idx, mrow) if D.numel() else ()
    grads = chunks_backward(saved, kept, dh, dC_fin, dn_fin, dm_fin, eps, reverse, need_final)
    return tuple(_empty(ic) if g is None else g.contiguous() for g in grads)


@mlstm_chunks_backward.register_fake
def _(qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all, h, den, m_t, D, P, idx, mrow, dh, dC_fin, dn_fin, dm_fin,
      eps, reverse, need_final):  # fmt: skip
    def like(t: Tensor, dtype: torch.dtype) -> Tensor:  # contiguous, as the real gradients are made
        return t.new_empty(t.shape, dtype=dtype)

    acc = ic.dtype
    states = (_empty(ic),) * 3 if C0 is None else (like(C0, acc), like(n0, acc), like(m0, acc))
    return (like(qc, qc.dtype), like(kc, qc.dtype), like(vc, qc.dtype), like(ic, acc), like(fc, acc), *states)


def _setup_context(ctx, inputs, output) -> None:
    qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse, out_dtype, need_final = inputs
    ctx.save_for_backward(qc, kc, vc, ic, fc, C0, n0, m0, *output)
    ctx.eps, ctx.reverse, ctx.need_final = eps, reverse, need_final


def _backward(ctx, dh, dC_all, dn_all, dm_all, *unused):
    qc, kc, vc, ic, fc, C0, n0, m0, h, C_all, n_all, m_all, den, m_t, D, P, idx, mrow = ctx.saved_tensors
    # the final state is row NC of the state outputs; their other rows reach no one outside the op
    dh = torch.zeros_like(h) if dh is None else dh
    dC_fin = torch.zeros_like(C_all[:, :, -1]) if dC_all is None else dC_all[:, :, -1]
    dn_fin = torch.zeros_like(n_all[:, :, -1]) if dn_all is None else dn_all[:, :, -1]
    dm_fin = torch.zeros_like(m_all[..., -1]) if dm_all is None else dm_all[..., -1]
    dq, dk, dv, di, df, dC0, dn0, dm0 = mlstm_chunks_backward(
        qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all, h, den, m_t, D, P, idx, mrow, dh, dC_fin, dn_fin,
        dm_fin, ctx.eps, ctx.reverse, ctx.need_final,
    )
    states = (None, None, None) if C0 is None else (dC0, dn0, dm0)
    return dq, dk, dv, di, df, *states, None, None, None, None


mlstm_chunks.register_autograd(_backward, setup_context=_setup_context)


class ChunkScan(torch.autograd.Function):
    """The same two passes as an autograd Function, for eager training: (h, C_all, n_all, m_all)."""

    @staticmethod
    def forward(ctx, qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse, out_dtype, need_final):
        h, C_all, n_all, m_all, den, m_t, kept = chunks_forward(qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse,
                                                                out_dtype, need_final)  # fmt: skip
        ctx.save_for_backward(qc, kc, vc, ic, fc, C0, n0, m0, C_all, n_all, m_all, h, den, m_t, *kept)
        ctx.eps, ctx.reverse, ctx.need_final = eps, reverse, need_final
        return h, C_all, n_all, m_all

    @staticmethod
    def backward(ctx, dh, dC_all, dn_all, dm_all):
        saved = ctx.saved_tensors
        grads = chunks_backward(saved[:14], tuple(saved[14:]), dh, dC_all[:, :, -1], dn_all[:, :, -1],
                                dm_all[..., -1], ctx.eps, ctx.reverse, ctx.need_final)  # fmt: skip
        return (*grads, None, None, None, None)


def chunk_scan(*args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(h, C_all, n_all, m_all) of the chunked scan: the custom op while torch.compile traces; the forward alone
    when no gradient is recorded (inference, and `torch.jit.trace`, which the ONNX exporter uses: it records the
    scan's own operations); else `ChunkScan`, the hand-written backward."""
    if torch.compiler.is_compiling():
        return mlstm_chunks(*args)[:4]
    if torch.jit.is_tracing() or not torch.is_grad_enabled():
        return chunks_forward(*args)[:4]
    return ChunkScan.apply(*args)


def _scan(q, k, v, i, logf, state, eps, L, reverse, out_dtype, need_final=True):
    """Pad to a multiple of L at the traversal's end, chunk, run `chunk_scan`; (h (B, NH, S, DV), state).

    Padded steps neither write (input gate -inf) nor forget (log forget gate 0), so they change neither earlier
    outputs nor the final state.
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
    qc, kc, vc = (t.reshape(B, NH, NC, L, t.shape[-1]) for t in (q, k, v))  # (B, NH, NC, L, D*)  views
    ic, fc = i.reshape(B, NH, NC, L), logf.reshape(B, NH, NC, L)
    C0, n0, m0 = state if state is not None else (None, None, None)
    h, C_all, n_all, m_all = chunk_scan(qc, kc, vc, ic, fc, C0, n0, m0, eps, reverse, out_dtype, need_final)
    C, n, m = C_all[:, :, NC], n_all[:, :, NC], m_all[..., NC]  # the final state: the states' last row
    h = h.reshape(B, NH, NC * L, DV)
    h = h[:, :, pad:] if reverse else h[:, :, :S]
    return h, MLSTMState(C, n, m)
