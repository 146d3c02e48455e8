"""Ultralytics-facing ViL modules: feature maps (B, C, H, W) in, feature maps out.

No mLSTM or ViL math lives here: every token mixer is a `ultra_vil.vil.ViLBlockPair` (top-left -> bottom-right,
then bottom-right -> top-left) over the map flattened row-major, with the grid taken from the input at run time,
so any H x W works (square training batches, rectangular validation batches, the 256 x 256 stride probe).

Both classes follow Ultralytics' `(c1, c2, n, ...)` convention and are registered in the same two parser sets as
`C2f` (`ultra_vil/yolo/register.py`), so width and depth scaling apply to them exactly as to `C2f`:
c1 is inferred from the previous layer, the YAML channel number becomes `c2 = make_divisible(min(c2, max_channels)
* width, 8)` and the YAML repeat count becomes `n = max(round(n * depth), 1)` (when > 1) and is passed as the third
argument. The class names, module path and argument orders are a public contract: they are written in
`cfg/*.yaml` and pickled into every checkpoint.

    ViLStage(c1, c2, n=1, expansion=2, drop_path=0.0)         YAML: [-1, 1, ViLStage, [1024]]
    ViLC2f(c1, c2, n=1, e=0.5, expansion=2, drop_path=0.0)    YAML: [-1, 3, ViLC2f, [512]]
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor, nn
from ultralytics.nn.modules import Conv

from ultra_vil.vil import ViLBlockPair

__all__ = ("ViLArgumentError", "ViLC2f", "ViLStage")

NUM_HEADS = 4  # mLSTM heads of every ViL layer (the ViL recipe); the inner width must divide by it
QKV_BLOCK_SIZE = 4  # block size of ViL's block-diagonal q/k/v projections


class ViLArgumentError(ValueError):
    """A ViL module was given an argument it cannot use; names the module and the argument.

    `ultra_vil.yolo.register` adds the YAML file, the layer index and the YAML row when it is raised while
    Ultralytics parses a model YAML.
    """

    def __init__(self, module: str, argument: str, value, expected: str) -> None:
        self.module, self.argument, self.value, self.expected = module, argument, value, expected
        super().__init__(f"{module}: argument '{argument}' must be {expected}, got {value!r}")


def _check_int(module: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViLArgumentError(module, name, value, f"an integer >= {minimum}")
    return value


def _check_ratio(module: str, name: str, value, low: float, high: float, hint: str = "") -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and low <= value < high
    if not ok:
        raise ViLArgumentError(module, name, value, f"a number in [{low}, {high}){hint}")
    return float(value)


def _check_width(module: str, name: str, value, dim: int, expansion: int, what: str) -> None:
    """The ViL inner width expansion * dim must split into NUM_HEADS heads and QKV_BLOCK_SIZE blocks."""
    inner = expansion * dim
    if inner % NUM_HEADS or inner % QKV_BLOCK_SIZE:
        raise ViLArgumentError(
            module,
            name,
            value,
            f"such that the ViL inner width expansion x {what} = {expansion} x {dim} = {inner} is divisible by "
            f"{NUM_HEADS} heads and by the q/k/v block size {QKV_BLOCK_SIZE} (channels that are a multiple of 4 work)",
        )


class ViLStage(nn.Module):
    """Channel-preserving ViL stage, like Ultralytics' AIFI: (B, C, H, W) -> (B, C, H, W).

    Flattens the map row-major into H*W tokens, runs `n` ViL block pairs (each block residual and pre-norm, so
    the stage is an identity-plus-update of its input) and restores the map. It has no positional embedding:
    position comes from the traversal order and the 3x3 convolution inside each ViL layer, so any H x W works.

    Args:
        c1: Input channels (inferred by Ultralytics from the previous layer).
        c2: Output channels after width scaling; must equal c1. In a YAML, give the stage the same channel
            number as the layer it follows, e.g. `[-1, 1, ViLStage, [1024]]` after `SPPF, [1024, 5]`.
        n: Number of ViL block pairs (the YAML repeat count, depth-scaled like C2f's).
        expansion: Inner width of each ViL layer as a multiple of the channels (2 in ViL).
        drop_path: Stochastic-depth rate of every block, in [0, 1).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, expansion: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        if c2 != c1:
            raise ViLArgumentError(
                name,
                "c2",
                c2,
                f"equal to the input channels c1={c1} after width scaling ({name} keeps the channel count: give it "
                "the same YAML channel number as the layer it follows)",
            )
        _check_int(name, "n", n, 1)
        _check_int(name, "expansion", expansion, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        _check_width(name, "c1", c1, c1, expansion, "channels")
        self.c1, self.c2, self.n = c1, c2, n
        self.pairs = nn.ModuleList(
            ViLBlockPair(
                c1, drop_path=drop_path, expansion=expansion, num_heads=NUM_HEADS, qkv_block_size=QKV_BLOCK_SIZE
            )
            for _ in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major
        for pair in self.pairs:
            seq = pair(seq, (H, W))  # (B, H*W, C)
        return seq.transpose(1, 2).reshape(B, C, H, W)  # (B, H*W, C) -> (B, C, H, W)


class ViLC2f(nn.Module):
    """C2f whose bottlenecks are ViL block pairs: (B, c1, H, W) -> (B, c2, H, W).

    As in Ultralytics' C2f: a 1x1 Conv to 2 * c hidden channels (c = int(c2 * e)), split in two halves; each of
    the `n` inner modules (a one-pair `ViLStage` on c channels) transforms the latest output; all 2 + n maps are
    concatenated and fused by a 1x1 Conv to c2. ViL blocks are always residual, so there is no `shortcut`
    argument, and no `g` (groups) argument: the YAML arguments after c2 are `e, expansion, drop_path`.

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels (width-scaled by Ultralytics).
        n: Number of inner ViL block pairs (depth-scaled by Ultralytics).
        e: Hidden-channel ratio, in (0, 1]; 0.5 as in C2f.
        expansion: Inner width of each ViL layer as a multiple of the hidden channels (2 in ViL).
        drop_path: Stochastic-depth rate of every ViL block, in [0, 1).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, e: float = 0.5, expansion: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        _check_int(name, "n", n, 1)
        if isinstance(e, bool) or not isinstance(e, Real) or not 0.0 < e <= 1.0:
            hint = (
                " (ViLC2f has no 'shortcut' argument: its ViL blocks are always residual)"
                if isinstance(e, bool)
                else ""
            )
            raise ViLArgumentError(name, "e", e, f"a hidden-channel ratio in (0, 1]{hint}")
        _check_int(name, "expansion", expansion, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        self.c = int(c2 * e)  # hidden channels
        if self.c < 1:
            raise ViLArgumentError(name, "e", e, f"large enough that int(c2 * e) >= 1 (c2={c2})")
        _check_width(name, "e", e, self.c, expansion, f"hidden channels int(c2 x e) = int({c2} x {e})")
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(ViLStage(self.c, self.c, 1, expansion, drop_path) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        y.extend(m(y[-1]) for m in self.m)  # + n x (B, c, H, W)
        return self.cv2(torch.cat(y, 1))  # (B, (2 + n) * c, H, W) -> (B, c2, H, W)
