"""A fused chunkwise mLSTM in Triton: forward and backward kernels, `mlstm(..., backend="triton")`.

The same function as the float64 recurrence of ultra_vil.mlstm (exponential input gate, sigmoid forget gate in
log space, max stabiliser m, normaliser max(|q.n|, exp(-m)) + eps), computed by chunks of L steps in four kernels
(the chunkwise method of xLSTM / TFLA, Beck et al. 2025, arXiv:2503.14376; our own code, not mlstm-kernels):

    forward   _fwd_states  one program per (batch*head, DK tile, DV tile): a sequential scan over the chunks writes
                           the state (C, n, m) entering every chunk (and the final one) to a small buffer
              _fwd_out     one program per (chunk, batch*head, DV tile), all in parallel: the entering state plus
                           the causal (L x L) quadratic form inside the chunk; also writes per-step m and normaliser
    backward  _bwd_states  the reverse scan of dC, dn over chunks (same grid as _fwd_states)
              _bwd_chunk   one program per (chunk, batch*head): dq, dk, dv, recomputing the (L x L) matrices

Activation memory is O(S * (DK + DV)) plus the chunk states (S / L * DK * DV per head), like the chunkwise backend.

Gradients with the stabilisers held fixed are what the kernels compute; the rest is a short PyTorch epilogue:
- Gate identities. With every m fixed, k_s and i_s enter the function only as exp(i_s - F_s) * k_s and q_t only as
  exp(F_t) * q_t (F_t: cumulative log forget gate), so d i_s = k_s . dk_s and
  dF_t = q_t . dq_t - k_t . dk_t (+ <dC, C> + <dn, n> of the final state at the last step); d logf is the reverse
  cumulative sum of dF. No extra kernel, and no cancellation worse than one O(S) cumulative sum.
- The stabiliser path. h_t depends on m_t only through eps: dh_t/dm_t = -h_t * eps / N_t; the final state is
  stored stabilised (C = C* exp(-m)), so d m_final also collects -<dC, C> - <dn, n>. m_t = F_t + max(m_0,
  cummax_s(i_s - F_s)) is differentiated by autograd on a float64 (B, NH, S) graph (argmax routing).
Gradients also reach the initial state (C0, n0, m0).

Precision: matmuls run in the input dtype with float32 accumulation; gates, cumulative sums, stabiliser,
normaliser and every state in float32. float32 inputs use IEEE float32 dots (`input_precision="ieee"`), not TF32,
which would miss the 1e-4 contract; bf16 / fp16 use tensor cores. float64 inputs are refused (use "chunkwise").

Real-GPU rules the interpreter does not enforce, kept here: every tl.dot operand is a power of two >= 16 on each
side (chunk tiles BL = max(16, next_pow2(chunk_size)); head dims tiled by BK / BV with masks, so DK = 96 runs as
3 tiles of 32 and 192 as 3 of 64 or 6 of 32), shapes are constexpr, loops run over constexpr or runtime scalars, and
tails (S not a multiple of L, a chunk size that is not a power of two) are masked loads and stores, never padding
copies. `reverse=True` (the anti-causal traversal of ViL's odd blocks) addresses the tiles from the end instead of
flipping tensors.

Non-finite inputs stay causal as in the recurrence: a NaN or inf at step s spoils outputs s and later, never
earlier ones (a step with a non-finite k or v enters as k = v = 0 with a NaN input gate, because 0 * NaN inside a
tile matmul would otherwise reach the rows above it). Finite inputs of any size (gates up to +-1e4) stay finite.
Infinite gates are valid inputs: the log forget gate is clamped at LOGF_MIN as in every backend (a forget gate
of -inf forgets everything, +inf nothing), and the kernels count clamped steps apart from the decay sums, so the
decays after one keep float32's precision (summed in, ulp(1e5) = 0.008 would swamp them); an input gate of -inf
writes nothing.
Speed: not yet measured on a GPU. Correctness is tested under the interpreter, and
every kernel compiles for sm_90 without a GPU (`compile_report()`, also a test); the tile choices in _Config come
from those cubins' register and spill counts.

Import is safe without triton: the kernels are built on first use (`triton.jit` reads TRITON_INTERPRET when it
decorates, so building late also lets tests set it after some other module imported triton).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
from torch import Tensor

from .recurrent import LOGF_MIN, MLSTMState, _require_floating, log_forget_gate
from .triton_kernels import _kernels

__all__ = ["available", "check_on_device", "compile_report", "mlstm_triton"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_imports() -> bool:
    try:
        import triton
        import triton.language  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # not installed, or a broken install
        return False
    return True


def available(device: torch.device | str) -> bool:
    """True where the kernels can run: triton imports and the device is CUDA, or TRITON_INTERPRET=1 (CPU tests)."""
    device = torch.device(device)
    return _triton_imports() and (device.type == "cuda" or _interpret())


def _on(device: torch.device):
    """Make `device` current: triton launches on the current CUDA device, not on the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tile(d: int, cap: int) -> int:
    """Tile for a head dim d: the largest power of two in [16, cap] dividing d (no masked lanes: 96 -> 32,
    192 -> 64), else the next power of two, capped (48 -> 16 divides; 40 -> 64 masked)."""
    t = cap
    while t >= 16:
        if d % t == 0:
            return t
        t //= 2
    return max(16, min(cap, _pow2(d)))


class _Config:
    """Tile sizes and grid sizes for one call (plain ints: constexprs of the kernels)."""

    def __init__(self, S: int, DK: int, DV: int, chunk_size: int, dtype: torch.dtype, interpret: bool, reverse: bool):
        self.reverse = reverse
        self.DK, self.DV = DK, DV
        self.L = chunk_size
        self.BL = max(16, _pow2(chunk_size))  # tl.dot needs >= 16 and a power of two; steps >= L are masked
        self.NC = -(-S // chunk_size)
        # head-dim tiles (constexpr; masks cover the rest), chosen from sm_90 cubins compiled here without a GPU
        # (triton.compile for GPUTarget("cuda", 90, 32), cuobjdump -res-usage, bf16, chunk 64):
        # - forward per-chunk kernel: 64-wide tiles, 8 warps: no spills at DK = DV in {64, 96, 192} or 128 / 256
        #   (4 warps: 255 registers and 24-840 B of stack; chunk 128 spills 0.7 KB even at 8 warps)
        # - backward per-chunk kernel: it holds P and dS (BL x BL float32) across its loops; 32-wide tiles at 8
        #   warps spill 0-96 B (64-wide: 536-880 B; 16-wide: none, but every dot is then 16 deep)
        # - the two scans over chunks are sequential in S / L with little work per step: 32-wide state tiles give
        #   more programs at small batch * heads (B=8, NH=4, DH=64: 128 instead of 32), 4 warps, no spills
        # - float32 (IEEE dots on CUDA cores, for validation more than speed): 32-wide forward tiles (64: 6 KB of
        #   stack); its backward spills about 4 KB at any tile width tried (16, 32, 64)
        # Guesses until a GPU run times them; the smaller per-chunk tiles only cost re-reads of q, k, v tiles.
        wide = 32 if dtype == torch.float32 else 64
        self.tiles = {
            "scan": (_tile(DK, 32), _tile(DV, 32), 4),
            "fwd": (_tile(DK, wide), _tile(DV, wide), 8 if self.BL >= 64 else 4),
            "bwd": (_tile(DK, 32), _tile(DV, 32), 8 if self.BL >= 64 else 4),
        }
        # every tl.dot operand is rounded to the input dtype `rt` and multiplied as `ct` (= rt) with float32
        # accumulation. TF32 would miss the float32 contract (1e-4 of float64), so float32 uses IEEE dots; half
        # types run on tensor cores either way. The interpreter (triton 3.8) multiplies bfloat16 tiles as their
        # raw uint16 bits, so there the bf16-rounded operands are widened to float32 (ct): products of bf16 values
        # are exact in float32, so the interpreter still sees the GPU's rounding.
        import triton.language as tl

        self.rt = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
        self.ct = tl.float32 if interpret and dtype == torch.bfloat16 else self.rt
        self.prec = "ieee" if self.ct == tl.float32 else "tf32"
        # bf16 keeps 8 bits: the carried state C read back as bf16 (q C, dnum C^T) was the largest error left at
        # bf16 (d n0 1.9e-2 against the 2e-2 contract, on check_on_device's case); a second dot with C's rounding
        # error as bf16 brings it to 5e-3 for one more (BL, BK, BV) dot per tile. fp16 (11 bits) does not need it.
        self.split = dtype == torch.bfloat16
        self.lf_min = LOGF_MIN  # the clamp of the log forget gate, which the kernels count apart from the decay sums

    def tile_counts(self, kind: str) -> tuple[int, int]:
        """(DK tiles, DV tiles) of one kernel kind: "scan", "fwd" or "bwd"."""
        BK, BV, _ = self.tiles[kind]
        return -(-self.DK // BK), -(-self.DV // BV)

    def consts(self, kind: str) -> dict:
        """Constexprs and launch options of one kernel kind."""
        BK, BV, warps = self.tiles[kind]
        NK, NV = self.tile_counts(kind)
        loops = {} if kind == "scan" else {"NK": NK, "NV": NV, "SPLIT": self.split}
        return dict(
            DK=self.DK, DV=self.DV, L=self.L, BL=self.BL, BK=BK, BV=BV, **loops, PREC=self.prec, RT=self.rt,
            CT=self.ct, REVERSE=self.reverse, LF_MIN=self.lf_min, num_warps=warps,
        )  # fmt: skip


class _MLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, lf, C0, n0, m0, chunk_size, eps, reverse):
        BH, S, DK = q.shape
        DV = v.shape[-1]
        cfg = _Config(S, DK, DV, chunk_size, q.dtype, _interpret(), reverse)
        fwd_states, fwd_out, _, _ = _kernels(_interpret())
        scale = 1.0 / math.sqrt(DK)
        dev = q.device
        CS = torch.empty(BH, cfg.NC + 1, DK, DV, dtype=torch.float32, device=dev)  # state entering each chunk
        NS = torch.empty(BH, cfg.NC + 1, DK, dtype=torch.float32, device=dev)
        MS = torch.empty(BH, cfg.NC + 1, dtype=torch.float32, device=dev)
        has_init = C0 is not None
        dummy = MS  # an unused pointer where there is no initial state
        fwd_states[(BH, *cfg.tile_counts("scan"))](
            k, v, i, lf, C0 if has_init else dummy, n0 if has_init else dummy, m0 if has_init else dummy,
            CS, NS, MS, S, cfg.NC, scale,
            HAS_INIT=has_init, **cfg.consts("scan"),
        )  # fmt: skip
        h = torch.empty(BH, S, DV, dtype=v.dtype, device=dev)
        MR, NR, SR = (torch.empty(BH, S, dtype=torch.float32, device=dev) for _ in range(3))
        fwd_out[(cfg.NC, BH, cfg.tile_counts("fwd")[1])](
            q, k, v, i, lf, CS, NS, MS, h, MR, NR, SR, S, cfg.NC, scale, eps,
            **cfg.consts("fwd"),
        )  # fmt: skip
        C_end, n_end, m_end = CS[:, cfg.NC].clone(), NS[:, cfg.NC].clone(), MS[:, cfg.NC].clone()
        ctx.save_for_backward(q, k, v, i, lf, h, CS, NS, MS, MR, NR, SR, C0, n0, m0, C_end, n_end)
        ctx.cfg, ctx.eps, ctx.scale, ctx.device = cfg, eps, scale, dev
        return h, C_end, n_end, m_end

    @staticmethod
    def backward(ctx, dh, dC_end, dn_end, dm_end):
        with _on(ctx.device):
            return _MLSTMTriton._backward(ctx, dh, dC_end, dn_end, dm_end)

    @staticmethod
    def _backward(ctx, dh, dC_end, dn_end, dm_end):
        q, k, v, i, lf, h, CS, NS, MS, MR, NR, SR, C0, n0, m0, C_end, n_end = ctx.saved_tensors
        cfg, eps = ctx.cfg, ctx.eps
        BH, S, DK = q.shape
        DV = v.shape[-1]
        dev = q.device
        _, _, bwd_states, bwd_chunk = _kernels(_interpret())
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        # readout h = num / N, N = max(|den|, exp(-m)) + eps, with m held fixed (its path is added below)
        delta = (dh.float() * h.float()).sum(-1)  # (BH, S)  dh . h
        invn = 1.0 / NR  # (BH, S)
        dden = -delta * invn * SR  # (BH, S)
        has_dfin = dC_end is not None or dn_end is not None
        dCf = torch.zeros_like(C_end) if dC_end is None else dC_end.float().contiguous()
        dnf = torch.zeros_like(n_end) if dn_end is None else dn_end.float().contiguous()
        DCS = torch.empty_like(CS)
        DNS = torch.empty_like(NS)
        bwd_states[(BH, *cfg.tile_counts("scan"))](
            q, dh, i, lf, MS, MR, invn, dden, dCf, dnf, DCS, DNS, S, cfg.NC,
            HAS_DFIN=has_dfin, **cfg.consts("scan"),
        )  # fmt: skip
        dq = torch.empty(BH, S, DK, dtype=torch.float32, device=dev)
        dk = torch.empty_like(dq)
        dv = torch.empty(BH, S, DV, dtype=torch.float32, device=dev)
        bwd_chunk[(cfg.NC, BH)](
            q, k, v, dh, i, lf, CS, NS, MS, MR, invn, dden, DCS, DNS, dq, dk, dv, S, cfg.NC, ctx.scale,
            **cfg.consts("bwd"),
        )  # fmt: skip

        # below, (BH, S) arrays run in traversal order (flipped with reverse: O(S) copies, not O(S * D))
        seq = (lambda x: x.flip(-1)) if cfg.reverse else (lambda x: x)
        # gate identities (m fixed): d i_s = k_s . dk_s, dF_t = q_t . dq_t - k_t . dk_t
        di = (k.float() * dk).sum(-1)  # (BH, S)
        dF = seq((q.float() * dq).sum(-1) - di)  # (BH, S)
        end = (dCf * C_end).sum((-2, -1)) + (dnf * n_end).sum(-1)  # (BH,) the final state's exp(F_last) factor
        dF[:, -1] += end
        dlf = seq(dF.flip(-1).cumsum(-1).flip(-1))  # (BH, S)  d logf_r = sum_{t >= r} dF_t

        # the stabiliser path: dh_t/dm_t = -h_t eps / N_t; the stored final state C = C* exp(-m) adds -end
        dm = seq(-eps * delta * invn)  # (BH, S)
        dm[:, -1] += (0.0 if dm_end is None else dm_end.float()) - end
        with torch.enable_grad():
            i64 = seq(i.detach().double()).requires_grad_()
            lf64 = seq(lf.detach().double()).requires_grad_()
            F64 = lf64.cumsum(-1)  # (BH, S)
            run = torch.cummax(i64 - F64, -1).values  # (BH, S)
            if m0 is not None:
                m064 = m0.detach().double().requires_grad_()
                run = torch.maximum(run, m064[:, None])
                inputs = (i64, lf64, m064)
            else:
                inputs = (i64, lf64)
            m64 = F64 + run  # (BH, S)  m_t = F_t + max(m_0, max_{s <= t} i_s - F_s)
            grads = torch.autograd.grad(m64, inputs, dm.double())
        di = di + seq(grads[0].float())
        dlf = dlf + seq(grads[1].float())

        dC0 = dn0 = dm0 = None
        if C0 is not None:
            dC0, dn0 = DCS[:, 0], DNS[:, 0]
            dm0 = (dC0 * C0).sum((-2, -1)) + (dn0 * n0).sum(-1) + grads[2].float()  # C0 enters as exp(m0) C0
        return dq, dk, dv, di, dlf, dC0, dn0, dm0, None, None, None


def mlstm_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    igate: Tensor,
    fgate: Tensor,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor, Tensor] | None = None,
    return_state: bool = False,
    reverse: bool = False,
):
    """The mLSTM of ultra_vil.mlstm (`mlstm(...)` with backend="triton") as fused Triton kernels.

    Long (about 90 lines) because about half of it is this docstring, the public contract of the backend; the code
    is argument checks, the layout of the kernels' inputs and one call of the autograd Function.

    Args:
        q, k: Queries and keys, (B, NH, S, DK); k is scaled by 1/sqrt(DK) here, as in the contract.
        v: Values, (B, NH, S, DV).
        igate, fgate: Input- and forget-gate pre-activations, (B, NH, S).
        chunk_size: Steps per chunk (any positive integer; tiles round it up to a power of two >= 16, masked).
        eps: Added to the normaliser.
        initial_state: (C (B, NH, DK, DV), n (B, NH, DK), m (B, NH)) to continue from; gradients reach it.
        return_state: Also return the state after the last step.
        reverse: Traverse from step S-1 to step 0 (the flipped inputs' result, flipped back), by addressing the
            tiles backwards: no flipped copies. initial_state is then the state before step S-1 and the returned
            state the one after step 0.

    Returns:
        (h (B, NH, S, DV) in v's dtype, MLSTMState in float32 or None). Differentiable w.r.t. q, k, v, both gates
        and the initial state.
    """

    if not available(q.device):
        raise RuntimeError(
            "the triton mLSTM backend needs triton and a CUDA device (or TRITON_INTERPRET=1 for CPU tests); "
            f"got device {q.device}, triton importable: {_triton_imports()}"
        )
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k (B, NH, S, DK), v (B, NH, S, DV); got {q.shape}, {k.shape}, {v.shape}")
    if igate.shape != q.shape[:3] or fgate.shape != q.shape[:3]:
        raise ValueError(f"expected gates {tuple(q.shape[:3])}, got {tuple(igate.shape)}, {tuple(fgate.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _require_floating(q=q, k=k, v=v, igate=igate, fgate=fgate)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in _DTYPES:
        raise ValueError(f"the triton mLSTM backend runs float32, bfloat16 and float16, not {dtype}; use 'chunkwise'")
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    if initial_state is not None:
        C0, n0, m0 = initial_state
        if C0.shape != (B, NH, DK, DV) or n0.shape != (B, NH, DK) or m0.shape != (B, NH):
            raise ValueError(
                f"initial_state must be C {(B, NH, DK, DV)}, n {(B, NH, DK)}, m {(B, NH)}; got "
                f"{tuple(C0.shape)}, {tuple(n0.shape)}, {tuple(m0.shape)}"
            )
        C0, n0, m0 = (t.float().reshape(B * NH, *t.shape[2:]).contiguous() for t in (C0, n0, m0))
    else:
        C0 = n0 = m0 = None
    if S == 0:
        h = v.new_zeros(B, NH, 0, DV)
        if not return_state:
            return h, None
        if C0 is None:
            last = MLSTMState(
                q.new_zeros(B, NH, DK, DV, dtype=torch.float32),
                q.new_zeros(B, NH, DK, dtype=torch.float32),
                q.new_full((B, NH), float("-inf"), dtype=torch.float32),
            )
        else:
            last = MLSTMState(C0.view(B, NH, DK, DV), n0.view(B, NH, DK), m0.view(B, NH))
        return h, last

    with _on(q.device), torch.autocast(q.device.type, enabled=False):
        qf, kf, vf = (t.to(dtype).reshape(B * NH, S, t.shape[-1]).contiguous() for t in (q, k, v))
        i32 = igate.float().reshape(B * NH, S).contiguous()
        # the sigmoid gate in log space, clamped at LOGF_MIN as in every backend (-inf: forget everything)
        lf32 = log_forget_gate(fgate.float()).reshape(B * NH, S).contiguous()
        # a non-finite key or value at step s would reach earlier outputs through 0 * NaN inside the tile matmuls;
        # such steps get an input gate of NaN instead and the kernels load k = v = 0 there, so the NaN reaches
        # exactly the outputs the recurrence spoils (s and later). Costs one read of k and v.
        bad = ~torch.isfinite(kf.sum(-1, dtype=torch.float32) + vf.sum(-1, dtype=torch.float32))  # (B*NH, S)
        i32 = i32.masked_fill(bad, float("nan"))
        h, C_end, n_end, m_end = _MLSTMTriton.apply(
            qf, kf, vf, i32, lf32, C0, n0, m0, chunk_size, float(eps), bool(reverse)
        )
    h = h.view(B, NH, S, DV).to(v.dtype)
    last = None
    if return_state:
        last = MLSTMState(C_end.view(B, NH, DK, DV), n_end.view(B, NH, DK), m_end.view(B, NH))
    return h, last


def check_on_device(device: torch.device | str = "cuda") -> float:
    """Max relative error of the kernels vs the float64 recurrence on `device`, over outputs, the five input
    gradients and the final state, at a few shapes (DK 96 / DV 192 as in ViL-T / ViL-S, S not a multiple of the
    chunk, an initial state); float32 must be within 1e-4 and bfloat16 within 2e-2, else RuntimeError.

    Returns the worst float32 error (the bfloat16 cases are checked against their tolerance too). Run by
    scripts/benchmark.py before any timing on a GPU, so a wrong kernel is never timed.
    """
    device = torch.device(device)
    if not available(device):
        raise RuntimeError(f"triton mLSTM kernels cannot run on {device} (triton importable: {_triton_imports()})")
    worst32 = 0.0
    cases = [  # (B, NH, S, DK, DV, chunk_size, dtype, with initial state, reverse)
        (1, 2, 130, 96, 64, 64, torch.float32, True, False),
        (1, 1, 77, 32, 192, 32, torch.float32, False, True),
        (1, 2, 100, 64, 64, 64, torch.bfloat16, True, False),
    ]
    for B, NH, S, DK, DV, L, dtype, with_state, reverse in cases:
        errs = _compare_to_reference(B, NH, S, DK, DV, L, dtype, with_state, reverse, device)
        err = max(errs.values())
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if not math.isfinite(err) or err > tol:
            raise RuntimeError(
                f"triton mLSTM kernel is wrong on {device}: B={B} NH={NH} S={S} DK={DK} DV={DV} chunk={L} "
                f"{dtype} reverse={reverse}: relative errors {errs} (tolerance {tol})"
            )
        if dtype == torch.float32:
            worst32 = max(worst32, err)
    return worst32


def _rel(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor (absolute where b is exactly 0)."""
    diff, scale = (a.double() - b.double()).norm().item(), b.double().norm().item()
    return diff / scale if scale > 0 else diff


def reference_inputs(B, NH, S, DK, DV, with_state: bool, seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Seeded float64 ([q, k, v, igate, fgate] (+ a moderate [C0, n0, m0] with `with_state`), [projections of h, C,
    n, m]): a loss of the projections reaches every output; spread gates make stabiliser and normaliser matter."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, NH, S, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g, dtype=torch.float64)
    ig = 3.0 * torch.randn(B, NH, S, generator=g, dtype=torch.float64)
    fg = 3.0 * torch.randn(B, NH, S, generator=g, dtype=torch.float64) + 2.0
    inputs = [q, k, v, ig, fg]
    if with_state:
        inputs += [
            torch.randn(B, NH, DK, DV, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(B, NH, DK, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(B, NH, generator=g, dtype=torch.float64),
        ]
    weights = [torch.randn(*shape, generator=g, dtype=torch.float64)
               for shape in ((B, NH, S, DV), (B, NH, DK, DV), (B, NH, DK), (B, NH))]  # fmt: skip
    return inputs, weights


def _compare_to_reference(B, NH, S, DK, DV, L, dtype, with_state, reverse, device, seed=0) -> dict[str, float]:
    """Relative errors of h, the final state and all gradients (loss: random projections of h and the state).

    The reference is the float64 recurrence (the flipped inputs' recurrence, flipped back, for `reverse`)."""
    from .api import mlstm

    inputs, (wh, wC, wn, wm) = reference_inputs(B, NH, S, DK, DV, with_state, seed)
    # inputs rounded to the tested dtype, so the reference sees exactly what the kernel sees
    inputs = [t.to(dtype).double() if j < 3 else t for j, t in enumerate(inputs)]

    def run(ts, backend, cast, dev):
        ts = [t.to(device=dev, dtype=cast if j < 3 else (torch.float64 if cast == torch.float64 else torch.float32))
              .detach().requires_grad_() for j, t in enumerate(ts)]  # fmt: skip
        init = tuple(ts[5:8]) if with_state else None
        if backend == "triton":
            h, st = mlstm_triton(*ts[:5], chunk_size=L, initial_state=init, return_state=True, reverse=reverse)
        else:
            seq = [t.flip(2) for t in ts[:5]] if reverse else ts[:5]
            h, st = mlstm(*seq, backend=backend, initial_state=init, return_state=True)
            h = h.flip(2) if reverse else h
        outs = [h, st.C, st.n, st.m]
        loss = sum((o.double() * w.to(dev)).sum() for o, w in zip(outs, (wh, wC, wn, wm)))
        grads = torch.autograd.grad(loss, ts)
        return [o.detach().double().cpu() for o in outs] + [gr.double().cpu() for gr in grads]

    ref = run(inputs, "recurrent", torch.float64, torch.device("cpu"))
    got = run(inputs, "triton", dtype, device)
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df"] + (["dC0", "dn0", "dm0"] if with_state else [])
    errs = {name: _rel(a, b) for name, a, b in zip(names, got, ref)}
    if with_state:
        # d m0 = <dC0, C0> + <dn0, n0> + ...: one scalar per head from DK * DV terms that largely cancel, so its
        # error is measured against the sum of the terms' magnitudes (the condition of the sum)
        terms = (ref[9] * inputs[5]).abs().sum((-2, -1)) + (ref[10] * inputs[6]).abs().sum(-1)  # (B, NH)
        errs["dm0"] = ((got[11] - ref[11]).abs() / terms).max().item()
    return errs


def compile_report(
    arch: int = 90,
    dtype: torch.dtype = torch.bfloat16,
    DK: int = 64,
    DV: int = 64,
    chunk_size: int = 64,
    reverse: bool = False,
) -> dict[str, str]:
    """Compile the four kernels for CUDA compute capability `arch` (90: H100 / H200) without a GPU or a driver.

    The interpreter ignores what only the GPU compiler checks (tl.dot operand shapes and dtypes, layouts, register
    allocation); this catches it on any machine with triton's bundled ptxas. Returns, per kernel, ptxas' resource
    line (registers, stack = spills, shared memory) where cuobjdump is bundled too, else "compiled". Used by the
    tests and to choose the tiles in _Config. Needs a process that imported triton without TRITON_INTERPRET=1:
    triton's own jit helpers (cumsum's combine function, ...) pick interpreter or compiler at import.
    """
    import subprocess
    import tempfile

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(tl.standard._sum_combine, InterpretedFunction):
        msg = "compile_report needs a process where triton was imported without TRITON_INTERPRET=1"
        raise RuntimeError(msg)  # noqa: TRY004
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"  # triton.jit decides interpreter or compiler when it decorates
    try:
        kernels = _kernels(False)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    cfg = _Config(4 * chunk_size, DK, DV, chunk_size, dtype, False, reverse)
    io = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    report = {}
    for fn, kind, flags in zip(
        kernels, ("scan", "fwd", "scan", "bwd"), ({"HAS_INIT": True}, {}, {"HAS_DFIN": True}, {})
    ):
        consts = {**cfg.consts(kind), **flags}
        num_warps = consts.pop("num_warps")
        signature = {}
        for name in fn.arg_names:
            if name in consts:
                signature[name] = "constexpr"
            elif name in ("S", "NC"):
                signature[name] = "i32"
            elif name in ("scale", "eps"):
                signature[name] = "fp32"
            else:  # q, k, v, h, dh in the input dtype; gates, states and gradients in float32
                signature[name] = io if name in ("Q", "K", "V", "H", "DH") else "*fp32"
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs=consts),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": num_warps},
        )
        line = "compiled"
        if os.path.exists(cuobjdump):
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "k.cubin")
                with open(path, "wb") as f:
                    f.write(compiled.asm["cubin"])
                out = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=False)
            line = next((row.strip() for row in out.stdout.splitlines() if "REG:" in row), "compiled")
        report[fn.__name__] = line
    return report
