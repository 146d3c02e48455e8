"""Exponential moving average of model weights (Polyak averaging; DeiT and timm's ModelEmaV2 use it).

After every optimiser step: ema = decay * ema + (1 - decay) * weights, for every floating-point parameter and
buffer; integer buffers are copied. The average is kept in float32 on the training device and evaluated
alongside the model each epoch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """An averaged copy of `model` (the plain module, not a DDP or compiled wrapper)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state, state = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema_state[k] for k in floats], [state[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in ema_state.items():
            if not v.is_floating_point():
                v.copy_(state[k])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
