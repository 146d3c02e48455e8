"""`ViLBackbone`: a pretrained ViL classifier trunk with a simple feature pyramid, as a YOLO backbone layer."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from torch import Tensor, nn
from ultralytics.nn.modules import Conv, ConvTranspose

from ultra_vil.yolo.args import ViLArgumentError, check_int, check_ratio
from ultra_vil.yolo.base import YOLOModule

WEIGHTS_ENV = "ULTRA_VIL_BACKBONE_WEIGHTS"  # overrides every ViLBackbone's `weights` (a path, or "none")


class ViLBackbone(YOLOModule):
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
        from ultra_vil.classifier import VARIANTS, VisionLSTM, VisionLSTMConfig

        name = type(self).__name__
        if preset not in VARIANTS:
            raise ViLArgumentError(name, "preset", preset, f"one of {tuple(VARIANTS)}")
        channels = [c2] * 3 if isinstance(c2, int) and not isinstance(c2, bool) else c2
        if not isinstance(channels, (list, tuple)) or len(channels) != 3:
            raise ViLArgumentError(name, "c2", c2, "an integer or a list of 3 integers (P3, P4, P5 channels)")
        for c in channels:
            check_int(name, "c2", c, 1)
        check_ratio(name, "drop_path", drop_path, 0.0, 1.0)
        if not isinstance(checkpoint, bool):
            raise ViLArgumentError(name, "checkpoint", checkpoint, "True or False")
        env = os.environ.get(WEIGHTS_ENV, "")
        weights = env if env else weights
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ViLArgumentError(name, "weights", weights, 'a file path, or "" for random init')
        weights = "" if weights is None or str(weights).lower() in ("", "none") else str(weights)

        config = VisionLSTMConfig.from_dict(VARIANTS[preset])
        state = fmt = None
        if weights:
            path = Path(weights).expanduser()
            state, ckpt_config, fmt = checkpoints.read_weights(path)
            if ckpt_config is not None:  # our own checkpoint: its architecture, whatever the preset says
                config = VisionLSTMConfig.from_dict(ckpt_config)
        # a trunk: no head, no legacy norm; drop path and activation checkpointing are this module's
        config = replace(config, num_classes=0, drop_path=drop_path, checkpoint=checkpoint, legacy_norm=False)
        stride = config.patch_stride or config.patch_size
        if stride != 16:
            raise ViLArgumentError(name, "weights", weights, f"a trunk with patch stride 16 (this one has {stride})")
        self.trunk = VisionLSTM(**config.kwargs())
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

