"""A study's settings: protocol files (type-checked), --extra, and settings.json (paths relative to the repository)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ultra_vil.errors import UserError
from ultra_vil.study.models import REPO, find_file


# Settings that change what a run computes: a row is reused only if all of them match (the data by its content,
# data_sha, not by its path: check_settings).
RUN_SETTINGS = ("data", "epochs", "img_size", "batch_size", "optimizer", "lr0", "device", "workers", "extra")


# -------------------------------------------------------------------------------------------------------- jobs
def parse_extra(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--extra expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    fixed = {"seed", "deterministic", "epochs", "imgsz", "batch", "optimizer", "lr0", "device", "workers", "data",
             "project", "name", "exist_ok", "pretrained", "resume"}  # fmt: skip
    clash = sorted(fixed & out.keys())
    if clash:
        raise UserError(f"--extra may not set {clash}: use the flags, or they are fixed by compare.py")
    return out


def read_protocol(path: Path, parser) -> dict[str, Any]:
    """A study's settings from a YAML file whose keys are compare.py's flag names (`img_size` or `img-size`),
    checked against `parser`: {dest: value} for parser.set_defaults.

    Every problem is a UserError naming the file (and the line of a YAML syntax error), the key and the value: an
    unreadable file, one that is not a mapping, an unknown key, a value of the wrong type. Values are checked, never
    converted: through int() and float(), `epochs: 2.9` would train 2 epochs, `epochs: true` 1 and `lr0: true` use
    1.0. Accepted: an integer where a number is expected (`lr0: 1`) or a string (`device: 0`, which YAML reads as
    an integer); one value for a list flag (`seeds: 3`); an empty list only where the flag takes none (`models:
    []`, stock only), so `seeds: []`, which would run nothing, is an error as `--seeds` with no value is.
    """
    import yaml


    path = find_file(str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the protocol: {e.strerror or e}", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"not valid YAML ({getattr(e, 'problem', e)})", path,
                        mark.line + 1 if mark is not None else None) from None  # fmt: skip
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping of compare.py flags, got {type(data).__name__}", path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "protocol", "worker")}
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise UserError(f"unknown key {key!r} (keys: {', '.join(sorted(actions))})", path)
        if action.nargs == 0:  # a switch such as no_onnx / quiet
            if not isinstance(value, bool):
                raise UserError(f"{key}: expected true or false, got {value!r}", path)
            out[dest] = value
            continue
        if action.nargs not in ("*", "+"):
            if isinstance(value, list):
                raise UserError(f"{key}: expected one value, got {value!r}", path)
            out[dest] = _protocol_value(path, str(key), action, value)
            continue
        if isinstance(value, dict):
            raise UserError(f"{key}: expected a list, got {value!r}", path)
        if value == [] and action.nargs == "+":
            raise UserError(f"{key}: expected at least one value, got []", path)
        items = value if isinstance(value, list) else [value]
        names = [f"{key}[{i}]" for i in range(len(items))] if isinstance(value, list) else [str(key)]
        out[dest] = [_protocol_value(path, name, action, v) for name, v in zip(names, items)]
    return out


def _protocol_value(path: Path, key: str, action, value: Any) -> Any:
    """One protocol value as its flag's type would parse it, if it has that type (read_protocol says which)."""

    integer = isinstance(value, int) and not isinstance(value, bool)  # YAML's true/false are ints to Python
    if action.type is int:
        ok, what, conv = integer, "an integer", int
    elif action.type is float:
        ok, what, conv = integer or isinstance(value, float), "a number", float
    elif action.type in (None, str):
        ok, what, conv = isinstance(value, str) or integer, "a string", str
    else:  # Path and other parsers of text
        ok, what, conv = isinstance(value, str), "a string", action.type
    if not ok:
        raise UserError(f"{key}: expected {what}, got {value!r}", path)
    try:
        converted = conv(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}: {value!r} is not a valid value", path) from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{key}: {value!r} not one of {list(action.choices)}", path)
    return converted


def repo_root(folder: Path) -> Path | None:
    """The repository `folder` lies in: the nearest folder at or above it that holds .git or pyproject.toml; else
    the checkout ultra_vil runs from (REPO; None when installed from a wheel)."""
    for p in (folder, *folder.parents):
        if (p / ".git").exists() or (p / "pyproject.toml").is_file():
            return p
    return REPO


def stored_path(path: Path, out: Path) -> str:
    """How settings.json names a file (the data YAML): relative to the out-dir's repository when the file lies in
    it (datasets/neon-trees.yaml), so that the study reads the same in every clone; else its absolute path."""
    root = repo_root(out)
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def stored_file(name: str, out: Path) -> Path:
    """The file a settings.json name means (stored_path's inverse; absolute paths of older versions as they are)."""
    path = Path(name)
    if path.is_absolute():
        return path
    root = repo_root(out)
    return (root if root is not None else out) / path


def check_settings(path: Path, settings: dict) -> None:
    """Rows in one out-dir must come from the same settings, or the comparison would mix apples and pears.

    The data YAML counts by its content (data_sha), not its path: the same study in another clone, or a
    settings.json of an older version (which stored the absolute path of the clone it ran in), is the same study.
    The file is then rewritten with the settings of now, the data's path in the form stored_path gives."""
    if path.is_file():

        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise UserError(f"not valid JSON ({e}); restore it: it records the rows' settings", path) from None
        if not isinstance(old, dict):
            raise UserError(f"expected a mapping of settings, got {type(old).__name__}", path)
        diff = [k for k in (*RUN_SETTINGS, "data_sha", "latency_runs", "latency_warmup", "onnx")
                if k != "data" and old.get(k) != settings.get(k)]  # fmt: skip
        if diff:
            lines = [f"  {k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff]
            if "data_sha" in diff:
                lines.append(f"  (data: {old.get('data')!r} there, {settings['data']!r} now)")
            raise UserError(f"{path.parent} holds runs made with other settings:\n" + "\n".join(lines)
                             + "\nuse another --out-dir (or delete that one)")  # fmt: skip
    path.write_text(json.dumps(settings, indent=2) + "\n")
