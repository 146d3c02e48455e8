"""What every YOLO module of ultra-vil shares: its public class path, the (c1, c2, n) check, the C2f body and the
token-stage body (map -> row-major tokens over the runtime grid -> blocks -> map)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from ultralytics.nn.modules import Conv

from ultra_vil.yolo.args import check_channels, check_hidden, check_int, check_ratio, check_vil_width

PUBLIC_PATH = "ultra_vil.yolo.modules"  # the module path checkpoints pickle for every class below and its subclasses


class YOLOModule(nn.Module):
    """Base of the YOLO modules. Each subclass defined in ultra_vil.yolo gets `PUBLIC_PATH` as its `__module__`, so
    Ultralytics checkpoints name (and find) it as `ultra_vil.yolo.modules.<name>` whichever file defines it."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("ultra_vil.yolo.") and not cls.__name__.startswith("_"):
            cls.__module__ = PUBLIC_PATH

    def _check_channels(self, c1, c2, n, *, same: bool = False) -> str:
        """`args.check_channels` for this module; returns its name (for the other checks' messages)."""
        name = type(self).__name__
        check_channels(name, c1, c2, n, same=same)
        return name

    def _check_hidden(self, c1, c2, n, e, drop_path, *, same: bool = False) -> tuple[str, int]:
        """The checks every C2f-shaped module makes: c1, c2, n; e a hidden-channel ratio of c2 (c1 when `same`);
        drop_path in [0, 1). Returns (module name, hidden channels int(c2 * e))."""
        name = self._check_channels(c1, c2, n, same=same)
        hidden = check_hidden(name, e, c1 if same else c2)
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        return name, hidden

    def _check_vil_hidden(self, c1, c2, n, e, expansion, drop_path, *, same: bool = False) -> tuple[str, int]:
        """`_check_hidden`, then `expansion` a positive integer and the hidden channels a width ViL layers take."""
        name, hidden = self._check_hidden(c1, c2, n, e, drop_path, same=same)
        check_int(name, "expansion", expansion, 1)
        of = f"int(c1 x e) = int({c1} x {e})" if same else f"int(c2 x e) = int({c2} x {e})"
        check_vil_width(name, "e", e, hidden, expansion, f"hidden channels {of}")
        return name, hidden


class _MixerC2f(YOLOModule):
    """Shared body of ViLC2f, ViLC3k2, SequencerC2f and VimC2f: Ultralytics' C2f with stages as its bottlenecks.

    A 1x1 Conv to 2c hidden channels (c = int(c2 * e)), split in two halves; each of the n inner stages transforms
    the latest output; all 2 + n maps are concatenated and fused by a 1x1 Conv to c2."""

    def _build(self, c1: int, c2: int, n: int, stages: list[nn.Module]) -> None:
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        y.extend(m(y[-1]) for m in self.m)  # + n x (B, c, H, W)
        return self.cv2(torch.cat(y, 1))  # (B, (2 + n) * c, H, W) -> (B, c2, H, W)


class _TokenStage(YOLOModule):
    """Shared body of SequencerStage / VimStage: (B, C, H, W) -> row-major tokens over the runtime grid -> blocks
    -> (B, C, H, W). Subclasses fill `self.blocks` with modules called as block(tokens, (H, W))."""

    blocks: nn.ModuleList

    def forward(self, x: Tensor) -> Tensor:
        return on_tokens(x, self.blocks)


def on_tokens(x: Tensor, blocks: Iterable[nn.Module]) -> Tensor:
    """(B, C, H, W) -> row-major tokens (B, H*W, C) -> each block(tokens, (H, W)) in turn -> (B, C, H, W)."""
    B, C, H, W = x.shape
    seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major
    for block in blocks:
        seq = block(seq, (H, W))  # (B, H*W, C)
    return seq.transpose(1, 2).reshape(B, C, H, W)  # (B, H*W, C) -> (B, C, H, W)
