"""A synthetic VisionLSTM2 ViL-T state dict: the names and shapes of the released weights, random values."""

from __future__ import annotations

import torch

DIM, PAIRS, CLASSES = 192, 12, 1000  # ViL-T as released
E = 2 * DIM
# one direction of one VisionLSTM2 block pair: name -> shape (the released weights' format)
VIL2_BLOCK = {
    "norm.weight": (DIM,), "norm.bias": (DIM,),
    "layer.learnable_skip": (E,),
    "layer.proj_up.weight": (2 * E, DIM), "layer.proj_up.bias": (2 * E,),
    "layer.q_proj.weight": (E // 4, 4, 4), "layer.q_proj.bias": (E,),
    "layer.k_proj.weight": (E // 4, 4, 4), "layer.k_proj.bias": (E,),
    "layer.v_proj.weight": (E // 4, 4, 4), "layer.v_proj.bias": (E,),
    "layer.conv.weight": (E, 1, 3, 3), "layer.conv.bias": (E,),
    "layer.mlstm_cell.igate.weight": (4, 3 * E), "layer.mlstm_cell.igate.bias": (4,),
    "layer.mlstm_cell.fgate.weight": (4, 3 * E), "layer.mlstm_cell.fgate.bias": (4,),
    "layer.mlstm_cell.outnorm.weight": (E,), "layer.mlstm_cell.outnorm.bias": (E,),
    "layer.proj_down.weight": (DIM, E), "layer.proj_down.bias": (DIM,),
}  # fmt: skip
SIDES = ("rowwise_from_top_left", "rowwise_from_bot_right")


def vil2_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A VisionLSTM2 ViL-T state dict (legacy_norm, 1000 classes) with random values: 513 tensors."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"patch_embed.proj.weight": (DIM, 3, 16, 16), "patch_embed.proj.bias": (DIM,),
              "pos_embed.embed": (1, 14, 14, DIM)}  # fmt: skip
    for p in range(PAIRS):
        for side in SIDES:
            shapes.update({f"blocks.{p}.{side}.{k}": s for k, s in VIL2_BLOCK.items()})
    shapes.update({"norm.weight": (DIM,), "norm.bias": (DIM,), "legacy_norm.weight": (E,), "legacy_norm.bias": (E,),
                   "head.weight": (CLASSES, E), "head.bias": (CLASSES,)})  # fmt: skip
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}
