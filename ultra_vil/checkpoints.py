"""Classifier weights on disk: the one atomic writer, the one reader, the one name-mapping loader.

Three formats load into a `VisionLSTM` (and so into `ultra_vil.yolo.ViLBackbone`, which runs one), found by the
names inside the file, never by shapes or order:

    ultra-vil       {"model": state dict, "config": plain dict, ...}   what `save_checkpoint` and the trainer write
    VisionLSTM2     a bare state dict with the torch.hub names          `patch_embed.proj.weight`, `blocks.0.rowwise_...`
    released .th    {"state_dict": training-code names}                 the files at ml.jku.at/research/vision_lstm

The released names are first renamed to VisionLSTM2 names (the rules of the authors' hub entry, in the order they
apply them), then VisionLSTM2 names to ours: a VisionLSTM2 block pair `blocks.{p}` is our blocks `2p` (top-left
first) and `2p + 1`, and its layer's mLSTM branch (conv, q/k/v, gates, head norm, skip) is our `layer.mixers.0`.
The tensors are then matched one to one by name: a checkpoint tensor nobody takes, or a parameter nobody fills,
is an error that lists every such name (one message, not the first). The position embedding is resized to the
model's grid (bicubic, as at run time).

Everything is written through `atomic_write`: a temp file in the target's folder, flushed and fsync'ed, renamed
over the target, and the folder fsync'ed, so a kill at any moment leaves the old file or the new one, never a torn
one; every checkpoint, report and row file of the project goes through it.

Reading: `read` loads tensors and plain types only (weights_only=True), and an Ultralytics checkpoint, which
pickles its model as objects, goes through `read_objects`: weights_only=True with an allow-list passed in (that
of Ultralytics' restricted loader and of ultra-vil's registration), or on explicit trust. Every unusable file is a
`CheckpointError` that names it and says what it is not (no PyTorch checkpoint, truncated, untrusted objects).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import torch
from torch import Tensor, nn

from ultra_vil.errors import UserError

LOGGER = logging.getLogger(__name__)

# the mLSTM-branch tensors of a VisionLSTM2 layer that live in our ViLLayer's `mixers.0`
_MIXER_NAMES = ("learnable_skip", "q_proj", "k_proj", "v_proj", "conv")
_CELL_NAMES = ("igate", "fgate", "outnorm")  # under `layer.mlstm_cell.` in VisionLSTM2


class CheckpointError(UserError):
    """A weights file that cannot be used: missing, empty, truncated, not a checkpoint, or names that do not fit."""


# ---------------------------------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> None:
    """Write `data` (bytes, text, or a function that writes to a binary file) to `path` atomically.

    The temp file sits in the same folder (a rename is atomic only within one file system) and carries the pid,
    so two processes writing the same target never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable; some file systems cannot open or fsync a folder
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save(obj) to `path` through `atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------------- reading
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
# the legacy torch.save format: a pickle that opens with torch's magic number (LONG1, 10 bytes, little-endian)
_LEGACY_MAGIC = b"\x8a\n" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint whose pickle names a Python object outside the allow-list: loading it could run its code.

    `name` is the object refused as torch names it (`exec`, `mypackage.MyModel`), or "" if torch did not say."""

    def __init__(self, message: str, path: str | os.PathLike, name: str = ""):
        super().__init__(message, path)
        self.name = name


def _check_file(path: Path) -> int:
    """The size of `path`; a CheckpointError if it is missing, not a file or empty."""
    if not path.exists():
        raise CheckpointError("no such file", path)
    if not path.is_file():
        raise CheckpointError("is not a file", path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("empty file (0 bytes): an interrupted download or copy?", path)
    return size


def _load_error(path: Path, size: int, e: Exception, refused: str) -> CheckpointError:
    """The CheckpointError for a torch.load of `path` that raised `e`, by what the file is.

    The file's first bytes decide, not the exception: torch raises KeyError, IndexError, UnpicklingError or
    RuntimeError for bytes that are no checkpoint at all (a text file gives `KeyError: 101`, the code of the "e"
    its unpickler read as a memo index). A file that opens neither as a zip archive (torch.save's format) nor
    with the legacy format's magic number is "not a PyTorch checkpoint"; a torch file whose pickle names an
    object outside the allow-list is an `UntrustedCheckpointError` (`refused` says why, for the message); any
    other failure of a torch file is truncated or damaged. torch's own error is kept, type first, in brackets.

    Args:
        refused: The message for a refused object, with `{what}` where the object goes.
    """
    with open(path, "rb") as f:
        head = f.read(32)
    text = str(e).split("WeightsUnpickler error:", 1)[-1]  # past torch's paragraph on weights_only, if any
    cause = f"torch.load: {type(e).__name__}: {_first_line(text) if text.strip() else _first_line(e)}"
    if not head.startswith(_ZIP_MAGIC) and not (head.startswith(b"\x80") and _LEGACY_MAGIC in head):
        return CheckpointError(f"is not a PyTorch checkpoint ({size} bytes, neither the zip archive nor the legacy "
                               f"format that torch.save writes; {cause})", path)  # fmt: skip
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if found or "weights only" in str(e).lower() or "weights_only" in str(e):
        name = found.group(1) if found else ""
        what = f"a Python object ({name})" if name else "Python objects"
        return UntrustedCheckpointError(refused.format(what=what), path, name)
    return CheckpointError(f"not a readable PyTorch file ({size} bytes; truncated or damaged): {cause}", path)


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """torch.load(weights_only=True), with a CheckpointError naming the file for every way a file can be unusable.

    Missing, empty, not a PyTorch file at all, truncated or damaged, or holding pickled Python objects (an
    Ultralytics .pt pickles its model: see `read_objects`); `_load_error` says how they are told apart.
    """
    return read_objects(path, map_location)


def read_objects(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    allow: Callable[[Path], contextlib.AbstractContextManager] | None = None,
    trust: bool = False,
):
    """`read` for a file that pickles objects (an Ultralytics checkpoint pickles its model): without running code.

    Unpickling can call any function a file names, so the file is loaded with `torch.load(weights_only=True)`,
    and only tensors, plain types and what `allow` allow-lists can be rebuilt. This module keeps no list of its
    own: an Ultralytics checkpoint gets the allow-list of Ultralytics' restricted loader (`ULTRALYTICS_SAFE_LOAD`),
    `ultralytics.nn.tasks._SafeLoad.loading`, which registers the torch.nn and Ultralytics classes and data types
    the file names, once `import ultra_vil.yolo` has registered ultra-vil's module classes (scripts/
    checkpoint_range.py does both; only ultra_vil.yolo and scripts import Ultralytics).

    Args:
        path: The checkpoint.
        map_location: As for torch.load.
        allow: Called with the path before the load, it returns the context in which the allow-list holds.
        trust: Load with weights_only=False instead, with a UserWarning: whatever the file's pickle calls runs.
            Only for a file whose origin you trust, and only once the restricted load has refused it.

    Raises:
        CheckpointError: The file is missing, empty, not a PyTorch checkpoint, truncated or damaged;
            `UntrustedCheckpointError` if it pickles an object outside the allow-list (and trust is False).
    """
    path = Path(path)
    size = _check_file(path)
    if allow is None:
        refused = ("holds {what} besides tensors and plain types, so it is not loaded (weights_only=True); is it "
                   "another framework's checkpoint (an Ultralytics .pt)?")  # fmt: skip
    else:
        refused = ("refused: it pickles {what} outside the allow-list of model classes and data types; unpickling "
                   "it could run code (torch.load weights_only=True)")  # fmt: skip
    try:
        if trust:
            warnings.warn(f"{path}: loaded with torch.load(weights_only=False) on trust: any code its pickle names "
                          "runs", UserWarning, stacklevel=2)  # fmt: skip
            return torch.load(path, map_location=map_location, weights_only=False)
        with allow(path) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zipfile, EOF, unpickling, RuntimeError from the stream reader: none names the file
        raise _load_error(path, size, e, refused) from e


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip().splitlines()
    return text[0].strip() if text else type(e).__name__


# ------------------------------------------------------------------------------------------------ name mapping
def official_to_vil2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Released training-code names -> VisionLSTM2 names (the hub entry's rules, in their order)."""
    out = {}
    for key, value in state.items():
        k = key.replace(".xlstm.", ".layer.").removeprefix("xlstm.")
        k = k.replace(".xlstm_norm.", ".norm.").replace(".conv1d.", ".conv.")
        m = re.match(r"blocks\.(\d+)\.(.*)", k)
        if m:
            i = int(m.group(1))
            side = "rowwise_from_top_left" if i % 2 == 0 else "rowwise_from_bot_right"
            k = f"blocks.{i // 2}.{side}.{m.group(2)}"
        k = re.sub(r"^post_blocks_norm\.(weight|bias)$", r"norm.\1", k)
        k = re.sub(r"^head\.0\.(weight|bias)$", r"legacy_norm.\1", k)
        k = re.sub(r"^head\.1\.(weight|bias)$", r"head.\1", k)
        out[k] = value
    return out


def vil2_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VisionLSTM2 names -> ultra-vil `VisionLSTM` names; names it does not know pass through unchanged (and then
    surface as unmatched)."""
    out = {}
    for key, value in state.items():
        k = {"patch_embed.proj.weight": "patch_embed.weight", "patch_embed.proj.bias": "patch_embed.bias",
             "pos_embed.embed": "pos_embed"}.get(key, key)  # fmt: skip
        m = re.match(r"blocks\.(\d+)\.rowwise_from_(top_left|bot_right)\.(.*)", k)
        if m:
            block = 2 * int(m.group(1)) + (m.group(2) == "bot_right")
            rest = m.group(3)
            for name in _MIXER_NAMES:
                if rest == f"layer.{name}" or rest.startswith(f"layer.{name}."):
                    rest = "layer.mixers.0." + rest[len("layer.") :]
                    break
            for name in _CELL_NAMES:
                if rest.startswith(f"layer.mlstm_cell.{name}."):
                    rest = "layer.mixers.0." + rest[len("layer.mlstm_cell.") :]
                    break
            k = f"blocks.blocks.{block}.{rest}"
        out[k] = value
    return out


def detect_format(obj) -> str:
    """'ultra-vil', 'official' (released .th), 'vil2' (VisionLSTM2 state dict), 'state_dict' (a bare state dict
    in our names), or 'unknown'."""
    if not isinstance(obj, dict):
        return "unknown"
    if isinstance(obj.get("model"), dict) and "config" in obj:
        return "ultra-vil"
    if isinstance(obj.get("state_dict"), dict):
        return "official"
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        if "patch_embed.proj.weight" in obj or "pos_embed.embed" in obj:
            return "vil2"
        if "patch_embed.weight" in obj:
            return "state_dict"
    return "unknown"


def read_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, dict | None, str]:
    """(state dict in ultra-vil names, the ultra-vil config or None, the format) of any of the three formats.

    An ultra-vil checkpoint with EMA weights gives its raw (`model`) weights; pass the EMA's by saving them as
    `model`.
    """
    obj = read(path, map_location)
    fmt = detect_format(obj)
    if fmt == "ultra-vil":
        return dict(obj["model"]), dict(obj["config"]), fmt
    if fmt == "official":
        return vil2_to_ours(official_to_vil2(obj["state_dict"])), None, fmt
    if fmt == "vil2":
        return vil2_to_ours(obj), None, fmt
    if fmt == "state_dict":
        return dict(obj), None, fmt
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        "not a ViL checkpoint: expected an ultra-vil checkpoint ({'model', 'config'}), a VisionLSTM2 state dict "
        f"('patch_embed.proj.weight', ...) or a released .th file ({{'state_dict': ...}}); found {keys}",
        path,
    )


# ------------------------------------------------------------------------------------------------------ loading
def interpolate_pos_embed(embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a (1, H, W, D) position embedding to `grid`; returns it unchanged if it already fits."""
    if tuple(embed.shape[1:3]) == tuple(grid):
        return embed
    x = embed.permute(0, 3, 1, 2)  # (1, D, H, W)
    x = nn.functional.interpolate(x, size=tuple(grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1)  # (1, H', W', D)


def load_weights(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str | os.PathLike = "checkpoint",
    *,
    ignore: Iterable[str] = (),
    drop_mismatched_head: bool = True,
) -> list[str]:
    """Copy `state` (ultra-vil names) into `model` (a VisionLSTM) by name; returns the names it left out.

    Args:
        model: The model to fill; its `pos_embed` grid decides the resize of the checkpoint's.
        state: Tensors by ultra-vil name (see `read_weights`).
        source: The file, for messages.
        ignore: Name prefixes of checkpoint tensors to leave out on purpose (a backbone has no `head.`).
        drop_mismatched_head: A `head.*` of another shape (another number of classes) is left out, with a log
            message, and the model keeps its own initial head.

    Raises:
        CheckpointError: Some checkpoint tensor has no parameter of that name, some parameter has no tensor, or
            a name matches with another shape; the message lists all of them.
    """
    own = model.state_dict()
    state = dict(state)
    ignore = tuple(ignore)
    dropped = [k for k in state if ignore and k.startswith(ignore)]
    for k in dropped:
        del state[k]
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].dim() == 4:
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], tuple(own["pos_embed"].shape[1:3]))
    head = [k for k in state if k.startswith("head.") and (k not in own or state[k].shape != own[k].shape)]
    if drop_mismatched_head and head:
        shapes = {k: tuple(state[k].shape) for k in head}
        for k in head:
            del state[k]
        dropped += head
        LOGGER.info("%s: head %s not loaded (this model: %s): head re-initialised", source, shapes,
                    {k: tuple(v.shape) for k, v in own.items() if k.startswith("head.")} or "no head")
    unused = sorted(k for k in state if k not in own)
    unfilled = sorted(k for k in own if k not in state and not (drop_mismatched_head and k.startswith("head.")))
    wrong = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)} here" for k, v in state.items()
                   if k in own and v.shape != own[k].shape)  # fmt: skip
    if unused or unfilled or wrong:
        parts = []
        if unused:
            hint = " (the model needs legacy_norm=True)" if any(k.startswith("legacy_norm.") for k in unused) else ""
            parts.append(f"{len(unused)} tensor(s) the model has no parameter for{hint}: {_names(unused)}")
        if unfilled:
            hint = " (the checkpoint has no legacy_norm: use legacy_norm=False)" if any(
                k.startswith("legacy_norm.") for k in unfilled) else ""  # fmt: skip
            parts.append(f"{len(unfilled)} parameter(s) missing from the checkpoint{hint}: {_names(unfilled)}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es): {_names(wrong)}")
        raise CheckpointError("does not fit this model: " + "; ".join(parts), source)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return dropped


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, ignore: Iterable[str] = ()) -> str:
    """`read_weights` + `load_weights` into `model`; returns the detected format."""
    state, _, fmt = read_weights(path)
    load_weights(model, state, path, ignore=ignore)
    return fmt
