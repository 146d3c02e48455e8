"""Vision-LSTM layers, blocks and block pairs (VisionLSTM2 of Alkin et al. 2024, arXiv:2406.04303).

Everything here works on token sequences (B, S, D) laid out row-major over a grid (H, W) that is passed at run
time: the 2D convolution and every sequence <-> image reshape use the grid of the current input, so one module
runs on any H x W, rectangular included (the reference builds the conv for one fixed grid and is silently wrong
on others). The mLSTM itself is `ultra_vil.mlstm.mlstm`, the package's only copy of the cell math.

A ViL block is `x + DropPath(ViLLayer(LayerNorm(x)))`; a ViLLayer with D = dim and E = expansion * D:
    x_m, z = proj_up(x)                       Linear(D, 2E)
    x_c = SiLU(depthwise 3x3 conv of x_m on the grid)
    q, k = headwise(x_c); v = headwise(x_m)   block-diagonal 4x4 projections; v from the *unconvolved* branch
    igate, fgate = Linear(3E, NH)(cat(q, k, v))
    h~ = GroupNorm_NH(mlstm(q, k, v, igate, fgate))   NH = 4 heads of E / 4
    out = proj_down((h~ + learnable_skip * x_c) * SiLU(z))
Traversal: a direction reorders the tokens before the mixer and restores the order after it. Row-wise from the
bottom-right is the reversed row-major sequence, i.e. the grid rotated by 180 degrees, so the conv still sees a
consistent image; column-wise orders transpose the grid to (W, H). `to_direction` / `from_direction` write that
reordering out; the layer itself never flips: a reversed order runs the cell backwards (`mlstm(reverse=True)`)
and the conv with the 180-degree-rotated kernel on the map as it lies (only the column orders copy, to transpose).

The forward pass computes those equations with fewer passes over the tokens (same parameters and state-dict
names: checkpoints of version 0.1.0 load and give the same outputs, tests/fixtures): q, k, v leave their
block-diagonal projections already in the cell's (B, NH, S, DH) layout; both gates are one projection of x_c
plus one of x_m (their weight is folded with the q/k/v blocks at run time: no cat); the head norm runs where h
lies and its transposition rides in the skip's multiply-add; in training, head norm, skip and output gate are
one autograd Function that saves three (B, S, E) tensors per layer fewer than autograd would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

# the shared layers live in ultra_vil.layers; their pickled path stays `ultra_vil.vil.<name>` (a checkpoint
# contract: Ultralytics checkpoints pickle whole modules), so they must stay importable from here
from ultra_vil.layers import DropPath, HeadwiseLinear, LayerNorm, MultiHeadNorm
from ultra_vil.layers.headwise import _headwise_t
from ultra_vil.mlstm import mlstm

DIRECTIONS = ("row_fwd", "row_bwd", "col_fwd", "col_bwd")

# traversal name -> (directions of each block in a repeating cycle, directions mixed inside one block, shared)
# "alternating" is ViL's choice; the others are the block designs of the paper's ablation (Sec. 4 / Table 2,
# src/vislstm/modules/xlstm/blocks/mlstm/layer.py of NX-AI/vision-lstm).
TRAVERSALS = {
    "alternating": dict(cycle=(("row_fwd",), ("row_bwd",)), shared=False),
    "alternating_quad": dict(cycle=(("row_fwd",), ("row_bwd",), ("col_fwd",), ("col_bwd",)), shared=False),
    "bidirectional": dict(cycle=(("row_fwd", "row_bwd"),), shared=False),
    "bidirectional_shared": dict(cycle=(("row_fwd", "row_bwd"),), shared=True),
    "quaddirectional": dict(cycle=(DIRECTIONS,), shared=False),
    "quaddirectional_shared": dict(cycle=(DIRECTIONS,), shared=True),
}


def small_init_(param: Tensor, dim: int) -> Tensor:
    """N(0, sqrt(2 / (5 dim))): 'Transformers without Tears' (Nguyen & Salazar 2019), as in xLSTM and ViL."""
    return nn.init.normal_(param, mean=0.0, std=math.sqrt(2 / (5 * dim)))


def wang_init_(param: Tensor, dim: int, num_blocks: int) -> Tensor:
    """N(0, 2 / (num_blocks sqrt(dim))) (GPT-NeoX); ViL's released models used num_blocks = 1."""
    return nn.init.normal_(param, mean=0.0, std=2 / num_blocks / math.sqrt(dim))


def block_directions(traversal: str, block_index: int) -> tuple[str, ...]:
    """The directions block `block_index` (0-based) reads its tokens in, for a traversal of TRAVERSALS."""
    if traversal not in TRAVERSALS:
        raise ValueError(f"unknown traversal {traversal!r}; expected one of {tuple(TRAVERSALS)}")
    cycle = TRAVERSALS[traversal]["cycle"]
    return cycle[block_index % len(cycle)]


def to_direction(x: Tensor, grid: tuple[int, int], direction: str) -> tuple[Tensor, tuple[int, int]]:
    """Reorder row-major tokens (B, H*W, C) into `direction`; returns them with the grid they now lie on."""
    H, W = grid
    if direction == "row_fwd":
        return x, (H, W)
    if direction == "row_bwd":
        return x.flip(1), (H, W)  # reversed raster = grid rotated by 180 degrees, still H x W
    B, S, C = x.shape
    xt = x.reshape(B, H, W, C).transpose(1, 2).reshape(B, S, C)  # column-major order, grid (W, H)
    return (xt if direction == "col_fwd" else xt.flip(1)), (W, H)


def from_direction(x: Tensor, grid: tuple[int, int], direction: str) -> Tensor:
    """Inverse of `to_direction`: tokens in `direction` order back to row-major over grid (H, W)."""
    H, W = grid
    if direction == "row_fwd":
        return x
    if direction == "row_bwd":
        return x.flip(1)
    B, S, C = x.shape
    if direction == "col_bwd":
        x = x.flip(1)
    return x.reshape(B, W, H, C).transpose(1, 2).reshape(B, S, C)


class MLSTMMixer(nn.Module):
    """The mLSTM branch of a ViL layer for one traversal: conv, q/k/v, gates, cell, head norm, skip.

    (x_m (B, S, E) in traversal order, grid (H', W') of that order) -> (B, S, E). With `reverse`, the traversal
    runs from the last token to the first: `mixer(x, grid, reverse=True)` equals `mixer(x.flip(1), grid).flip(1)`
    (the reversed raster of an H' x W' grid is the grid rotated by 180 degrees), computed without the flips: the
    cell runs backwards (`mlstm(..., reverse=True)`) and the conv uses the rotated kernel.

    The parameters are VisionLSTM2's (names and shapes are the checkpoint contract); the forward pass regroups
    their products: q, k, v come out of `_headwise_t` straight into the cell's (B, NH, S, DH) layout, and both
    gates, Linear(3E, NH) of cat(q, k, v) in the paper, are one (2 NH, E) projection of x_c plus one of x_m
    (q = x_c A_q^T + b_q is linear, so igate's q-columns times A_q is a weight on x_c), without building the cat.
    """

    def __init__(
        self,
        inner_dim: int,
        num_heads: int = 4,
        qkv_block_size: int = 4,
        conv_kernel_size: int = 3,
        bias: bool = True,
        backend: str = "auto",
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner dim {inner_dim} is not divisible by num_heads={num_heads}")
        if conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd (same-size 2D conv), got {conv_kernel_size}")
        self.num_heads = num_heads
        self.backend = backend
        self.chunk_size = chunk_size
        E = inner_dim
        self.conv = nn.Conv2d(E, E, conv_kernel_size, padding=conv_kernel_size // 2, groups=E, bias=bias)
        self.q_proj = HeadwiseLinear(E, qkv_block_size, bias)
        self.k_proj = HeadwiseLinear(E, qkv_block_size, bias)
        self.v_proj = HeadwiseLinear(E, qkv_block_size, bias)
        self.igate = nn.Linear(3 * E, num_heads)
        self.fgate = nn.Linear(3 * E, num_heads)
        self.outnorm = MultiHeadNorm(E, num_heads, bias)
        self.learnable_skip = nn.Parameter(torch.ones(E))

    def forward(
        self, x_m: Tensor, grid: tuple[int, int], cls_index: int | None = None, reverse: bool = False
    ) -> Tensor:
        h, x_c = self.mix(x_m, grid, cls_index, reverse)
        return norm_skip(h, x_c, self.outnorm, self.learnable_skip)  # (B, S, E)

    def mix(
        self, x_m: Tensor, grid: tuple[int, int], cls_index: int | None = None, reverse: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Everything up to the cell: (x_m (B, S, E), grid) -> (h (B, NH, S, DH) un-normalised, x_c (B, S, E))."""
        B, S, E = x_m.shape
        NH = self.num_heads
        x_c = F.silu(self._conv(x_m, grid, cls_index, reverse))  # (B, S, E)
        xc2, xm2 = x_c.reshape(B * S, E), x_m.reshape(B * S, E)  # views (x_m: rows of the proj_up output)

        def heads(t: Tensor) -> Tensor:  # (NB, bs, B*S) = (E, B*S) = (NH, DH, B, S) -> (B, NH, S, DH)
            # one copy, into the cell's layout: its batched matmuls need (B, NH, chunk) to fold into one batch dim;
            # a view of E as (NH, DH) whether or not a block straddles two heads
            return t.view(NH, E // NH, B, S).permute(2, 0, 3, 1).contiguous()

        q = heads(_headwise_t(xc2, self.q_proj.weight, self.q_proj.bias))
        k = heads(_headwise_t(xc2, self.k_proj.weight, self.k_proj.bias))
        v = heads(_headwise_t(xm2, self.v_proj.weight, self.v_proj.bias))
        w_c, w_m, b = self._gate_weights()
        gates = torch.addmm(torch.addmm(b[:, None], w_c, xc2.t()), w_m, xm2.t())  # (2 NH, B*S)
        igate, fgate = gates.view(2, NH, B, S).transpose(1, 2)  # (B, NH, S) views
        h = mlstm(q, k, v, igate, fgate, backend=self.backend, chunk_size=self.chunk_size, reverse=reverse)
        return h, x_c  # (B, NH, S, DH), (B, S, E)

    def _gate_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """Both gates as weights on x_c and x_m: (2 NH, E), (2 NH, E) and a bias (2 NH,).

        gate = W_q q + W_k k + W_v v + b_g with q = A_q x_c + b_q (block-diagonal A), so the weight on x_c is
        W_q A_q + W_k A_k, on x_m W_v A_v, and the bias b_g + W_q b_q + W_k b_k + W_v b_v. All O(NH * E * bs).
        """
        projs = (self.q_proj, self.k_proj, self.v_proj)
        NB, bs, _ = self.q_proj.weight.shape
        w_g = torch.cat([self.igate.weight, self.fgate.weight])  # (2 NH, 3E), columns in cat(q, k, v) order
        A = torch.stack([p.weight for p in projs])  # (3, NB, bs, bs)
        M = torch.einsum("gtno,tnoi->tgni", w_g.view(-1, 3, NB, bs), A).flatten(2)  # (3, 2 NH, E)
        b = torch.cat([self.igate.bias, self.fgate.bias])  # (2 NH,)
        if self.q_proj.bias is not None:
            b = b + w_g @ torch.cat([p.bias for p in projs])  # not torch.addmv: ONNX has no addmv
        return M[0] + M[1], M[2], b

    def _conv(self, x_m: Tensor, grid: tuple[int, int], cls_index: int | None, reverse: bool = False) -> Tensor:
        """Depthwise 2D conv of the tokens on the runtime grid, (B, S, E) -> (B, S, E).

        With `reverse` the tokens are read last to first, i.e. the grid is rotated by 180 degrees: convolving the
        un-rotated map with the rotated kernel gives the same numbers in the original order, without the flips.
        A CLS token at `cls_index` (middle-CLS pooling) has no spatial neighbours: it gets the conv of a 1 x 1
        image with zero padding, i.e. the kernel's centre tap plus the bias.
        """
        B, S, E = x_m.shape
        H, W = grid
        weight = self.conv.weight.flip(-1, -2) if reverse else self.conv.weight  # (E, 1, k, k)
        if cls_index is None:
            # (B, S, E) viewed as a channels-last (B, E, H, W) image: no copy in, and the conv answers in
            # channels-last, so the way back is a view too
            img = x_m.reshape(B, H, W, E).permute(0, 3, 1, 2)  # (B, E, H, W), channels-last strides
            out = F.conv2d(img, weight, self.conv.bias, padding=self.conv.padding, groups=E)
            return out.permute(0, 2, 3, 1).reshape(B, S, E)  # (B, S, E)
        patches = torch.cat([x_m[:, :cls_index], x_m[:, cls_index + 1 :]], 1)  # (B, H*W, E)
        out = self._conv(patches, grid, None, reverse)  # (B, H*W, E)
        k = self.conv.kernel_size[0] // 2
        cls = x_m[:, cls_index : cls_index + 1] * self.conv.weight[:, 0, k, k]  # (B, 1, E); the centre tap
        if self.conv.bias is not None:
            cls = cls + self.conv.bias
        return torch.cat([out[:, :cls_index], cls, out[:, cls_index:]], 1)  # (B, S, E)


class _NormSkipGate(torch.autograd.Function):
    """y = (LayerNorm_DH(h) (1 + w) + b + skip x_c) SiLU(z): the layer's output gate, saving what it must.

    (h (B, NH, S, DH), x_c (B, S, E), z (B, S, E), w, b, skip (E,)) -> (B, S, E). Autograd would keep the
    normalised h, the gated sum and SiLU(z) for backward: three (B, S, E) tensors per layer that nothing else
    needs. This keeps h (which the cell keeps anyway), its per-token statistics, x_c and z (both alive for other
    consumers) and recomputes the three in backward: a few elementwise passes for 3 E floats per token.
    Backward works token-major (B, S, NH, DH) and hands h's gradient back in h's own layout.
    """

    @staticmethod
    def forward(ctx, h, x_c, z, weight, bias, skip, eps):
        DH = h.shape[-1]
        hn, mean, rstd = torch.native_layer_norm(h, (DH,), None, None, eps)  # (B, NH, S, DH), (B, NH, S, 1) x 2
        y = F.silu(z).mul_(_affine_skip(hn, x_c, weight, bias, skip))  # (B, S, E)
        ctx.save_for_backward(h, mean, rstd, x_c, z, weight, bias, skip)
        return y

    @staticmethod
    def backward(ctx, gy):
        h, mean, rstd, x_c, z, weight, bias, skip = ctx.saved_tensors
        B, NH, S, DH = h.shape
        E = NH * DH
        mean_t, rstd_t = mean.transpose(1, 2), rstd.transpose(1, 2)  # (B, S, NH, 1)
        hn = torch.empty((B, S, NH, DH), dtype=h.dtype, device=h.device)  # token-major: one strided read of h
        torch.addcmul(-(mean_t * rstd_t), h.transpose(1, 2), rstd_t, out=hn)
        c = _affine_skip(hn.transpose(1, 2), x_c, weight, bias, skip)  # (B, S, E)
        gc = F.silu(z).mul_(gy)  # (B, S, E)  d/dc
        gz = torch.ops.aten.silu_backward(gy * c, z)  # (B, S, E)
        del c
        gx_c = gc * skip
        gskip = (gc * x_c).sum((0, 1))
        gbias = gc.sum((0, 1)) if bias is not None else None
        gc4 = gc.view(B, S, NH, DH)
        gw = (gc4 * hn).sum((0, 1)).view(E)
        ghn = gc4.mul_((1.0 + weight).view(NH, DH))  # (B, S, NH, DH)  d/d hn (gc is spent)
        # LayerNorm without affine: dh = rstd (ghn - mean(ghn) - hn mean(ghn hn)), over DH
        inner = ghn - ghn.mean(-1, keepdim=True) - hn * (ghn * hn).mean(-1, keepdim=True)
        # back in h's layout (B, NH, S, DH), which the cell's backward wants (no `out=` into a transposed view:
        # dynamo refuses non-contiguous out= tensors)
        gh = inner.mul_(rstd_t).transpose(1, 2).contiguous()
        return gh, gx_c, gz, gw, gbias, gskip, None


def _affine_skip(hn: Tensor, x_c: Tensor, weight: Tensor, bias: Tensor | None, skip: Tensor) -> Tensor:
    """hn (1 + w) + b + skip x_c for hn (B, NH, S, DH) (any strides) -> (B, S, E), token-major.

    The first operand of each multiply-add is token-major, so the result is too and h's transposition rides in
    the last pass instead of costing a copy of its own.
    """
    B, NH, S, DH = hn.shape
    base = x_c * skip if bias is None else torch.addcmul(bias, x_c, skip)  # (B, S, E)
    out = torch.addcmul(base.view(B, S, NH, DH), hn.transpose(1, 2), (1.0 + weight).view(NH, DH))
    return out.view(B, S, NH * DH)


def norm_skip(h: Tensor, x_c: Tensor, norm: MultiHeadNorm, skip: Tensor) -> Tensor:
    """outnorm(h) + skip * x_c: (h (B, NH, S, DH), x_c (B, S, E)) -> (B, S, E), without a transposed copy of h.

    The head norm is a LayerNorm over each head's DH features, run where h lies (B, NH, S, DH); GroupNorm of the
    token-major copy in MultiHeadNorm is the same function.
    """
    # DH from the parameter and the module, not from h.shape: a traced shape breaks ONNX export
    hn = F.layer_norm(h, (norm.weight.shape[0] // norm.num_heads,), eps=norm.eps)  # (B, NH, S, DH)
    return _affine_skip(hn, x_c, norm.weight, norm.bias, skip)


def norm_skip_gate(h: Tensor, x_c: Tensor, z: Tensor, norm: MultiHeadNorm, skip: Tensor) -> Tensor:
    """(norm_skip(h, x_c) * SiLU(z)): (B, NH, S, DH), (B, S, E), (B, S, E) -> (B, S, E).

    Training in one dtype goes through `_NormSkipGate` (less saved for backward); inference, autocast and
    tracing (ONNX export) take the plain ops.
    """
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (h, x_c, z, norm.weight, skip))
    plain = (
        not train
        or torch.is_autocast_enabled()
        or torch.jit.is_tracing()
        or not (h.dtype == x_c.dtype == z.dtype == norm.weight.dtype == skip.dtype)
    )
    if plain:
        return norm_skip(h, x_c, norm, skip) * F.silu(z)
    return _NormSkipGate.apply(h, x_c, z, norm.weight, norm.bias, skip, norm.eps)


class ViLLayer(nn.Module):
    """The ViL 'mLSTM block' (gated up/down projection around the mixer): (B, S, D), grid -> (B, S, D).

    Args:
        dim: Token width D.
        directions: Traversals mixed inside this layer (one for ViL's alternating design); their outputs are
            summed before the output gate, as in the paper's bidirectional / quad-directional ablations.
        shared: One mixer (conv, q/k/v, gates, cell) for all directions instead of one each.
        expansion: Inner width E = expansion * D.
        num_heads: mLSTM heads (4 in ViL).
        qkv_block_size: Block size of the block-diagonal q/k/v projections (4 in ViL).
        conv_kernel_size: Depthwise 2D conv kernel (3 in VisionLSTM2).
        bias: Biases in projections, conv and norms (VisionLSTM2: on).
        num_blocks_init: num_blocks of wang_init for proj_down (1 = the released ViL models).
        backend, chunk_size: Passed to `mlstm`.
    """

    def __init__(
        self,
        dim: int,
        directions: tuple[str, ...] = ("row_fwd",),
        shared: bool = False,
        expansion: int = 2,
        num_heads: int = 4,
        qkv_block_size: int = 4,
        conv_kernel_size: int = 3,
        bias: bool = True,
        num_blocks_init: int = 1,
        backend: str = "auto",
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        for d in directions:
            if d not in DIRECTIONS:
                raise ValueError(f"unknown direction {d!r}; expected one of {DIRECTIONS}")
        E = expansion * dim
        if E % num_heads or E % qkv_block_size:
            raise ValueError(
                f"ViLLayer: inner dim {E} (= {expansion} x dim {dim}) must be divisible by num_heads={num_heads} "
                f"and qkv_block_size={qkv_block_size}"
            )
        self.dim = dim
        self.directions = tuple(directions)
        self.shared = shared
        self.proj_up = nn.Linear(dim, 2 * E, bias=bias)
        n_mixers = 1 if shared else len(self.directions)
        self.mixers = nn.ModuleList(
            MLSTMMixer(E, num_heads, qkv_block_size, conv_kernel_size, bias, backend, chunk_size)
            for _ in range(n_mixers)
        )
        self.proj_down = nn.Linear(E, dim, bias=bias)
        self.reset_parameters(num_blocks_init)

    def reset_parameters(self, num_blocks_init: int = 1) -> None:
        """VisionLSTM2 init: small_init (with the outer dim) for proj_up and q/k/v, wang_init for proj_down,
        zero gate weights, forget-gate bias linspace(3, 6), input-gate bias N(0, 0.1), norms at 1 + 0."""
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, num_blocks_init)
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        for mixer in self.mixers:
            for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj):
                small_init_(proj.weight, self.dim)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
            nn.init.zeros_(mixer.fgate.weight)
            with torch.no_grad():
                mixer.fgate.bias.copy_(torch.linspace(3.0, 6.0, mixer.num_heads))
            nn.init.zeros_(mixer.igate.weight)
            nn.init.normal_(mixer.igate.bias, mean=0.0, std=0.1)
            nn.init.ones_(mixer.learnable_skip)
            nn.init.zeros_(mixer.outnorm.weight)
            if mixer.outnorm.bias is not None:
                nn.init.zeros_(mixer.outnorm.bias)

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        """(B, S, D) row-major tokens over `grid` -> (B, S, D). With `cls_index`, S = H*W + 1 and token
        `cls_index` is a CLS token without a grid position (row-wise directions only)."""
        B, S, D = x.shape
        H, W = grid
        if H * W + (cls_index is not None) != S:
            raise ValueError(f"ViLLayer: grid {tuple(grid)} does not hold {S} tokens")
        # proj_up as its two halves: x_m and z each come out contiguous (the conv then reads x_m without a copy,
        # and backward adds two (B, S, D) input gradients instead of concatenating two (B, S, E) ones)
        w, b = self.proj_up.weight, self.proj_up.bias
        E = w.shape[0] // 2
        x_m = F.linear(x, w[:E], None if b is None else b[:E])  # (B, S, E)
        z = F.linear(x, w[E:], None if b is None else b[E:])  # (B, S, E)
        h = 0
        for j, direction in enumerate(self.directions):
            mixer = self.mixers[0 if self.shared else j]
            reverse = direction.endswith("bwd")  # read last to first: the cell and the conv run reversed
            if direction.startswith("col"):
                if cls_index is not None:
                    raise ValueError(f"a CLS token is only supported with row-wise traversals, not {direction!r}")
                # column-major order is a transposed grid (W, H): one copy each way, the conv needs the image
                x_t = x_m.reshape(B, H, W, E).transpose(1, 2).reshape(B, S, E)  # (B, W*H, E)
                out = mixer(x_t, (W, H), None, reverse)  # (B, W*H, E)
                h = h + out.reshape(B, W, H, E).transpose(1, 2).reshape(B, S, E)  # back to row-major
            elif len(self.directions) == 1:  # ViL's case: the output gate fused with the head norm and skip
                h_cell, x_c = mixer.mix(x_m, grid, cls_index, reverse)  # (B, NH, S, DH), (B, S, E)
                return self.proj_down(norm_skip_gate(h_cell, x_c, z, mixer.outnorm, mixer.learnable_skip))
            else:
                h = h + mixer(x_m, grid, cls_index, reverse)  # (B, S, E)
        return self.proj_down(h * F.silu(z))  # (B, S, D)


class ViLBlock(nn.Module):
    """Pre-norm residual ViL block: (B, S, D), grid (H, W) -> (B, S, D)."""

    def __init__(self, dim: int, directions: tuple[str, ...] = ("row_fwd",), drop_path: float = 0.0, **layer_kw):
        super().__init__()
        self.norm = LayerNorm(dim, bias=layer_kw.get("bias", True))
        self.layer = ViLLayer(dim, directions, **layer_kw)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        return x + self.drop_path(self.layer(self.norm(x), grid, cls_index))


class ViLBlockPair(nn.Module):
    """Two ViL blocks: top-left -> bottom-right, then bottom-right -> top-left. (B, S, D), grid -> (B, S, D)."""

    def __init__(self, dim: int, drop_path: float = 0.0, **layer_kw) -> None:
        super().__init__()
        self.rowwise_from_top_left = ViLBlock(dim, ("row_fwd",), drop_path, **layer_kw)
        self.rowwise_from_bot_right = ViLBlock(dim, ("row_bwd",), drop_path, **layer_kw)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.rowwise_from_bot_right(self.rowwise_from_top_left(x, grid), grid)


class ViLStack(nn.Module):
    """`num_blocks` ViL blocks whose directions follow `traversal` (an odd count is allowed).

    (B, S, D), grid (H, W) -> (B, S, D). With traversal "alternating" and an even count this is
    num_blocks / 2 ViLBlockPairs, parameter for parameter.

    Args:
        dim: Token width.
        num_blocks: Number of blocks (not pairs).
        traversal: A key of TRAVERSALS.
        drop_path: One rate for every block, or a list with one rate per block.
        checkpoint: Recompute each block in backward (activation checkpointing) to save memory.
        **layer_kw: Passed to ViLLayer (expansion, num_heads, backend, chunk_size, ...).
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        traversal: str = "alternating",
        drop_path: float | list[float] = 0.0,
        checkpoint: bool = False,
        **layer_kw,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"ViLStack needs at least one block, got num_blocks={num_blocks}")
        rates = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * num_blocks
        if len(rates) != num_blocks:
            raise ValueError(f"drop_path has {len(rates)} rates for {num_blocks} blocks")
        shared = TRAVERSALS[traversal]["shared"] if traversal in TRAVERSALS else False
        self.blocks = nn.ModuleList(
            ViLBlock(dim, block_directions(traversal, b), rates[b], shared=shared, **layer_kw)
            for b in range(num_blocks)
        )
        self.checkpoint = checkpoint

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        for block in self.blocks:
            if self.checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, grid, cls_index, use_reentrant=False)
            else:
                x = block(x, grid, cls_index)
        return x
