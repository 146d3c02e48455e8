"""Sequencer's BiLSTM2D and Vim's bidirectional SSM in the slots of the ViL modules (same conventions)."""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from ultra_vil.layers import LayerNorm
from ultra_vil.sequencer import SequencerBlock
from ultra_vil.vim import VimBlock
from ultra_vil.yolo.args import check_int, check_ratio, check_width_ratio
from ultra_vil.yolo.base import _MixerC2f, _TokenStage

# The seeds' other sequence mixers in the same slots: Sequencer's BiLSTM2D and Vim's bidirectional SSM.
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
        name = self._check_channels(c1, c2, n, same=True)
        hidden = check_width_ratio(name, "hidden_ratio", hidden_ratio, c1, 4.0, "channels")
        check_width_ratio(name, "mlp_ratio", mlp_ratio, c1, 16.0, "channels")
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
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
        name = self._check_channels(c1, c2, n, same=True)
        check_int(name, "expansion", expansion, 1)
        check_int(name, "state_size", state_size, 1)
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
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

    c1, c2, n, e and drop_path as in ViLC2f; each of the n inner blocks is a one-block `SequencerStage`.
    hidden_ratio: LSTM hidden size per direction, and mlp_ratio: channel-MLP width, as multiples of the hidden
    channels (Sequencer2D: 0.25 and 3).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, hidden_ratio: float = 0.25,
                 mlp_ratio: float = 3.0, drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        name, self.c = self._check_hidden(c1, c2, n, e, drop_path)
        what = f"hidden channels int(c2 x e) = {self.c}"
        check_width_ratio(name, "hidden_ratio", hidden_ratio, self.c, 4.0, what)
        check_width_ratio(name, "mlp_ratio", mlp_ratio, self.c, 16.0, what)
        stages = [SequencerStage(self.c, self.c, 1, hidden_ratio, mlp_ratio, drop_path) for _ in range(n)]
        self._build(c1, c2, n, stages)


class VimC2f(_MixerC2f):
    """C2f whose bottlenecks are pairs of Vim blocks: (B, c1, H, W) -> (B, c2, H, W). Drop-in for ViLC2f.

    c1, c2, n, e and drop_path as in ViLC2f; each of the n inner blocks is a one-pair `VimStage`. expansion: inner
    width of each Vim mixer as a multiple of the hidden channels (2 in Vim); state_size: SSM state size per inner
    channel (16 in Vim).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, expansion: int = 2, state_size: int = 16,
                 drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        name, self.c = self._check_hidden(c1, c2, n, e, drop_path)
        check_int(name, "expansion", expansion, 1)
        check_int(name, "state_size", state_size, 1)
        self._build(c1, c2, n, [VimStage(self.c, self.c, 1, expansion, state_size, drop_path) for _ in range(n)])
