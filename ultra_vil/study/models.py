"""Which models a study trains: YAML lookup, YOLO names and scales (one parser), stock baselines, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ultra_vil.errors import UserError


# A source checkout (editable install): relative --data / --models paths also resolve against it, and reports show
# paths inside it relative to it. None when ultra_vil is installed from a wheel.
REPO = Path(__file__).resolve().parents[2] if (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file() else None


# The one parser of YOLO model names: generation, scale letter (or none), the rest ("yolov8n-vil-p5" -> "yolov8",
# "n", "-vil-p5"; "yolo11-vil" -> "yolo11", "", "-vil"). The scale letters are Ultralytics' (guess_model_scale).
SCALES = "nsmlx"
_GENERATION = r"yolo(?:e-)?v?\d+"  # yolov8, yolo11, yolo26, yoloe-v8, ...
MODEL_NAME = re.compile(rf"({_GENERATION})([{SCALES}]?)(.*)")
GENERATION = re.compile(rf"({_GENERATION})([{SCALES}])")  # generation + scale at the start of a name
# Ultralytics' yaml_model_load drops the scale letter from the whole path with this substitution
_ULTRALYTICS_UNSCALE = re.compile(rf"(\d+)([{SCALES}])(.+)?$")


def parse_model_name(name: str) -> tuple[str, str, str] | None:
    """(generation, scale letter or "", rest) of a YOLO model name or YAML stem; None for a name that does not
    start with a YOLO generation (vil-t)."""
    m = MODEL_NAME.fullmatch(name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def generation_of(name: str) -> str | None:
    """The YOLO generation a name starts with: yolo11n-vil -> yolo11, yolov8-vil.yaml's stem -> yolov8."""
    parsed = parse_model_name(name)
    return parsed[0] if parsed else None


def baseline_tag(tag: str) -> str | None:
    """The stock model of the same generation and scale: yolo11n-vil -> yolo11n, yolov8s-vil-p5 -> yolov8s."""
    parsed = parse_model_name(tag)
    return parsed[0] + parsed[1] if parsed and parsed[1] else None


def baseline_cfg(tag: str) -> str:
    """The stock YAML Ultralytics resolves by name for a ViL model tag (yolo26n-vil -> yolo26n.yaml)."""
    base = baseline_tag(tag)
    if base is None:
        raise ValueError(f"{tag!r} names no YOLO generation and scale (e.g. yolov8n-vil, yolo11s-vil)")
    return f"{base}.yaml"


def find_file(path: str) -> Path:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and REPO is not None and (REPO / p).exists():
        p = REPO / p
    return p.resolve()


def scaled_model(yaml_path: Path, scale: str) -> tuple[str, Path]:
    """(tag, path to hand to Ultralytics) for a ViL YAML at `scale`: .../yolov8-vil.yaml -> .../yolov8n-vil.yaml.

    The scaled path does not exist; Ultralytics' yaml_model_load maps it back to the file (re.sub of
    `(\\d+)([nslmx])(.+)?$` on the whole path) and takes the scale from the name. Checked here, since a folder
    name such as `run1s/` would derail that substitution.
    """
    parsed = parse_model_name(yaml_path.stem)
    if not parsed:
        raise UserError(f"{yaml_path}: the name must start with a YOLO generation (e.g. yolov8-vil.yaml, "
                         "yolo11-vil.yaml) to be scaled")  # fmt: skip
    generation, named_scale, rest = parsed
    if named_scale and named_scale != scale:
        raise UserError(f"{yaml_path} names scale '{named_scale}' but --scale is '{scale}'; pass the "
                         f"unscaled YAML (e.g. {generation}{rest}.yaml)")  # fmt: skip
    stem = f"{generation}{scale}{rest}"
    scaled = yaml_path.with_name(stem + yaml_path.suffix)
    unified = _ULTRALYTICS_UNSCALE.sub(r"\1\3", str(scaled))
    if unified != str(yaml_path) and not scaled.exists():
        raise UserError(
            f"Ultralytics would map {scaled} to {unified}, not to {yaml_path}, because a folder in the path "
            "contains a number followed by n/s/m/l/x; move the YAML to a folder without one"
        )
    return stem, scaled


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def backbone_weights(yaml_path: Path) -> list[str]:
    """The weights files the YAML's ViLBackbone rows load (ULTRA_VIL_BACKBONE_WEIGHTS overrides them, as in
    ultra_vil.yolo.modules); a named file that does not exist is an error now, not in the worker."""
    import yaml

    from ultra_vil.yolo.modules import WEIGHTS_ENV

    d = yaml.safe_load(yaml_path.read_text()) or {}
    rows = [r for r in (d.get("backbone") or []) + (d.get("head") or []) if isinstance(r, list) and len(r) == 4]
    found = []
    for row in rows:
        if row[2] != "ViLBackbone":
            continue
        args = row[3] if isinstance(row[3], list) else []
        weights = os.environ.get(WEIGHTS_ENV) or (args[2] if len(args) > 2 else "")
        if weights and str(weights).lower() != "none":
            path = Path(str(weights)).expanduser()
            if not path.is_file():
                raise UserError(f"{yaml_path}: ViLBackbone weights {path} not found")
            found.append(str(path))
    return found


def yaml_sha(path: Path) -> str:
    """The sha of a YAML's content (comments, quoting and layout do not count): its parsed value as sorted JSON."""
    import yaml

    content = json.dumps(yaml.safe_load(path.read_text()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def model_sha(yaml_path: Path) -> str:
    """The model YAML's content sha, plus its backbone weights' file shas (other weights: a new run, not a skipped
    one). Editing a comment of the YAML keeps the sha; changing a layer changes it."""
    return model_shas(yaml_path)[0]


def model_shas(yaml_path: Path) -> tuple[str, str]:
    """(model_sha, the same over the YAML's raw bytes): a row stored with either belongs to this model. Rows of
    studies written before content shas hold the byte form, which stays valid while the file is unchanged. The
    weights files (possibly large) are hashed once for both."""
    weights = [file_sha(Path(w)) for w in backbone_weights(yaml_path)]
    return "+".join([yaml_sha(yaml_path), *weights]), "+".join([file_sha(yaml_path), *weights])


def pick_models(paths: list[str], scale: str, baseline: str = "auto") -> list[dict]:
    """Stock baselines, then ViL models: {tag, cfg, yaml (None for stock), weights, baseline (ViL only)}.

    `baseline` 'auto': each ViL YAML is compared with the stock model of its own generation and the scale
    (cfg/yolo26-vil.yaml -> yolo26{scale}, cfg/yolov8-vil-p5.yaml -> yolov8{scale}); a generation name instead
    (yolov8, yolo11, yolo26) compares every ViL YAML with that one. With no ViL YAML: the stock model of that
    generation alone (yolov8{scale} for 'auto').
    """
    if baseline != "auto" and parse_model_name(baseline) != (baseline, "", ""):
        raise UserError(f"--baseline {baseline!r}: 'auto' or a generation such as yolov8, yolo11, yolo26")
    vil = []
    for m in paths:
        path = find_file(m)
        if not path.is_file():
            raise UserError(f"--models {m}: file not found")
        tag, scaled = scaled_model(path, scale)
        base = baseline_tag(tag) if baseline == "auto" else f"{baseline}{scale}"
        if base is None:
            raise UserError(f"{path}: no YOLO generation in its name for --baseline auto")
        vil.append({"tag": tag, "cfg": str(scaled), "yaml": str(path), "weights": backbone_weights(path),
                    "baseline": base})  # fmt: skip
    alone = f"{'yolov8' if baseline == 'auto' else baseline}{scale}"  # with no ViL YAML: that stock model alone
    bases = list(dict.fromkeys([m["baseline"] for m in vil] or [alone]))
    models = [{"tag": b, "cfg": f"{b}.yaml", "yaml": None} for b in bases]
    for m in vil:
        if any(x["tag"] == m["tag"] for x in models):
            raise UserError(f"two models would both be called {m['tag']}; rename one YAML")
        models.append(m)
    return models
