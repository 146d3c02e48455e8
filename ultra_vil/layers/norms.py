"""Norms with the scale stored as w and applied as 1 + w (w = 0 at init), as in ViL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """LayerNorm whose scale is stored as w with effective weight 1 + w (w = 0 at init), as in ViL. (..., D)."""

    __module__ = "ultra_vil.vil"  # the path checkpoints pickle: see ultra_vil/layers/__init__.py

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # the normalised shape comes from the parameter, not from x.shape: a traced shape breaks ONNX export
        return F.layer_norm(x, self.weight.shape, 1.0 + self.weight, self.bias, self.eps)


class MultiHeadNorm(nn.Module):
    """GroupNorm over each head's features (weight 1 + w): (B, NH, S, DH) -> (B, S, NH * DH)."""

    __module__ = "ultra_vil.vil"  # the path checkpoints pickle: see ultra_vil/layers/__init__.py

    def __init__(self, dim: int, num_heads: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        B, NH, S, DH = h.shape
        x = h.transpose(1, 2).reshape(B * S, NH * DH)  # (B*S, E)
        # num_groups from the module, not from h.shape: ONNX export needs it constant
        x = F.group_norm(x, self.num_heads, 1.0 + self.weight, self.bias, self.eps)
        return x.reshape(B, S, NH * DH)  # (B, S, E)
