"""Training state: what a resumed run needs (in last.pt / best.pt), in tensors and plain types only.

`last.pt` holds the full training state:
    model, config          as `ultra_vil.classifier.save_checkpoint` writes them (so `load_checkpoint` reads it)
    optimizer, scheduler, scaler, ema
    epoch, step            `epoch` epochs are complete, plus `step` optimiser steps of the next one
    global_step, best_top1, history (the metrics.csv rows so far), classes, args
    rng                    torch (CPU and CUDA), NumPy and Python generator states, as tensors and ints
`best.pt` holds the weights only (model, config, ema, epoch, classes, metrics). Both load with
`torch.load(weights_only=True)`, and are written atomically: a temp file in the same folder, fsync'ed, then
renamed over the old one, so a kill at any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ultra_vil import checkpoints


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load(weights_only=True) of an ultra-vil training checkpoint; a CheckpointError (a UserError) names the
    file when it is missing, empty, truncated or of another kind."""
    ckpt = checkpoints.read(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise checkpoints.CheckpointError(
            "is not an ultra-vil classifier checkpoint (no 'model' and 'config' entries); to start from other "
            "weights (a VisionLSTM2 state dict or a released .th) use --finetune", path,
        )
    return ckpt


def rng_state() -> dict:
    """The global generators' states as tensors and plain types (loadable with weights_only=True)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        numpy=dict(kind=np_kind, keys=torch.from_numpy(np_keys.astype(np.int64)), pos=int(np_pos),
                   has_gauss=int(np_has_gauss), gauss=float(np_gauss)),
        python=dict(version=py_version, internal=torch.tensor(py_internal, dtype=torch.int64), gauss=py_gauss),
    )


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only for the devices present)."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and state.get("cuda"):
        n = min(len(state["cuda"]), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(state["cuda"][i].cpu(), i)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss"]))
