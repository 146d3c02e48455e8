"""Training checkpoints: everything a resumed run needs, in tensors and plain types only.

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

import os
import random
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj: dict, path: str | Path) -> None:
    """torch.save to `path` via a temp file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load(weights_only=True) with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors name neither the file nor the fix
        raise RuntimeError(f"cannot load checkpoint {path} with weights_only=True: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RuntimeError(f"{path} is not an ultra-vil classifier checkpoint (no 'model' entry)")
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
