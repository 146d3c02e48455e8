"""The one no-weight-decay rule of ultra-vil, used by the classifier recipe and by the Ultralytics optimizer patch.

A parameter gets no weight decay when it is 1-D (norm gains, biases, gate biases, learnable skips, Vim's D) or its
own name is one of NO_DECAY_NAMES: the position embedding and CLS token (as ViT and ViL train them) and Vim's
A_log (Mamba exempts its state decay). ViL's norm gains are stored as w in (1 + w), so decay would pull them to a
gain of 1, not 0; the recipe exempts them all the same.
"""

from __future__ import annotations

from torch import nn

NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "learnable_skip", "A_log", "D"})


def exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """Whether the parameter called `name` (dotted, as `named_parameters` gives it) gets no weight decay."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def no_decay_names(module: nn.Module) -> set[str]:
    """The names of `module`'s parameters that get no weight decay because of their name (not only their shape)."""
    return {name for name, _ in module.named_parameters() if name.rsplit(".", 1)[-1] in NO_DECAY_NAMES}
