"""Vision Mamba (Vim, Zhu et al. 2024, arXiv:2401.09417): bidirectional selective state-space blocks.

One of the two other recurrent vision mixers the ViL paper compares against (the other: `ultra_vil.sequencer`).
Framework-free like `ultra_vil.vil`: token sequences (B, S, D) laid out row-major over a grid (H, W) given at run
time; Vim reads the tokens as a 1D sequence, so the grid only checks that it holds S tokens, and any H x W works.

A Vim block is `x + DropPath(VimMixer(LayerNorm(x)))`; a VimMixer with D = dim and DI = expansion * D
(Vim's "bimamba v2" Mamba layer):
    x, z = in_proj(x)                                  Linear(D, 2 DI), no bias
    for each direction (forward over the row-major sequence; backward over its reverse), own weights:
        x_d = SiLU(causal depthwise conv1d(x))         kernel 4, in that direction's order
        dt, B, C = x_proj(x_d)                          Linear(DI, R + 2N), no bias; R = ceil(D / 16)
        delta = softplus(dt_proj(dt))                   Linear(R, DI)
        y_d = selective_scan(x_d, delta, A = -exp(A_log), B, C, D)     diagonal A (DI, N), N = 16
    out = out_proj((y_fwd + y_bwd) / 2 * SiLU(z))      Linear(DI, D), no bias
The halving is Vim's `if_devide_out=True` (the "_div2" in its released model names); the backward output is
flipped back to row-major before the sum. Norm: Vim's released models use RMSNorm; this file uses the ViL
LayerNorm (`ultra_vil.layers.LayerNorm`) so every mixer in this project has the same pre-norm (and ONNX-friendly
shapes).

The selective scan is pure PyTorch (`selective_scan`): a gated linear recurrence per channel d and state n,
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t,     y_t = C_t . h_t + D u_t,
computed chunkwise (memory linear in S) and tested against the step-by-step recurrence in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ultra_vil.layers import DropPath, LayerNorm

SCAN_BACKENDS = ("chunkwise", "recurrent")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    backend: str = "chunkwise",
    chunk_size: int = 32,
) -> Tensor:
    """Mamba's selective scan with a diagonal A (the S6 layer of Gu & Dao 2023), causal over S.

    Args:
        u: Inputs, (B, S, DI).
        delta: Step sizes, (B, S, DI), already positive (the caller applies softplus).
        A: Diagonal state matrix, (DI, N); real and <= 0 for a stable (decaying) recurrence.
        B, C: Input-dependent input and output matrices, (B, S, N) each.
        D: Skip connection per channel, (DI,), or None.
        backend: "chunkwise" (the one models use) or "recurrent" (the step-by-step specification).
        chunk_size: Steps per chunk of the chunkwise form.

    Returns:
        y, (B, S, DI), in the dtype of u; row t depends only on steps 0..t. The recurrence runs in float32 for
        half-precision inputs (float64 stays float64).
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; expected one of {SCAN_BACKENDS}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be an integer >= 1, got {chunk_size!r}")
    Bt, S, DI = u.shape
    if delta.shape != u.shape or A.shape[0] != DI or B.shape != (Bt, S, A.shape[1]) or C.shape != B.shape:
        raise ValueError(
            f"selective_scan: shapes do not fit: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}; expected (B, S, DI), (B, S, DI), (DI, N), (B, S, N), (B, S, N)"
        )
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_, delta_, A_, B_, C_ = (t.to(dtype) for t in (u, delta, A, B, C))
    if backend == "recurrent":
        y = _recurrent(u_, delta_, A_, B_, C_)
    else:
        y = _chunkwise(u_, delta_, A_, B_, C_, chunk_size)
    if D is not None:
        y = y + u_ * D.to(dtype)
    return y.to(u.dtype)


def _recurrent(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """One step at a time: the specification the chunkwise form is tested against. Returns y without D u."""
    Bt, S, DI = u.shape
    h = u.new_zeros(Bt, DI, A.shape[1])  # (B, DI, N)
    ys = []
    for t in range(S):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # (B, DI)
    return torch.stack(ys, 1)  # (B, S, DI)


def _chunkwise(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """Chunks of L steps: each chunk's end state alone, the state entering each chunk, then the outputs.

    Mamba-1's decay exp(delta_t A) differs per channel *and* state, so the mLSTM's intra-chunk quadratic form
    (an L x L decay matrix) would here be L x L x DI x N per chunk, L times the size of the states themselves;
    Mamba-2 made A a scalar per head to get that form. Instead, inside a chunk the recurrence runs step by step
    for every chunk at once (L sequential steps, whatever S is): first from a zero state, to get what each chunk
    alone adds to the state; the recurrence over those chunk-end states (S / L steps on (B, DI, N), cheap) gives
    the state entering every chunk; a second pass from those states reads out y. Every factor is a product of decays,
    exp(sum of log decays <= 0) <= 1: no exp of a positive number, no division by a decay and no difference of
    cumulative sums, so large decays underflow to exact zeros instead of overflowing. The states (B, NC, DI, N)
    of one step are the only state-sized tensors besides the decays: memory ~3 x B * S * DI * N, linear in S,
    and no (B, S, DI, N) write tensor is ever materialised (each step forms its own outer product). The end is
    padded with steps that neither decay (delta 0) nor write (u 0), so padding changes no output.
    """
    Bt, S, DI = u.shape
    N = A.shape[1]
    L = min(L, S)  # a chunk longer than the sequence would only add padding
    pad = (-S) % L
    if pad:
        u, delta, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B, C))
    NC = (S + pad) // L
    # step-major views: step t of every chunk at once; unbind (not [t]): each indexing op's backward would
    # write a zero-filled full-size gradient, L times the work
    decays = torch.exp(delta.reshape(Bt, NC, L, DI, 1) * A).unbind(2)  # L x (B, NC, DI, N), each <= 1
    du = (delta * u).reshape(Bt, NC, L, DI).unbind(2)  # L x (B, NC, DI)
    Bs = B.reshape(Bt, NC, L, 1, N).unbind(2)  # L x (B, NC, 1, N)
    Cs = C.reshape(Bt, NC, L, 1, N).unbind(2)
    # 1. what each chunk alone leaves in the state at its end, and its total log decay
    h = du[0][..., None] * Bs[0]  # (B, NC, DI, N)
    for t in range(1, L):
        h = decays[t] * h + du[t][..., None] * Bs[t]
    log_g = delta.reshape(Bt, NC, L, DI).sum(2)[..., None] * A  # (B, NC, DI, N)  sum_t delta_t A, <= 0
    # 2. the state entering chunk c: H_c = exp(g_{c-1}) H_{c-1} + h_{c-1}, H_0 = 0; one step per chunk (S / L
    # small steps), and unbind again: a traced graph (ONNX) then has the chunk count as a static Split size, so at
    # another sequence length it fails loudly instead of skipping chunks (a log-depth scan would bake in its depth)
    g, ends = torch.exp(log_g).unbind(1), h.unbind(1)  # NC x (B, DI, N)
    entering = [torch.zeros_like(ends[0])]
    for c in range(NC - 1):
        entering.append(g[c] * entering[-1] + ends[c])
    h = torch.stack(entering, 1)  # (B, NC, DI, N)
    # 3. the recurrence again, from the true entering states, read out step by step
    ys = []
    for t in range(L):
        h = decays[t] * h + du[t][..., None] * Bs[t]
        ys.append((h * Cs[t]).sum(-1))  # (B, NC, DI)
    return torch.stack(ys, 2).reshape(Bt, NC * L, DI)[:, :S]  # (B, S, DI)


class SSMBranch(nn.Module):
    """One direction of a Vim mixer: causal depthwise conv, input-dependent (delta, B, C), selective scan.

    (x (B, S, DI) in this direction's order) -> (B, S, DI), causal in that order (gating and projections are done
    by VimMixer). Parameter names follow Mamba (conv1d, x_proj, dt_proj, A_log, D).
    """

    def __init__(
        self,
        inner_dim: int,
        state_size: int = 16,
        dt_rank: int = 1,
        conv_kernel_size: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        backend: str = "chunkwise",
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        DI, N, R = inner_dim, state_size, dt_rank
        self.state_size, self.dt_rank = N, R
        self.backend, self.chunk_size = backend, chunk_size
        # padding k-1 on both sides, then keep the first S outputs: output t sees inputs t-k+1..t only
        self.conv1d = nn.Conv1d(DI, DI, conv_kernel_size, padding=conv_kernel_size - 1, groups=DI, bias=True)
        self.x_proj = nn.Linear(DI, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, DI, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(DI, 1))  # (DI, N)
        self.D = nn.Parameter(torch.ones(DI))
        self.reset_parameters(dt_min, dt_max)

    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's init: dt_proj weight U(+-R^-0.5); its bias the inverse softplus of dt ~ logU(dt_min, dt_max), so
        delta starts in [dt_min, dt_max]; A = -(1, ..., N) per channel (S4D-real); D = 1."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        DI = self.dt_proj.out_features
        dt = torch.exp(torch.rand(DI) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
            self.A_log.copy_(torch.log(torch.arange(1, self.state_size + 1, dtype=torch.float32)).repeat(DI, 1))
            self.D.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        S = x.shape[1]
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :S].transpose(1, 2))  # (B, S, DI), causal
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], -1)
        delta = F.softplus(self.dt_proj(dt))  # (B, S, DI)
        A = -torch.exp(self.A_log.float())  # (DI, N)
        return selective_scan(x, delta, A, Bm, Cm, self.D, backend=self.backend, chunk_size=self.chunk_size)


class VimMixer(nn.Module):
    """Vim's bidirectional Mamba layer ("bimamba v2"): (B, S, D), grid (H, W) -> (B, S, D).

    Args:
        dim: Token width D.
        expansion: Inner width DI = expansion * D (2 in Vim).
        state_size: SSM state size N per channel (16 in Vim).
        dt_rank: Rank of the delta projection; None = ceil(D / 16) (Mamba's "auto").
        conv_kernel_size: Causal depthwise conv1d kernel (4 in Vim).
        backend, chunk_size: Passed to `selective_scan`.
    """

    def __init__(
        self,
        dim: int,
        expansion: int = 2,
        state_size: int = 16,
        dt_rank: int | None = None,
        conv_kernel_size: int = 4,
        backend: str = "chunkwise",
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("expansion", expansion), ("state_size", state_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VimMixer: {name} must be an integer >= 1, got {value!r}")
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"VimMixer: unknown backend {backend!r}; expected one of {SCAN_BACKENDS}")
        DI = expansion * dim
        R = math.ceil(dim / 16) if dt_rank is None else dt_rank
        self.dim, self.inner_dim = dim, DI
        self.in_proj = nn.Linear(dim, 2 * DI, bias=False)
        branch_kw = {"state_size": state_size, "dt_rank": R, "conv_kernel_size": conv_kernel_size, "backend": backend}
        self.fwd = SSMBranch(DI, chunk_size=chunk_size, **branch_kw)  # top-left -> bottom-right (row-major)
        self.bwd = SSMBranch(DI, chunk_size=chunk_size, **branch_kw)  # bottom-right -> top-left
        self.out_proj = nn.Linear(DI, dim, bias=False)

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        """(B, S, D) row-major tokens over `grid` -> (B, S, D). With `cls_index`, S = H*W + 1 and that token is a
        CLS token (Vim's middle CLS token): the scan reads it like any other token of the sequence."""
        S = x.shape[1]
        if grid[0] * grid[1] + (cls_index is not None) != S:
            raise ValueError(f"VimMixer: grid {tuple(grid)} does not hold {S} tokens")
        xm, z = self.in_proj(x).chunk(2, dim=-1)  # (B, S, DI) each
        y = self.fwd(xm) + self.bwd(xm.flip(1)).flip(1)  # (B, S, DI), both in row-major order
        return self.out_proj(0.5 * y * F.silu(z))  # (B, S, D)


class VimBlock(nn.Module):
    """Pre-norm residual Vim block: x + DropPath(VimMixer(LayerNorm(x))). (B, S, D), grid -> (B, S, D)."""

    def __init__(self, dim: int, drop_path: float = 0.0, **mixer_kw) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.mixer = VimMixer(dim, **mixer_kw)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x), grid, cls_index))
