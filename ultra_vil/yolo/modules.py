"""The YOLO modules' public path: ViL, Sequencer and Vim layers for model YAMLs, feature maps (B, C, H, W) in and out.

No mLSTM or ViL math lives here: every token mixer is a `ultra_vil.vil.ViLBlockPair` (top-left -> bottom-right,
then bottom-right -> top-left) over the map flattened row-major, with the grid taken from the input at run time,
so any H x W works (square training batches, rectangular validation batches, the 256 x 256 stride probe).

The modules follow Ultralytics' `(c1, c2, n, ...)` convention and are registered in the same two parser sets as
`C2f` (`ultra_vil/yolo/register.py`), so width and depth scaling apply to them exactly as to `C2f`:
c1 is inferred from the previous layer, the YAML channel number becomes `c2 = make_divisible(min(c2, max_channels)
* width, 8)` and the YAML repeat count becomes `n = max(round(n * depth), 1)` (when > 1) and is passed as the third
argument. The class names, module path and argument orders are a public contract: they are written in
`cfg/*.yaml` and pickled into every checkpoint.

    ViLStage(c1, c2, n=1, expansion=2, drop_path=0.0)         YAML: [-1, 1, ViLStage, [1024]]
    ViLC2f(c1, c2, n=1, e=0.5, expansion=2, drop_path=0.0)    YAML: [-1, 3, ViLC2f, [512]]
    ViLC3k2, ViLC2PSA (YOLO11 / YOLO26), SequencerStage, SequencerC2f, VimStage, VimC2f: see their files

`ViLBackbone` is the exception: a pretrained classifier trunk on the image with a multi-output feature pyramid,
taken by Ultralytics like its `TorchVision` module (arguments as written, `Index` rows pick the outputs):

    ViLBackbone(preset, c2, weights="", drop_path=0.0, checkpoint=False)
                                                  YAML: [-1, 1, ViLBackbone, [vil_t, [128, 256, 512], ""]]

Files: `args.py` (the one argument validator), `vil_modules.py` (ViL: YOLOv8, YOLO11, YOLO26 forms),
`mixer_modules.py` (Sequencer, Vim), `backbone.py` (ViLBackbone). Every class keeps `ultra_vil.yolo.modules` as its
`__module__`, so checkpoints pickle (and find) each class under this path wherever its code lives.
"""

from __future__ import annotations

from ultra_vil.yolo.args import NUM_HEADS, QKV_BLOCK_SIZE, ViLArgumentError
from ultra_vil.yolo.backbone import WEIGHTS_ENV, ViLBackbone
from ultra_vil.yolo.mixer_modules import SequencerC2f, SequencerStage, VimC2f, VimStage
from ultra_vil.yolo.vil_modules import ViLC2f, ViLC2PSA, ViLC3k, ViLC3k2, ViLStage

__all__ = (
    "NUM_HEADS", "QKV_BLOCK_SIZE", "WEIGHTS_ENV", "SequencerC2f", "SequencerStage", "ViLArgumentError",
    "ViLBackbone", "ViLC2PSA", "ViLC2f", "ViLC3k", "ViLC3k2", "ViLStage", "VimC2f", "VimStage",
)
