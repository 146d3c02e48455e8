"""The classifier presets (the paper's models and the other mixers at ViL-T width) and the released weights.

A `Preset` is an architecture: width, block count, the drop-path rate of the paper's recipe, the mixer and the
pooling. Presets of released models list their weight files (`ReleasedWeights`), so that a file name says which
preset it belongs to. Nothing here downloads anything: the URLs are for users to fetch the files themselves.

    PRESETS["vil_t"].weights[0].file    -> "vil2_tiny16_e800_in1k.th"
    release_of("vil2_small16_e400_in1k.th") -> (PRESETS["vil_s"], ReleasedWeights(...))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RELEASE_URL = "https://ml.jku.at/research/vision_lstm/download/"


@dataclass(frozen=True)
class ReleasedWeights:
    """One released VisionLSTM2 checkpoint (a `.th` file of the official training code) of a preset."""

    file: str  # the file name as released
    epochs: int  # ImageNet-1K pre-training epochs
    img_size: int  # the resolution of its last training stage
    top1: float  # ImageNet-1K top-1 (%) that the paper reports for it

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file


@dataclass(frozen=True)
class Preset:
    """A classifier architecture (`create_model(name)`); counts are blocks, not pairs (24 blocks = 12 pairs)."""

    name: str
    dim: int
    num_blocks: int
    drop_path: float  # the paper's recipe for this size
    mixer: str = "vil"  # "vil", "sequencer" or "vim"
    pooling: str = "bilateral_concat"
    weights: tuple[ReleasedWeights, ...] = ()  # released files, best first
    note: str = ""

    def architecture(self) -> dict:
        """The VisionLSTM keywords of this preset (mixer and pooling only where they differ from ViL's)."""
        out = dict(dim=self.dim, num_blocks=self.num_blocks, drop_path=self.drop_path)
        if self.mixer != "vil":
            out.update(mixer=self.mixer, pooling=self.pooling)
        elif self.pooling != "bilateral_concat":
            out.update(pooling=self.pooling)
        return out


# dim, blocks and the drop-path rate of the paper's training recipes (src/vislstm/yamls of NX-AI/vision-lstm)
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("vil_t", 192, 24, 0.0, weights=(ReleasedWeights("vil2_tiny16_e800_in1k.th", 800, 224, 78.3),
                                               ReleasedWeights("vil2_tiny16_e400_in1k.th", 400, 224, 77.2))),
        Preset("vil_t_plus", 192, 29, 0.0, note="the paper's ViL-T+ block count on VisionLSTM2 blocks"),
        Preset("vil_s", 384, 24, 0.05, weights=(ReleasedWeights("vil2_small16_e400_in1k.th", 400, 224, 81.5),)),
        Preset("vil_s_plus", 384, 26, 0.05, note="the paper's ViL-S+ block count on VisionLSTM2 blocks"),
        Preset("vil_b", 768, 24, 0.2, weights=(ReleasedWeights("vil2_base16_e400_in1k.th", 400, 224, 82.4),)),
        # the other mixers at ViL-T width, patch 16, with their papers' pooling: one Sequencer2D block or two Vim
        # blocks per ViL block pair, as in the YOLO modules: 12 blocks / 24 blocks (Vim-Ti's depth)
        Preset("sequencer_t", 192, 12, 0.0, mixer="sequencer", pooling="mean"),
        Preset("vim_t", 192, 24, 0.0, mixer="vim", pooling="middle_cls"),
    )
}  # fmt: skip


def release_of(path: str | Path) -> tuple[Preset, ReleasedWeights] | None:
    """The preset and release a weights file is, by its file name; None for any other file."""
    name = Path(path).name
    for preset in PRESETS.values():
        for release in preset.weights:
            if release.file == name:
                return preset, release
    return None
