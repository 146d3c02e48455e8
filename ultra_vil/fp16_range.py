"""Float16's range as a checkpoint sees it: which tensors of a model a float16 copy would saturate.

Ultralytics writes last.pt / best.pt with the EMA model cast to float16 and clamps what overflows
(`nan_to_num`: +-65504), so a tensor that outgrew float16's range in float32 training (a BatchNorm running_var
behind a mixer whose activations are large, say) is silently wrong in the file, and the reloaded model differs
from the one the trainer validated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


def tensor_range(state: dict[str, Tensor]) -> list[tuple[str, float]]:
    """(name, max |value|) of every non-empty floating tensor of a state dict, largest first; NaN is ignored, inf
    counts (a float16 cast turns an overflow into inf)."""
    out = []
    for name, t in state.items():
        if isinstance(t, Tensor) and t.is_floating_point() and t.numel():
            a = t.detach().float().abs().nan_to_num(nan=0.0, posinf=float("inf"))
            out.append((name, a.max().item()))
    return sorted(out, key=lambda x: -x[1])


def float16_overflows(model: nn.Module | dict[str, Tensor]) -> list[tuple[str, float]]:
    """(name, max |finite value|) of the tensors holding a finite value beyond float16's range, largest first: what
    a float16 checkpoint of `model` (a module or a state dict) would clamp. Non-finite values are not counted
    (Ultralytics resyncs or clears those itself)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out = []
    for name, t in state.items():
        if isinstance(t, Tensor) and t.is_floating_point() and t.numel():
            a = t.detach().float().abs()
            a = a[torch.isfinite(a) & (a > FP16_MAX)]
            if a.numel():
                out.append((name, a.max().item()))
    return sorted(out, key=lambda x: -x[1])


def overflow_message(name: str, value: float) -> str:
    """One line naming the tensor a float16 checkpoint saturates."""
    return (
        f"ultra-vil: {name} holds |value| {value:.4g} > float16's {FP16_MAX:.0f}; Ultralytics saves the EMA in "
        "float16, so the checkpoint clamps it and the reloaded model differs from the one validated"
    )
