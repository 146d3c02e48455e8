"""Which backend `mlstm(backend="auto")` runs: the measured threshold table, validated, with built-in defaults.

The table (mlstm_dispatch.json, package data beside this module) is written by scripts/benchmark.py and read once,
at import. A missing or invalid file never breaks the import: `auto` then uses DEFAULT_DISPATCH (one warning).
Everything about the table is here: its format (`validate_dispatch`), the rule that turns an entry into a backend
(`pick_backend`, what `auto` and the benchmark's threshold search both apply), the lenient read at import
(`load_dispatch`), and the strict read and the atomic write that the benchmark uses (`read_dispatch`,
`write_dispatch`).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ultra_vil.checkpoints import atomic_write

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent", "triton")

# `auto`'s thresholds, per device type and dtype, as measured by scripts/benchmark.py (which rewrites the file):
# {device: {dtype: {"parallel_max_seq": N, "triton_min_seq": N or null}}}. Package data beside this module.
DISPATCH_TABLE_PATH = Path(__file__).with_name("mlstm_dispatch.json")
DISPATCH_KEYS = ("parallel_max_seq", "triton_min_seq")
_DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}  # the entry a missing dtype (float64 too) falls back to
# What `auto` uses when the table file cannot be used: the thresholds the shipped table held when this was written
# (cpu: measured on a 2-core CPU; cuda: unmeasured, parallel up to 512 steps; triton never picked automatically)
DEFAULT_DISPATCH = {
    "comment": "built-in defaults of ultra_vil.mlstm (the package's mlstm_dispatch.json could not be used)",
    "cpu": {name: {"parallel_max_seq": 224, "triton_min_seq": None} for name in ("float32", "bfloat16")},
    "cuda": {name: {"parallel_max_seq": 512, "triton_min_seq": None} for name in ("bfloat16", "float16", "float32")},
}


def validate_dispatch(table: dict, where: str = "dispatch table", *, complete: bool = False) -> dict:
    """Check the table's one format (the rule scripts/benchmark.py writes by and `auto` reads by).

    {"comment": str, "<device type>": {"<dtype>": {"parallel_max_seq": int >= 0, "triton_min_seq": int >= 1 | null}}}
    with device types "cpu" and "cuda". `complete` also requires the cpu/float32 entry, the one every missing
    (device, dtype) falls back to (what `auto` needs); the format alone allows e.g. a table of one GPU's entries.

    Returns the table; raises ValueError starting with `where` and naming the bad entry and value.
    """
    if not isinstance(table, dict) or not isinstance(table.get("comment"), str):
        raise ValueError(f"{where}: expected an object with a string 'comment'")
    for device_type, per_dtype in table.items():
        if device_type == "comment":
            continue
        if device_type not in ("cpu", "cuda") or not isinstance(per_dtype, dict):
            raise ValueError(f"{where}: {device_type!r} must be 'cpu' or 'cuda' and map dtype names to entries")
        for name, entry in per_dtype.items():
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"{where}: {device_type}.{name}: not a torch dtype name (e.g. 'bfloat16')")
            if not isinstance(entry, dict) or set(entry) != set(DISPATCH_KEYS):
                raise ValueError(f"{where}: {device_type}.{name} must have exactly the keys {DISPATCH_KEYS}")
            p, t = entry["parallel_max_seq"], entry["triton_min_seq"]
            if not isinstance(p, int) or isinstance(p, bool) or p < 0:
                raise ValueError(f"{where}: {device_type}.{name}.parallel_max_seq must be an integer >= 0, got {p!r}")
            if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 1):
                raise ValueError(
                    f"{where}: {device_type}.{name}.triton_min_seq must be null or an integer >= 1, got {t!r}"
                )
    if complete and "float32" not in table.get("cpu", {}):
        raise ValueError(f"{where}: no cpu.float32 entry (every missing device and dtype falls back to it)")
    return table


def load_dispatch(path: str | Path) -> dict:
    """The dispatch table in `path`, validated (`validate_dispatch(..., complete=True)`).

    Never raises: a missing, unreadable, empty, malformed or invalid file gives a copy of DEFAULT_DISPATCH and one
    UserWarning naming the file and the problem. The table is read when this module is imported (every model, the
    classifier and the YOLO registration import it), and a bad threshold file must not break those; it only
    costs `auto` its measured thresholds. (scripts/benchmark.py, which writes the file, reads it strictly.)
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        problem = f"{path}: cannot be read ({e})"
    else:
        try:
            return validate_dispatch(json.loads(text), str(path), complete=True)
        except json.JSONDecodeError as e:
            problem = f"{path}: not valid JSON ({e})"
        except ValueError as e:
            problem = str(e)
    warnings.warn(f"{problem}; mlstm backend='auto' uses the built-in thresholds instead", UserWarning, stacklevel=2)
    return copy.deepcopy(DEFAULT_DISPATCH)


def read_dispatch(path: str | Path = DISPATCH_TABLE_PATH) -> dict:
    """The dispatch table in `path`, validated strictly: a bad file raises ValueError naming it (unlike
    `load_dispatch`, which falls back to the built-in thresholds); an empty table (only a comment) if the file does
    not exist."""
    path = Path(path)
    if not path.is_file():
        return {"comment": f"{path.name} not found"}
    return validate_dispatch(json.loads(path.read_text()), str(path))


def write_dispatch(path: str | Path, measured: dict, comment: str, base: dict | None = None) -> dict:
    """Write `measured` ({device type: {dtype name: entry}}) over `base` (entries of other devices are kept).

    Returns the table written (through `ultra_vil.checkpoints.atomic_write`: the old file or the new one, never a
    torn one). The comment says where and when the numbers were measured. The package copy (DISPATCH_TABLE_PATH)
    must also be complete (a cpu/float32 entry), or `import ultra_vil` would fall back to the built-in thresholds.
    """
    table = {"comment": comment}
    for device_type in ("cpu", "cuda"):
        merged = {**(base or {}).get(device_type, {}), **measured.get(device_type, {})}
        if merged:
            table[device_type] = merged
    path = Path(path)
    validate_dispatch(table, str(path), complete=path.resolve() == DISPATCH_TABLE_PATH.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(table, indent=2) + "\n")
    return table


DISPATCH = load_dispatch(DISPATCH_TABLE_PATH)  # read once, at import: what `auto` (select_backend) consults


def dispatch_entry(device: torch.device | str, dtype: torch.dtype) -> dict:
    """The table's entry for (device type, dtype); a missing one falls back to cpu/float32 or cuda/bfloat16."""
    device_type = torch.device(device).type
    table = DISPATCH.get(device_type, DISPATCH["cpu"])
    default = _DEFAULT_DTYPE.get(device_type, "float32")
    return table.get(str(dtype).removeprefix("torch."), table.get(default, DISPATCH["cpu"]["float32"]))


# the parallel backend's limit at each device type's default dtype (through the same fallbacks as `auto`)
PARALLEL_MAX_SEQ = {dev: dispatch_entry(dev, getattr(torch, name))["parallel_max_seq"] for dev, name in
                    _DEFAULT_DTYPE.items()}


def select_backend(S: int, device: torch.device | str, dtype: torch.dtype, B: int | None = None) -> str:
    """The backend `auto` runs for a sequence of S steps on `device` (thresholds measured by scripts/benchmark.py).

    "triton" from `triton_min_seq` steps on, where the table has one (only a GPU run writes it) and the kernel can
    run; "parallel" up to `parallel_max_seq` steps (the quadratic form wins short sequences); "chunkwise" above,
    the form whose memory stays linear in S. `B` is accepted for tables that will depend on it; today's do not.
    Every backend can return the final state, so `return_state` does not change the choice.
    """
    return pick_backend(S, dispatch_entry(device, dtype), triton=lambda: _triton_usable(device))


def pick_backend(S: int, entry: dict, triton: bool | Callable[[], bool] = False) -> str:
    """The dispatch rule: the backend a table entry picks for S steps.

    "triton" from the entry's `triton_min_seq` on (when it has one) if `triton` says the kernel runs here (a bool,
    or a function asked only when the entry would pick triton); else "parallel" up to `parallel_max_seq`, else
    "chunkwise". `select_backend` applies it to the loaded table, the benchmark to the thresholds it tries.
    """
    triton_min = entry.get("triton_min_seq")
    if triton_min is not None and S >= triton_min and (triton() if callable(triton) else triton):
        return "triton"
    return "parallel" if S <= entry["parallel_max_seq"] else "chunkwise"


def _triton_usable(device: torch.device | str) -> bool:
    try:
        from . import triton as mlstm_triton
    except ImportError:
        return False
    return bool(mlstm_triton.available(torch.device(device)))
