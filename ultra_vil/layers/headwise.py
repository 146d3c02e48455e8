"""The block-diagonal ("headwise") linear projection of ViL's q, k and v.

The weight is left uninitialised here (`torch.empty`): the layer that owns the projection initialises it
(ViL: small_init, `ultra_vil.vil.ViLLayer.reset_parameters`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _headwise_t(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Block-diagonal projection of N tokens, answered feature-major: (N, NB * bs) -> (NB, bs, N).

    One batched matmul over the NB blocks with the tokens as the long dimension: W (bs, bs) @ x^T (bs, N) per
    block. The token-major contraction (N, bs) @ (bs, bs) has a 4-wide output and runs 3-6x slower on CPU (and
    needs a copy in and out); here the input is a strided view and the bias rides in the matmul (baddbmm).
    """
    NB, bs, _ = weight.shape
    xt = x.reshape(-1, NB, bs).permute(1, 2, 0)  # (NB, bs, N) view
    return torch.bmm(weight, xt) if bias is None else torch.baddbmm(bias.view(NB, bs, 1), weight, xt)


class HeadwiseLinear(nn.Module):
    """Block-diagonal projection: `dim` features in blocks of `block_size`, each with its own square matrix.

    (..., dim) -> (..., dim). Weight (dim / block_size, block_size, block_size), rows = outputs (as in ViL).
    """

    __module__ = "ultra_vil.vil"  # the path checkpoints pickle: see ultra_vil/layers/__init__.py

    def __init__(self, dim: int, block_size: int, bias: bool = True) -> None:
        super().__init__()
        if dim % block_size:
            raise ValueError(f"HeadwiseLinear: dim={dim} is not divisible by block_size={block_size}")
        self.block_size = block_size
        self.weight = nn.Parameter(torch.empty(dim // block_size, block_size, block_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        out = _headwise_t(x.reshape(-1, shape[-1]), self.weight, self.bias)  # (NB, bs, N)
        return out.permute(2, 0, 1).reshape(shape)  # (..., dim)
