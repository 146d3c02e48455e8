"""The ViL modules of YOLOv8, YOLO11 and YOLO26 YAMLs: feature maps (B, C, H, W) in, feature maps out.

Every token mixer is a `ultra_vil.vil.ViLBlockPair` over the map flattened row-major, with the grid taken from
the input at run time. The shared bodies are in `base.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from ultralytics.nn.modules import Bottleneck, Conv

from ultra_vil.vil import ViLBlockPair
from ultra_vil.yolo.args import (
    NUM_HEADS,
    QKV_BLOCK_SIZE,
    check_bool,
    check_hidden,
    check_int,
    check_ratio,
    check_vil_width,
)
from ultra_vil.yolo.base import YOLOModule, _MixerC2f, on_tokens


class ViLStage(YOLOModule):
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
        name = self._check_channels(c1, c2, n, same=True)
        check_int(name, "expansion", expansion, 1)
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        check_vil_width(name, "c1", c1, c1, expansion, "channels")
        self.c1, self.c2, self.n = c1, c2, n
        self.pairs = nn.ModuleList(
            ViLBlockPair(
                c1, drop_path=drop_path, expansion=expansion, num_heads=NUM_HEADS, qkv_block_size=QKV_BLOCK_SIZE
            )
            for _ in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        return on_tokens(x, self.pairs)  # the pairs on the map's row-major tokens over its (H, W) grid


class ViLC2f(_MixerC2f):
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
        name, self.c = self._check_vil_hidden(c1, c2, n, e, expansion, drop_path)  # hidden channels
        self._build(c1, c2, n, [ViLStage(self.c, self.c, 1, expansion, drop_path) for _ in range(n)])


# YOLO11 / YOLO26: the ViL counterparts of C3k2 and C2PSA. Same conventions as ViLC2f (c1 inferred, c2
# width-scaled, n depth-scaled as third argument). ViLC3k2 is also given C3k2's own special case of Ultralytics'
# parser (register.py: `m is C3k2` matches it too): c3k is forced to True at scales m/l/x, and the detection head is
# built in its non-legacy form, exactly as for a model whose YAML names C3k2. The YAML argument positions after c2
# are C3k2's (c3k, e, attn), so each stock row form works with the name changed:
#
#     ViLC3k2(c1, c2, n=1, c3k=False, e=0.5, attn=False, expansion=2, drop_path=0.0)
#         YAML: [-1, 2, ViLC3k2, [512, True]]   (also [256, False, 0.25], [1024, True, 0.5, True] of YOLO26)
#     ViLC3k(c1, c2, n=2, e=0.5, expansion=2, drop_path=0.0)      inner block of ViLC3k2 when c3k (not a YAML row)
#     ViLC2PSA(c1, c2, n=1, e=0.5, expansion=2, drop_path=0.0)    YAML: [-1, 2, ViLC2PSA, [1024]]
#
# The inner blocks of C3k2 map one to one: Bottleneck -> a ViL block pair on the hidden channels; C3k (a C3 with two
# Bottlenecks on half of them) -> ViLC3k (a C3 with two ViL block pairs on half of them); Bottleneck + PSABlock
# (attn) -> Bottleneck + a ViL block pair (ViL takes the attention's place, the local 3x3 stays). C2PSA keeps its
# split / mix one half / fuse shape with its n PSABlocks replaced by n ViL block pairs.

class ViLC3k(YOLOModule):
    """C3 whose bottlenecks are ViL block pairs, as Ultralytics' C3k inside C3k2: (B, c1, H, W) -> (B, c2, H, W).

    Two 1x1 Convs to c_ = int(c2 * e) channels each; one branch runs `n` ViL block pairs (a `ViLStage`), the other
    is kept; the two are concatenated and fused by a 1x1 Conv to c2.

    Arguments as for ViLC2f, but `n` defaults to 2 ViL block pairs, as C3k2 builds its C3k.
    """

    def __init__(
        self, c1: int, c2: int, n: int = 2, e: float = 0.5, expansion: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name, c_ = self._check_vil_hidden(c1, c2, n, e, expansion, drop_path)
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = ViLStage(c_, c_, n, expansion, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))  # 2 x (B, c_, H, W) -> (B, c2, H, W)


class ViLC3k2(_MixerC2f):
    """C3k2 whose inner blocks are ViL block pairs: (B, c1, H, W) -> (B, c2, H, W). Drop-in for C3k2.

    The C2f body of C3k2 (1x1 Conv to 2c, c = int(c2 * e); n inner blocks on the latest half; concat of 2 + n maps;
    1x1 Conv to c2) with each inner block one of (C3k2's precedence: attn, then c3k):
        attn: Bottleneck(c, c) then a one-pair ViLStage(c) (where C3k2 has its PSABlock attention);
        c3k:  ViLC3k(c, c, 2): two ViL block pairs on c / 2 channels inside a C3 (where C3k2 has C3k);
        else: a one-pair ViLStage(c) (where C3k2 has a Bottleneck).
    Ultralytics sets c3k = True at scales m/l/x, as for C3k2. ViL blocks are always residual and ungrouped, so C3k2's
    trailing `g` and `shortcut` arguments are replaced by ViL's `expansion` and `drop_path`.

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels (width-scaled by Ultralytics).
        n: Number of inner blocks (depth-scaled by Ultralytics).
        c3k: Inner blocks are ViLC3k (forced True by Ultralytics at scales m/l/x).
        e: Hidden-channel ratio, in (0, 1]; 0.5 as in C3k2 (YOLO11/26 use 0.25 at P2 and P3).
        attn: Inner blocks are a Bottleneck followed by a ViL block pair (YOLO26's last neck block form).
        expansion: Inner width of each ViL layer as a multiple of its channels (2 in ViL).
        drop_path: Stochastic-depth rate of every ViL block, in [0, 1).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        c3k: bool = False,
        e: float = 0.5,
        attn: bool = False,
        expansion: int = 2,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        name = self._check_channels(c1, c2, n)
        check_bool(name, "c3k", c3k)
        self.c = check_hidden(name, e, c2)
        check_bool(name, "attn", attn)
        check_int(name, "expansion", expansion, 1)
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        what = f"hidden channels int(c2 x e) = int({c2} x {e})"
        check_vil_width(name, "e", e, self.c, expansion, what)
        if c3k and not attn:
            check_vil_width(name, "e", e, int(self.c * 0.5), expansion, f"half the {what}")
        self.c3k, self.attn = c3k, attn

        def block() -> nn.Module:
            if attn:
                return nn.Sequential(Bottleneck(self.c, self.c), ViLStage(self.c, self.c, 1, expansion, drop_path))
            if c3k:
                return ViLC3k(self.c, self.c, 2, 0.5, expansion, drop_path)
            return ViLStage(self.c, self.c, 1, expansion, drop_path)

        self._build(c1, c2, n, [block() for _ in range(n)])


class ViLC2PSA(YOLOModule):
    """C2PSA with ViL block pairs in place of its PSABlocks: (B, C, H, W) -> (B, C, H, W). Drop-in for C2PSA.

    As Ultralytics' C2PSA: a 1x1 Conv to 2c channels (c = int(c1 * e)), split in two halves; one half goes through
    `n` ViL block pairs (image-wide context at P5, where C2PSA puts attention), the other is kept; both are fused
    by a 1x1 Conv back to c1. Channel-preserving (C2PSA asserts c1 == c2).

    c1, c2 (must equal c1), n, e (0.5 as in C2PSA), expansion and drop_path as in ViLC2f.
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, e: float = 0.5, expansion: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name, self.c = self._check_vil_hidden(c1, c2, n, e, expansion, drop_path, same=True)
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = ViLStage(self.c, self.c, n, expansion, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)  # 2 x (B, c, H, W)
        return self.cv2(torch.cat((a, self.m(b)), 1))  # (B, 2c, H, W) -> (B, C, H, W)
