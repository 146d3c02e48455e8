"""Sequencer's BiLSTM2D mixer and Sequencer2D block (Tatsunami & Taki, NeurIPS 2022, arXiv:2205.01972).

One of the two other recurrent vision mixers the ViL paper compares against (the other: `ultra_vil.vim`).
Framework-free like `ultra_vil.vil`: token sequences (B, S, D) laid out row-major over a grid (H, W) given at run
time, so one module runs on any H x W, rectangular included.

BiLSTM2D with D = dim and hidden size h per direction (Sequencer2D uses h = D / 4):
    v = BiLSTM_v(each column, top <-> bottom)     nn.LSTM(D, h, bidirectional=True): (B, H, W, 2h)
    r = BiLSTM_h(each row, left <-> right)        its own nn.LSTM(D, h, bidirectional=True): (B, H, W, 2h)
    out = fc(cat(v, r))                           Linear(4h, D)
A Sequencer2D block is two pre-norm residual sublayers, as in the paper (and timm's Sequencer2dBlock):
    x = x + DropPath(BiLSTM2D(LayerNorm(x)));  x = x + DropPath(MLP(LayerNorm(x)))   MLP: D -> 3D -> D, GELU
Both the norms and the MLP act on each token alone, so one block carries information from a pixel exactly to
its own row and its own column (tests/test_sequencer.py checks that set); two blocks reach the whole image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ultra_vil.layers import DropPath


class BiLSTM2D(nn.Module):
    """Bidirectional LSTMs along every column and every row, concatenated and fused: (B, S, D), grid -> (B, S, D).

    Args:
        dim: Token width D.
        hidden_size: LSTM hidden size per direction; None = D // 4 (Sequencer2D's choice).
        bias: Biases in the LSTMs and the fusion Linear.
    """

    def __init__(self, dim: int, hidden_size: int | None = None, bias: bool = True) -> None:
        super().__init__()
        hidden = dim // 4 if hidden_size is None else hidden_size
        for name, value in (("dim", dim), ("hidden_size", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BiLSTM2D: {name} must be an integer >= 1, got {value!r} (dim={dim})")
        self.dim, self.hidden_size = dim, hidden
        self.rnn_v = nn.LSTM(dim, hidden, batch_first=True, bias=bias, bidirectional=True)  # along columns
        self.rnn_h = nn.LSTM(dim, hidden, batch_first=True, bias=bias, bidirectional=True)  # along rows
        self.fc = nn.Linear(4 * hidden, dim, bias=bias)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, S, D = x.shape
        H, W = grid
        if H * W != S:
            raise ValueError(f"BiLSTM2D: grid {tuple(grid)} does not hold {S} tokens")
        img = x.reshape(B, H, W, D)
        cols = img.transpose(1, 2).reshape(B * W, H, D)  # each column, top to bottom
        v, _ = self.rnn_v(cols)  # (B*W, H, 2h)
        v = v.reshape(B, W, H, -1).transpose(1, 2)  # (B, H, W, 2h)
        r, _ = self.rnn_h(img.reshape(B * H, W, D))  # each row, left to right: (B*H, W, 2h)
        r = r.reshape(B, H, W, -1)  # (B, H, W, 2h)
        return self.fc(torch.cat([v, r], -1)).reshape(B, S, D)  # (B, S, D)


class ChannelMLP(nn.Module):
    """Per-token MLP D -> ratio * D -> D with GELU (Sequencer's channel mixer): (..., D) -> (..., D)."""

    def __init__(self, dim: int, ratio: float = 3.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"ChannelMLP: mlp ratio {ratio!r} leaves no hidden units at dim={dim}")
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SequencerBlock(nn.Module):
    """Sequencer2D block: token mixing by BiLSTM2D, then a channel MLP, each pre-norm residual.

    (B, S, D), grid (H, W) -> (B, S, D).

    Args:
        dim: Token width D.
        hidden_size: BiLSTM hidden size per direction; None = D // 4.
        mlp_ratio: Hidden width of the channel MLP as a multiple of D (3 in Sequencer2D).
        drop_path: Stochastic-depth rate of both residual branches.
    """

    def __init__(
        self, dim: int, hidden_size: int | None = None, mlp_ratio: float = 3.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # Sequencer's norm (timm: LayerNorm, eps 1e-6)
        self.mixer = BiLSTM2D(dim, hidden_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ChannelMLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's Sequencer init: xavier-uniform Linear weights, zero biases; the LSTMs keep PyTorch's default
        U(+-1/sqrt(h)) (timm re-applies exactly that)."""
        for lin in (self.mixer.fc, self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))
