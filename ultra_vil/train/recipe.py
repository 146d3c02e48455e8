"""The optimisation recipe: AdamW parameter groups (weight decay, layer-wise lr decay) and the lr schedule.

Defaults are the paper's (VisionLSTM2 pretrain yamls, research notes 1.9): AdamW, peak lr 1e-3 x batch / 1024,
betas (0.9, 0.999), weight decay 0.05, 5 warmup epochs, cosine to 1e-6, gradient clipping at norm 1.0.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ultra_vil.layers import exempt_from_decay


# VisionLSTM's `group_matcher()`: the rule for a model without one
DEFAULT_GROUPS = {"stem": r"^(patch_embed|pos_embed|cls_token)", "blocks": r"^blocks\.blocks\.(\d+)\."}


def layer_id(name: str, num_blocks: int, groups: dict[str, str] | None = None) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the stem (patch and position embeddings, CLS token),
    1 + b // 2 for block b, the top (final norm, head) above the last block. `groups` is the model's
    `group_matcher()` (timm's hook: a `stem` regex and a `blocks` regex capturing the block index).

    Blocks are grouped in pairs, one per traversal direction, as the ViL segmentation recipe groups two blocks
    per decay step; a pair then plays the part of one ViT layer (ViL-T's 24 blocks -> 12 steps, like ViT-T).
    """
    groups = groups or DEFAULT_GROUPS
    if re.match(groups["stem"], name):
        return 0
    block = re.match(groups["blocks"], name)
    if block:
        return 1 + int(block.group(1)) // 2
    return 1 + (num_blocks + 1) // 2


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay where `ultra_vil.layers.exempt_from_decay` says so (1-D parameters, position
    embedding, CLS token, Vim's A_log) and on the names of `model.no_weight_decay()`, when the model has it; with
    layer_decay < 1 the lr of a parameter at depth d (see `layer_id`, with the model's `group_matcher()`) is scaled
    by layer_decay ** (top - d). Each group carries its `lr_scale`.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups_re = model.group_matcher() if hasattr(model, "group_matcher") else DEFAULT_GROUPS
    named = list(model.named_parameters())
    indices = [int(m.group(1)) for name, _ in named if (m := re.match(groups_re["blocks"], name))]
    num_blocks = 1 + max(indices) if indices else 0
    top = 1 + (num_blocks + 1) // 2
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        no_decay = exempt_from_decay(name, p) or name in skip
        depth = layer_id(name, num_blocks, groups_re) if layer_decay != 1.0 else top
        key = (depth, no_decay)
        if key not in groups:
            groups[key] = dict(
                params=[],
                weight_decay=0.0 if no_decay else weight_decay,
                lr_scale=layer_decay ** (top - depth),
                name=f"layer{depth}_{'no_decay' if no_decay else 'decay'}",
            )
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float = 1.0,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; `lr` is the peak lr (the schedule rewrites each group's lr every step)."""
    return torch.optim.AdamW(
        param_groups(model, weight_decay, layer_decay), lr=lr, betas=tuple(betas), weight_decay=weight_decay,
        fused=fused or None,
    )


class WarmupCosine:
    """lr at optimiser step t: linear warmup from peak / warmup_steps to peak over `warmup_steps`, then a
    half cosine from peak to `min_lr` at `total_steps` (and min_lr after it).

    A pure function of the step, so resuming only needs the step count.
    """

    def __init__(self, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> None:
        self.peak_lr, self.min_lr = peak_lr, min(min_lr, peak_lr)
        self.warmup_steps, self.total_steps = max(0, warmup_steps), max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step` (times the group's lr_scale); returns the unscaled lr."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return dict(
            peak_lr=self.peak_lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps
        )
