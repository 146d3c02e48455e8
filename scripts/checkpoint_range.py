#!/usr/bin/env python3
"""Largest |value| per Ultralytics checkpoint, and the tensors at float16's limit (65504).

Ultralytics saves last.pt / best.pt with the EMA model in float16. A tensor that outgrew float16's range in fp32
training (a BatchNorm running_var behind a mixer whose activations are large, say) is saturated in the file, and
the reloaded model differs from the one the trainer validated.

    python scripts/checkpoint_range.py results/neon-trees-cpu/runs/*/weights/last.pt

A checkpoint is a pickle, and unpickling can run any code the file names, so each file is loaded with
torch.load(weights_only=True) and only the model classes and data types allow-listed by Ultralytics' restricted
loader and ultra-vil's registration can be rebuilt (`allow_list`, `ultra_vil.checkpoints.read_objects`). A file
naming anything else is refused: one line, `error: FILE: ...`, exit status 2. `--trust` loads it with
weights_only=False (a warning says so): only for files whose origin you trust.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from ultra_vil.checkpoints import CheckpointError, UntrustedCheckpointError, read_objects
from ultra_vil.errors import UserError
from ultra_vil.fp16_range import FP16_MAX, tensor_range

def allow_list() -> Callable[[Path], AbstractContextManager]:
    """The allow-list of an Ultralytics checkpoint, as a context per file (for `read_objects`); none is kept here.

    `import ultra_vil.yolo` registers ultra-vil's module classes as torch safe globals (`ultra_vil.yolo.register`),
    and Ultralytics' restricted loader (`ULTRALYTICS_SAFE_LOAD=1`) registers, per file, the torch.nn and Ultralytics
    classes and data types it names: `ultralytics.nn.tasks._SafeLoad.loading`, a private name, so its absence
    (another Ultralytics) is a UserError that leaves --trust as the way to load.
    """
    import ultra_vil.yolo  # noqa: F401

    try:
        from ultralytics.nn.tasks import _SafeLoad
    except ImportError:
        _SafeLoad = None
    if _SafeLoad is None or not _SafeLoad.SUPPORTED:
        raise UserError("this Ultralytics has no restricted checkpoint loader (ultralytics.nn.tasks._SafeLoad), so "
                        "no file can be loaded safely; pass --trust for files you trust")  # fmt: skip
    return _SafeLoad.loading


def checkpoint_state(path: Path, trust: bool = False) -> dict:
    """The state dict of the checkpoint's EMA model (else its model); see the module doc for `trust`.

    Raises:
        CheckpointError: The file is unusable or holds no model (an `UntrustedCheckpointError` if refused).
    """
    ck = read_objects(path, allow=None if trust else allow_list(), trust=trust)
    model = ck.get("ema") or ck.get("model") if isinstance(ck, dict) else ck
    if model is None:
        raise CheckpointError("no 'ema' or 'model' entry (not an Ultralytics checkpoint)", path)
    return model.state_dict() if hasattr(model, "state_dict") else model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--trust", action="store_true",
                   help="load with torch.load(weights_only=False): runs whatever the files' pickles name; only for "
                   "files you trust")  # fmt: skip
    args = p.parse_args(argv)
    print("| checkpoint | largest max abs value | tensor | tensors at the float16 limit |\n|---|---|---|---|")
    for path in args.checkpoints:
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found")
        try:
            ranges = tensor_range(checkpoint_state(path, trust=args.trust))
        except UntrustedCheckpointError as e:
            print(f"error: {e}; if you trust the file, pass --trust to load it with weights_only=False",
                  file=sys.stderr)  # fmt: skip
            return 2
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        at_limit = [n for n, v in ranges if v >= FP16_MAX]
        name, top = ranges[0]
        print(f"| {path} | {top:.4g} | {name} | {', '.join(at_limit) or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
