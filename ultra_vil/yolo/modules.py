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

`ViLBackbone` is the exception: a pretrained classifier trunk on the image with a multi-output feature pyramid,
taken by Ultralytics like its `TorchVision` module (arguments as written, `Index` rows pick the outputs):

    ViLBackbone(preset, c2, weights="", drop_path=0.0, checkpoint=False)
                                                  YAML: [-1, 1, ViLBackbone, [vil_t, [128, 256, 512], ""]]
"""

from __future__ import annotations

import os
import warnings
from numbers import Real
from pathlib import Path

import torch
from torch import Tensor, nn
from ultralytics.nn.modules import Conv, ConvTranspose

from ultra_vil.vil import ViLBlockPair

__all__ = ("ViLArgumentError", "ViLBackbone", "ViLC2f", "ViLStage")

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


class _MixerC2f(nn.Module):
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
        self._build(c1, c2, n, [ViLStage(self.c, self.c, 1, expansion, drop_path) for _ in range(n)])


WEIGHTS_ENV = "ULTRA_VIL_BACKBONE_WEIGHTS"  # overrides every ViLBackbone's `weights` (a path, or "none")


class ViLBackbone(nn.Module):
    """An ImageNet-style ViL classifier trunk as a detector backbone: (B, 3, H, W) -> [P3/8, P4/16, P5/32].

    The trunk is `ultra_vil.classifier.VisionLSTM` itself (patch embed 16, position embedding resized to the
    runtime grid, ViL blocks, final norm; no pooling or head), so its stride-16 map is exactly the classifier's
    `forward_features(x, as_map=True)`. A simple feature pyramid (ViTDet's answer for plain backbones) turns that
    one map into the three the YOLOv8 neck reads: stride 8 by a 2x transposed conv, 16 as it is, 32 by a stride-2
    conv; each level then gets a 3x3 Conv (BN + SiLU, as the neck's own layers).

    A multi-output layer, like Ultralytics' `TorchVision`: its YAML row takes the image and is followed by
    `Index` rows that pick P3, P4 and P5 (they state the channels), e.g.

        - [-1, 1, ViLBackbone, [vil_t, [128, 256, 512], ""]]   # 0: [P3, P4, P5]
        - [0, 1, Index, [128, 0]]                             # 1-P3/8
        - [0, 1, Index, [256, 1]]                             # 2-P4/16
        - [0, 1, Index, [512, 2]]                             # 3-P5/32

    Ultralytics passes the arguments as written (no c1, no width scaling): the preset fixes the trunk.

    Args:
        preset: `vil_t`, `vil_s` or `vil_b` (`ultra_vil.classifier.VARIANTS`). With an ultra-vil checkpoint as
            `weights`, the trunk is built from the checkpoint's own config instead (its width, depth, traversal).
        c2: Output channels of P3, P4, P5: three ints, or one int for all three.
        weights: Weights file for the trunk, or "" for random init: an ultra-vil classifier checkpoint, a
            VisionLSTM2 state dict or a released `.th` file, matched by name (`ultra_vil.checkpoints`); its head
            (and legacy norm) are not used. The environment variable ULTRA_VIL_BACKBONE_WEIGHTS, when set,
            replaces it for every ViLBackbone (a path, or "none" for random init): the way to choose weights
            from the `yolo` command line. Read when the model is built from its YAML, not when a trained `.pt`
            is loaded (that holds the weights).
        drop_path: Stochastic-depth rate of every trunk block, in [0, 1).
        checkpoint: Activation checkpointing of the trunk blocks in training (less memory, one more forward).
    """

    def __init__(
        self,
        preset: str = "vil_t",
        c2: int | list[int] = 256,
        weights: str | None = "",
        drop_path: float = 0.0,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        from ultra_vil import checkpoints  # scope: the classifier side is needed only by this module
        from ultra_vil.classifier import VARIANTS, VisionLSTM

        name = type(self).__name__
        if preset not in VARIANTS:
            raise ViLArgumentError(name, "preset", preset, f"one of {tuple(VARIANTS)}")
        channels = [c2] * 3 if isinstance(c2, int) and not isinstance(c2, bool) else c2
        if not isinstance(channels, (list, tuple)) or len(channels) != 3:
            raise ViLArgumentError(name, "c2", c2, "an integer or a list of 3 integers (P3, P4, P5 channels)")
        for c in channels:
            _check_int(name, "c2", c, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        if not isinstance(checkpoint, bool):
            raise ViLArgumentError(name, "checkpoint", checkpoint, "True or False")
        env = os.environ.get(WEIGHTS_ENV, "")
        weights = env if env else weights
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ViLArgumentError(name, "weights", weights, 'a file path, or "" for random init')
        weights = "" if weights is None or str(weights).lower() in ("", "none") else str(weights)

        config = dict(VARIANTS[preset])
        state = fmt = None
        if weights:
            path = Path(weights).expanduser()
            state, ckpt_config, fmt = checkpoints.read_weights(path)
            if ckpt_config is not None:  # our own checkpoint: its architecture, whatever the preset says
                keep = ("dim", "num_blocks", "img_size", "patch_size", "patch_stride", "in_chans", "pooling",
                        "traversal")  # fmt: skip
                layer_kw = {k: v for k, v in ckpt_config.items() if k not in keep and k not in _NOT_LAYER_KEYS}
                config = {**{k: ckpt_config[k] for k in keep if k in ckpt_config}, **layer_kw}
        config.update(num_classes=0, drop_path=drop_path, checkpoint=checkpoint, legacy_norm=False)
        if isinstance(config.get("img_size"), list):
            config["img_size"] = tuple(config["img_size"])
        stride = config.get("patch_stride") or config.get("patch_size", 16)
        if stride != 16:
            raise ViLArgumentError(name, "weights", weights, f"a trunk with patch stride 16 (this one has {stride})")
        self.trunk = VisionLSTM(**config)
        if state is not None:
            checkpoints.load_weights(self.trunk, state, weights, ignore=("head.", "legacy_norm."))
        self.preset, self.c2, self.weights, self.weights_format = preset, list(channels), weights, fmt
        dim, (c3, c4, c5) = self.trunk.dim, channels
        self.p3 = nn.Sequential(ConvTranspose(dim, c3, 2, 2), Conv(c3, c3, 3))  # stride 16 -> 8
        self.p4 = nn.Sequential(Conv(dim, c4, 1), Conv(c4, c4, 3))
        self.p5 = nn.Sequential(Conv(dim, c5, 3, 2), Conv(c5, c5, 3))  # stride 16 -> 32

    def forward(self, x: Tensor) -> list[Tensor]:
        H, W = x.shape[-2:]
        if H % 32 or W % 32:
            raise ValueError(f"ViLBackbone needs image sides divisible by 32, got {H} x {W}")
        x = self.trunk.forward_features(x, as_map=True)  # (B, D, H/16, W/16)
        return [self.p3(x), self.p4(x), self.p5(x)]  # (B, c3, H/8, W/8), (B, c4, H/16, W/16), (B, c5, H/32, W/32)


# config keys of a classifier checkpoint that are VisionLSTM arguments but not trunk choices a backbone keeps
_NOT_LAYER_KEYS = ("name", "num_classes", "drop_path", "checkpoint", "legacy_norm")


# ------------------------------------------------------------------------------------------------------------------
# The seeds' other sequence mixers in the same slots (issue 13): Sequencer's BiLSTM2D and Vim's bidirectional SSM.
# Same conventions as ViLStage / ViLC2f (c1 inferred, c2 width-scaled, n depth-scaled; registered in the same parser
# sets by ultra_vil/yolo/register.py), so a YAML that swaps ViLC2f for SequencerC2f or VimC2f changes only the mixer:
#
#     SequencerStage(c1, c2, n=1, hidden_ratio=0.25, mlp_ratio=3.0, drop_path=0.0)
#                                                               YAML: [-1, 1, SequencerStage, [1024]]
#     SequencerC2f(c1, c2, n=1, e=0.5, hidden_ratio=0.25, mlp_ratio=3.0, drop_path=0.0)
#                                                               YAML: [-1, 3, SequencerC2f, [512]]
#     VimStage(c1, c2, n=1, expansion=2, state_size=16, drop_path=0.0)         YAML: [-1, 1, VimStage, [1024]]
#     VimC2f(c1, c2, n=1, e=0.5, expansion=2, state_size=16, drop_path=0.0)    YAML: [-1, 3, VimC2f, [512]]
#
# n counts bidirectional units of about the same size as ViLStage's unit, a ViL block pair (~12 c^2 parameters):
# one Sequencer2D block (BiLSTM2D with hidden c/4 + channel MLP 3c: 12 c^2), or two Vim blocks (6.5 c^2 each; the
# papers compare ViL-T and Vim-Ti at the same 24 blocks). So the same YAML row gives the three mixers the same
# parameter budget, and the YAMLs differ only in the module name.

from ultra_vil.layers import LayerNorm  # imported here: this section is self-contained
from ultra_vil.sequencer import SequencerBlock
from ultra_vil.vim import VimBlock

__all__ += ("SequencerC2f", "SequencerStage", "VimC2f", "VimStage")


def _check_e(module: str, e, c2: int) -> int:
    """C2f's hidden-channel ratio e in (0, 1]; returns the hidden channels int(c2 * e) (>= 1)."""
    if isinstance(e, bool) or not isinstance(e, Real) or not 0.0 < e <= 1.0:
        hint = f" ({module} has no 'shortcut' argument: its blocks are always residual)" if isinstance(e, bool) else ""
        raise ViLArgumentError(module, "e", e, f"a hidden-channel ratio in (0, 1]{hint}")
    c = int(c2 * e)
    if c < 1:
        raise ViLArgumentError(module, "e", e, f"large enough that int(c2 * e) >= 1 (c2={c2})")
    return c


def _check_width_ratio(module: str, name: str, value, dim: int, high: float, what: str) -> int:
    """A width ratio in (0, high) that leaves at least one unit: returns int(dim * value)."""
    _check_ratio(module, name, value, 0.0, high)
    units = int(dim * value)
    if units < 1:
        raise ViLArgumentError(
            module, name, value, f"large enough that int({what} x {name}) = int({dim} x {value}) >= 1"
        )
    return units


class _TokenStage(nn.Module):
    """Shared body of SequencerStage / VimStage: (B, C, H, W) -> row-major tokens over the runtime grid -> blocks
    -> (B, C, H, W). Subclasses fill `self.blocks` with modules called as block(tokens, (H, W))."""

    blocks: nn.ModuleList

    @staticmethod
    def _check_stage(name: str, c1, c2, n) -> None:
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

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major
        for block in self.blocks:
            seq = block(seq, (H, W))  # (B, H*W, C)
        return seq.transpose(1, 2).reshape(B, C, H, W)  # (B, H*W, C) -> (B, C, H, W)


class SequencerStage(_TokenStage):
    """Channel-preserving Sequencer2D stage: (B, C, H, W) -> (B, C, H, W), `n` Sequencer2D blocks.

    Each block mixes along every row and every column with bidirectional LSTMs (`ultra_vil.sequencer.BiLSTM2D`),
    then per token with a channel MLP, both pre-norm residual. No positional embedding: any H x W works.

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels after width scaling; must equal c1.
        n: Number of Sequencer2D blocks (the YAML repeat count, depth-scaled like C2f's).
        hidden_ratio: LSTM hidden size per direction as a multiple of the channels (Sequencer2D: 0.25).
        mlp_ratio: Channel-MLP width as a multiple of the channels (Sequencer2D: 3).
        drop_path: Stochastic-depth rate of every residual branch, in [0, 1).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, hidden_ratio: float = 0.25, mlp_ratio: float = 3.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self._check_stage(name, c1, c2, n)
        hidden = _check_width_ratio(name, "hidden_ratio", hidden_ratio, c1, 4.0, "channels")
        _check_width_ratio(name, "mlp_ratio", mlp_ratio, c1, 16.0, "channels")
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        self.c1, self.c2, self.n = c1, c2, n
        self.blocks = nn.ModuleList(SequencerBlock(c1, hidden, mlp_ratio, drop_path) for _ in range(n))


class VimStage(_TokenStage):
    """Channel-preserving Vim stage: (B, C, H, W) -> (B, C, H, W), `n` pairs of Vim blocks (2n blocks).

    Each Vim block runs a selective SSM forward and backward over the row-major sequence and averages the two
    (`ultra_vil.vim.VimMixer`), pre-norm residual. No positional embedding: any H x W works. The stage ends in a
    LayerNorm, as Vim's models end in their final norm: without it the residual stream grows with training (the
    blocks only add to it), and the BatchNorm of the 1x1 conv that reads it (VimC2f's cv2) saw running variances
    past float16's 65504, which Ultralytics' float16 checkpoints saturate (a reloaded model then scored 0.06
    mAP50-95 where the trainer measured 0.20).

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels after width scaling; must equal c1.
        n: Number of Vim block pairs (the YAML repeat count, depth-scaled like C2f's); a pair has the parameter
            count of a ViL block pair.
        expansion: Inner width of each Vim mixer as a multiple of the channels (2 in Vim).
        state_size: SSM state size per inner channel (16 in Vim).
        drop_path: Stochastic-depth rate of every block, in [0, 1).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, expansion: int = 2, state_size: int = 16, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self._check_stage(name, c1, c2, n)
        _check_int(name, "expansion", expansion, 1)
        _check_int(name, "state_size", state_size, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        self.c1, self.c2, self.n = c1, c2, n
        self.blocks = nn.ModuleList(
            VimBlock(c1, drop_path, expansion=expansion, state_size=state_size) for _ in range(2 * n)
        )
        self.norm = LayerNorm(c1)  # Vim's final norm (norm_f): bounds the residual stream the next layers read

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major
        for block in self.blocks:
            seq = block(seq, (H, W))  # (B, H*W, C)
        seq = self.norm(seq)  # (B, H*W, C)
        return seq.transpose(1, 2).reshape(B, C, H, W)  # (B, H*W, C) -> (B, C, H, W)

    def __setstate__(self, state: dict) -> None:
        """A stage unpickled from a checkpoint written before the output norm existed runs without it (as trained)."""
        super().__setstate__(state)
        if "norm" not in self._modules:
            self._modules["norm"] = nn.Identity()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:
        """A state dict that holds this stage's blocks but no output norm was trained without one: the stage
        keeps that function (the norm becomes an Identity, with a warning) instead of failing or silently adding
        a fresh norm. A state dict without the blocks (weights of another model) leaves the norm in place."""
        if f"{prefix}blocks.0.norm.weight" in state_dict and f"{prefix}norm.weight" not in state_dict:
            if isinstance(self.norm, LayerNorm):
                warnings.warn(
                    f"{type(self).__name__} {prefix.rstrip('.')!r}: the weights predate the stage's output norm; it "
                    "runs without it, as trained (its float16 checkpoints can saturate: retrain to get the norm)",
                    stacklevel=2,
                )
                self.norm = nn.Identity()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)


class SequencerC2f(_MixerC2f):
    """C2f whose bottlenecks are Sequencer2D blocks: (B, c1, H, W) -> (B, c2, H, W). Drop-in for ViLC2f.

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels (width-scaled by Ultralytics).
        n: Number of inner Sequencer2D blocks (depth-scaled by Ultralytics), each a one-block `SequencerStage`.
        e: Hidden-channel ratio, in (0, 1]; 0.5 as in C2f.
        hidden_ratio: LSTM hidden size per direction as a multiple of the hidden channels (Sequencer2D: 0.25).
        mlp_ratio: Channel-MLP width as a multiple of the hidden channels (Sequencer2D: 3).
        drop_path: Stochastic-depth rate, in [0, 1).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        hidden_ratio: float = 0.25,
        mlp_ratio: float = 3.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        _check_int(name, "n", n, 1)
        self.c = _check_e(name, e, c2)
        what = f"hidden channels int(c2 x e) = {self.c}"
        _check_width_ratio(name, "hidden_ratio", hidden_ratio, self.c, 4.0, what)
        _check_width_ratio(name, "mlp_ratio", mlp_ratio, self.c, 16.0, what)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        self._build(
            c1, c2, n, [SequencerStage(self.c, self.c, 1, hidden_ratio, mlp_ratio, drop_path) for _ in range(n)]
        )


class VimC2f(_MixerC2f):
    """C2f whose bottlenecks are pairs of Vim blocks: (B, c1, H, W) -> (B, c2, H, W). Drop-in for ViLC2f.

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels (width-scaled by Ultralytics).
        n: Number of inner Vim block pairs (depth-scaled by Ultralytics), each a one-pair `VimStage`.
        e: Hidden-channel ratio, in (0, 1]; 0.5 as in C2f.
        expansion: Inner width of each Vim mixer as a multiple of the hidden channels (2 in Vim).
        state_size: SSM state size per inner channel (16 in Vim).
        drop_path: Stochastic-depth rate, in [0, 1).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        expansion: int = 2,
        state_size: int = 16,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        _check_int(name, "n", n, 1)
        self.c = _check_e(name, e, c2)
        _check_int(name, "expansion", expansion, 1)
        _check_int(name, "state_size", state_size, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        self._build(c1, c2, n, [VimStage(self.c, self.c, 1, expansion, state_size, drop_path) for _ in range(n)])


# ------------------------------------------------------------------------------------------------------------------
# YOLO11 / YOLO26 (issue 12): the ViL counterparts of C3k2 and C2PSA. Same conventions as ViLC2f (c1 inferred, c2
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

from ultralytics.nn.modules import Bottleneck  # imported here: this section is self-contained

__all__ += ("ViLC2PSA", "ViLC3k", "ViLC3k2")


def _check_bool(module: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ViLArgumentError(module, name, value, "True or False (C3k2's YAML argument order: c2, c3k, e, attn)")
    return value


class ViLC3k(nn.Module):
    """C3 whose bottlenecks are ViL block pairs, as Ultralytics' C3k inside C3k2: (B, c1, H, W) -> (B, c2, H, W).

    Two 1x1 Convs to c_ = int(c2 * e) channels each; one branch runs `n` ViL block pairs (a `ViLStage`), the other
    is kept; the two are concatenated and fused by a 1x1 Conv to c2.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of ViL block pairs (2, as C3k2 builds its C3k).
        e: Hidden-channel ratio, in (0, 1].
        expansion: Inner width of each ViL layer as a multiple of the hidden channels (2 in ViL).
        drop_path: Stochastic-depth rate of every ViL block, in [0, 1).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 2, e: float = 0.5, expansion: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        _check_int(name, "n", n, 1)
        c_ = _check_e(name, e, c2)
        _check_int(name, "expansion", expansion, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        _check_width(name, "e", e, c_, expansion, f"hidden channels int(c2 x e) = int({c2} x {e})")
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
        name = type(self).__name__
        _check_int(name, "c1", c1, 1)
        _check_int(name, "c2", c2, 1)
        _check_int(name, "n", n, 1)
        _check_bool(name, "c3k", c3k)
        self.c = _check_e(name, e, c2)
        _check_bool(name, "attn", attn)
        _check_int(name, "expansion", expansion, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        what = f"hidden channels int(c2 x e) = int({c2} x {e})"
        _check_width(name, "e", e, self.c, expansion, what)
        if c3k and not attn:
            _check_width(name, "e", e, int(self.c * 0.5), expansion, f"half the {what}")
        self.c3k, self.attn = c3k, attn

        def block() -> nn.Module:
            if attn:
                return nn.Sequential(Bottleneck(self.c, self.c), ViLStage(self.c, self.c, 1, expansion, drop_path))
            if c3k:
                return ViLC3k(self.c, self.c, 2, 0.5, expansion, drop_path)
            return ViLStage(self.c, self.c, 1, expansion, drop_path)

        self._build(c1, c2, n, [block() for _ in range(n)])


class ViLC2PSA(nn.Module):
    """C2PSA with ViL block pairs in place of its PSABlocks: (B, C, H, W) -> (B, C, H, W). Drop-in for C2PSA.

    As Ultralytics' C2PSA: a 1x1 Conv to 2c channels (c = int(c1 * e)), split in two halves; one half goes through
    `n` ViL block pairs (image-wide context at P5, where C2PSA puts attention), the other is kept; both are fused
    by a 1x1 Conv back to c1. Channel-preserving (C2PSA asserts c1 == c2).

    Args:
        c1: Input channels (inferred by Ultralytics).
        c2: Output channels after width scaling; must equal c1.
        n: Number of ViL block pairs (depth-scaled by Ultralytics).
        e: Hidden-channel ratio, in (0, 1]; 0.5 as in C2PSA.
        expansion: Inner width of each ViL layer as a multiple of the hidden channels (2 in ViL).
        drop_path: Stochastic-depth rate of every ViL block, in [0, 1).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, e: float = 0.5, expansion: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _TokenStage._check_stage(name, c1, c2, n)
        self.c = _check_e(name, e, c1)
        _check_int(name, "expansion", expansion, 1)
        _check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        _check_width(name, "e", e, self.c, expansion, f"hidden channels int(c1 x e) = int({c1} x {e})")
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = ViLStage(self.c, self.c, n, expansion, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)  # 2 x (B, c, H, W)
        return self.cv2(torch.cat((a, self.m(b)), 1))  # (B, 2c, H, W) -> (B, C, H, W)
