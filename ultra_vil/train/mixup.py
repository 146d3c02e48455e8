"""Mixup / CutMix on a batch, with label-smoothed soft targets (the ViL / DeiT recipe).

The VisionLSTM2 yamls use `mix_collator` with mixup alpha 0.8 and cutmix alpha 1.0, chosen with probability
0.5 each, one lambda per batch, each image mixed with the batch flipped (image i with image B-1-i); DeiT adds
label smoothing 0.1. This is that, on the training device, with the randomness of a step drawn from a NumPy
generator the engine seeds from (seed, epoch, step, rank), so a resumed run mixes exactly as before.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B,) class indices -> (B, num_classes) targets: 1 - smoothing + smoothing / K on the label, smoothing / K
    elsewhere (the same convention as F.cross_entropy(label_smoothing=...))."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of area ~(1 - lam) * H * W with a uniformly drawn centre, clipped to the image: (y0, y1, x0, x1)."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width)


class Mixup:
    """Batch-level mixup or cutmix: (images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, K)).

    Args:
        num_classes: K.
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for cutmix; 0 disables cutmix.
        smoothing: Label smoothing of the targets (applied with or without mixing).
        switch_prob: Probability of cutmix when both are enabled (0.5 in the paper's recipe).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        smoothing: float = 0.1,
        switch_prob: float = 0.5,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.smoothing, self.switch_prob = smoothing, switch_prob

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, images: Tensor, labels: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if not self.enabled or images.shape[0] < 2:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if use_cutmix:
            y0, y1, x0, x1 = cutmix_box(lam, images.shape[-2], images.shape[-1], rng)
            images = images.clone()
            images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])  # the area actually kept
        else:
            images = images.mul(lam).add_(images.flip(0), alpha=1.0 - lam)
        return images, targets.mul(lam).add_(targets.flip(0), alpha=1.0 - lam)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k, computed in float32."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
