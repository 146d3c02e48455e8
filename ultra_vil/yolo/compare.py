"""The comparison behind scripts/compare.py: stock YOLO vs ViL models under identical settings, with a verdict.

scripts/compare.py parses the arguments and calls `run`; everything else is here: the model list (each ViL YAML with
the stock model of its generation and scale), one job per (model, seed) in a fresh process (`python -m
ultra_vil.yolo.compare --worker JOB`: train, validate, time), the statistics and the reports (compare.csv /
compare.md / compare.png). Timing, peak memory and devices come from `ultra_vil.measure` (shared with the
benchmark). The statistics (first section) are pure Python, tested on fixed CSVs.

Why a paired t-interval, not a bootstrap: each seed trains both models on the same data order and augmentation,
so the per-seed differences remove the seed-to-seed noise both share (on neon-trees two runs of one layout that
differed only in mLSTM numerics scored mAP50 0.483 and 0.415). With the 2-10 seeds a study can afford, a bootstrap
over seeds resamples from at most 10 values: its percentile interval is too narrow (with 5 seeds it covers the
true mean difference markedly less often than 95%), whereas the t-interval is exact when the differences are
normal and widens honestly as seeds get fewer. Verdict: "better" if the whole interval of the mAP50-95 difference
is above 0, "worse" if below, else "no difference detectable with N seeds"; with fewer than 2 paired seeds there
is no interval and nothing is claimed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NA = "n/a"
METRICS = ["map50", "map50_95", "precision", "recall"]
COLUMNS = ["model", "seed", "params", "gflops", *METRICS, "latency_ms_torch", "latency_ms_onnx",
           "train_s_per_epoch", "peak_mem_mb"]  # fmt: skip
# Settings that change what a run computes: a row is reused only if all of them match (the data by its content,
# data_sha, not by its path: check_settings).
RUN_SETTINGS = ("data", "epochs", "img_size", "batch_size", "optimizer", "lr0", "device", "workers", "extra")
# A source checkout (editable install): relative --data / --models paths also resolve against it, and reports show
# paths inside it relative to it. None when ultra_vil is installed from a wheel.
REPO = Path(__file__).resolve().parents[2] if (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file() else None
CONFIDENCE = 0.95
DECIDING_METRIC = "map50_95"  # the verdict's metric (COCO's primary); mAP50's interval is reported beside it
DIFF_METRICS = ("map50_95", "map50")
COST_COLUMNS = ("latency_ms_torch", "latency_ms_onnx", "train_s_per_epoch", "peak_mem_mb")
GENERATION = re.compile(r"(yolo(?:e-)?v?\d+)([nslmx])")  # Ultralytics' guess_model_scale pattern, with the prefix

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (standard tables); above 30 a Cornish-Fisher series
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the half-width factor of a two-sided 95% t-interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # normal quantile; series in 1/df (Abramowitz & Stegun 26.7.5), error < 1e-4 for df > 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def baseline_tag(tag: str) -> str | None:
    """The stock model of the same generation and scale: yolo11n-vil -> yolo11n, yolov8s-vil-p5 -> yolov8s."""
    m = GENERATION.match(tag)
    return m.group(0) if m else None


def baseline_cfg(tag: str) -> str:
    """The stock YAML Ultralytics resolves by name for a ViL model tag (yolo26n-vil -> yolo26n.yaml)."""
    base = baseline_tag(tag)
    if base is None:
        raise ValueError(f"{tag!r} names no YOLO generation and scale (e.g. yolov8n-vil, yolo11s-vil)")
    return f"{base}.yaml"


def _number(v) -> float | None:
    if v is None or v == NA or v == "":
        return None
    x = float(v)
    return x if math.isfinite(x) else None


@dataclass
class Interval:
    """Mean of the paired differences (ViL - stock) and its 95% t-interval over n seeds (lo = hi = None if n < 2)."""

    n: int
    mean: float | None
    std: float | None
    lo: float | None
    hi: float | None

    def text(self, digits: int = 3) -> str:
        if self.mean is None:
            return "no paired seeds"
        if self.lo is None:
            return f"{self.mean:+.{digits}f} (1 seed, no interval)"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired_interval(diffs: list[float]) -> Interval:
    """Mean and two-sided 95% t-interval of per-seed differences."""
    n = len(diffs)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = statistics.fmean(diffs)
    if n == 1:
        return Interval(1, mean, None, None, None)
    std = statistics.stdev(diffs)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def verdict(interval: Interval) -> str:
    """'better', 'worse' or 'no difference detectable with N seeds': the interval decides, never the mean alone."""
    if interval.n < 2 or interval.lo is None:
        seeds = f"{interval.n} seed" if interval.n == 1 else f"{interval.n} seeds"
        return f"no difference detectable with {seeds} (an interval needs >= 2 paired seeds; nothing is claimed)"
    if interval.lo > 0:
        return "better"
    if interval.hi < 0:
        return "worse"
    return f"no difference detectable with {interval.n} seeds"


def paired(rows: list[dict], vil: str, stock: str, column: str) -> list[tuple[int, float, float]]:
    """(seed, vil value, stock value) for every seed where both models have a number in `column`."""
    by_seed = {}
    for r in rows:
        if r["model"] in (vil, stock):
            by_seed.setdefault(int(r["seed"]), {})[r["model"]] = _number(r.get(column))
    out = []
    for seed in sorted(by_seed):
        a, b = by_seed[seed].get(vil), by_seed[seed].get(stock)
        if a is not None and b is not None:
            out.append((seed, a, b))
    return out


@dataclass
class Comparison:
    """One ViL model against its stock baseline."""

    vil: str
    stock: str
    diffs: dict[str, Interval]  # metric -> interval of ViL - stock
    ratios: dict[str, tuple[int, float | None, float | None, float | None, float | None]]  # n, mean, std, min, max
    verdict: str

    def line(self) -> str:
        d = self.diffs
        return (f"- **{self.vil} vs {self.stock}: {self.verdict}** (mAP50-95 difference {d['map50_95'].text()}, "
                f"mAP50 {d['map50'].text()}; model - stock, mean [95% paired t-interval] over "
                f"{d[DECIDING_METRIC].n} seed(s))")  # fmt: skip


def compare_pair(rows: list[dict], vil: str, stock: str) -> Comparison:
    diffs = {m: paired_interval([a - b for _, a, b in paired(rows, vil, stock, m)]) for m in DIFF_METRICS}
    ratios = {}
    for col in COST_COLUMNS:
        rs = [a / b for _, a, b in paired(rows, vil, stock, col) if b > 0]
        if rs:
            ratios[col] = (len(rs), statistics.fmean(rs), statistics.stdev(rs) if len(rs) > 1 else None, min(rs),
                           max(rs))  # fmt: skip
        else:
            ratios[col] = (0, None, None, None, None)
    return Comparison(vil, stock, diffs, ratios, verdict(diffs[DECIDING_METRIC]))


def pairs_of(tags: list[str], baselines: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(vil tag, stock tag) for every non-stock tag: the given baseline, else the same generation and scale."""
    baselines = baselines or {}
    stock = {t for t in tags if baseline_tag(t) == t}
    out = []
    for t in tags:
        if t in stock:
            continue
        base = baselines.get(t) or baseline_tag(t)
        if base in stock:
            out.append((t, base))
    return out


def compare_rows(rows: list[dict], baselines: dict[str, str] | None = None) -> list[Comparison]:
    tags = list(dict.fromkeys(r["model"] for r in rows))
    return [compare_pair(rows, vil, stock) for vil, stock in pairs_of(tags, baselines)]


def read_rows(path: Path | str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def verdict_lines(comparisons: list[Comparison], costs: dict | None = None) -> list[str]:
    """The verdict section of compare.md (its first section); `costs`: a costs.json (side-by-side costs)."""
    lines = ["## Verdicts", ""]
    if not comparisons:
        return lines + ["No ViL model has a stock baseline with finished runs: nothing to decide.", ""]
    lines += [c.line() for c in comparisons]
    lines += ["", "Cost, model / stock per seed (mean ± std over seeds, [min, max]):", ""]
    names = {"latency_ms_torch": "latency PyTorch", "latency_ms_onnx": "latency ONNX RT",
             "train_s_per_epoch": "train time per epoch", "peak_mem_mb": "peak memory"}  # fmt: skip
    for c in comparisons:
        parts = []
        for col in COST_COLUMNS:
            _, mean, std, lo, hi = c.ratios[col]
            if mean is None:
                parts.append(f"{names[col]} {NA}")
                continue
            spread = f" ± {std:.2f}" if std is not None else ""
            parts.append(f"{names[col]} {mean:.2f}x{spread} [{lo:.2f}, {hi:.2f}]")
        lines.append(f"- {c.vil} / {c.stock}: " + "; ".join(parts))
    lines += cost_lines(comparisons, costs)
    lines += [
        "",
        (
            f"The verdict reads the {CONFIDENCE:.0%} paired t-interval of the mAP50-95 difference (seed k of both "
            "models trains on the same data order and augmentation, so the pairs share that noise): 'better' / "
            "'worse' only when the whole interval is above / below 0. A t-interval rather than a bootstrap: with a "
            "handful of seeds a bootstrap resamples a handful of values and its interval is too narrow."
        ),
        "",
    ]
    return lines


# ------------------------------------------------------------------------------------------- side-by-side costs
COSTS_FILE = "costs.json"
COST_KINDS = (("train", "fwd+bwd time"), ("train_mem", "fwd+bwd peak memory"), ("torch", "latency PyTorch"),
              ("onnx", "latency ONNX RT"))  # fmt: skip


def cost_settings(settings: dict) -> dict:
    """What costs.json must match to belong to a study: image size, batch, device."""
    return {"img_size": settings["img_size"], "batch_size": settings["batch_size"], "device": settings["device"]}


def read_costs(out: Path, settings: dict) -> tuple[dict | None, str]:
    """(costs.json of `out`, "") when it matches the study's settings, else (None, why not)."""
    path = out / COSTS_FILE
    if not path.is_file():
        return None, ""
    costs = json.loads(path.read_text())
    if costs.get("settings") != cost_settings(settings):
        return None, f"{path.name} is from other settings ({costs.get('settings')}): ignored; delete it to remeasure"
    return costs, ""


def cost_ratio(costs: dict, vil: str, stock: str, kind: str) -> str:
    """'1.23x / 1.20x' (min/min / median/median; memory: one ratio) or n/a."""
    a, b = costs["models"].get(vil, {}), costs["models"].get(stock, {})
    if kind == "train_mem":
        return f"{a['train_mem_mb'] / b['train_mem_mb']:.2f}x" if a.get("train_mem_mb") and b.get("train_mem_mb") \
            else NA  # fmt: skip
    if not (a.get(f"{kind}_min_ms") and b.get(f"{kind}_min_ms")):
        return NA
    return f"{a[f'{kind}_min_ms'] / b[f'{kind}_min_ms']:.2f}x / {a[f'{kind}_median_ms'] / b[f'{kind}_median_ms']:.2f}x"


def cost_lines(comparisons: list[Comparison], costs: dict | None) -> list[str]:
    if not costs:
        return ["", "The per-seed time ratios above come from runs that were each timed alone, under whatever load the "
                "machine had then; `--costs` measures every model side by side in one process (not run here)."]
    lines = ["", f"Cost measured side by side ({costs['how']}), model / stock, min/min / median/median:", ""]
    for c in comparisons:
        parts = [f"{name} {cost_ratio(costs, c.vil, c.stock, kind)}" for kind, name in COST_KINDS]
        lines.append(f"- {c.vil} / {c.stock}: " + "; ".join(parts))
    lines += ["", "Prefer these to the per-seed time ratios: each training run was timed alone, under the load of "
              "its hour, while here every model takes its turn in each round and all share the same noise."]
    return lines


def measure_study_costs(models: list[dict], settings: dict, names: list[str], out: Path, threads: int | None) -> dict:
    """Every model of the study built from its YAML and timed side by side (ultra_vil.yolo.costs): fwd+bwd at the
    study's batch and image size, batch-1 fused inference in PyTorch and ONNX Runtime. Writes out/costs.json."""
    import datetime

    import torch

    from ultra_vil import measure
    from ultra_vil.checkpoints import atomic_write
    from ultra_vil.yolo import costs as C

    if threads:
        torch.set_num_threads(threads)  # as in the training runs (Ultralytics' CPU default)
    device = torch.device(settings["device"])
    s = C.CostSettings(size=settings["img_size"], batch=settings["batch_size"], rounds=10, max_seconds=120.0,
                       latency_rounds=30, onnx=settings["onnx"], amp=device.type == "cuda")  # fmt: skip
    built = C.build({m["tag"]: m["cfg"] for m in models}, nc=max(len(names), 1), device=device)
    res = C.measure_costs(built, s, device)
    per = {}
    for tag in built:  # {kind}_min_ms / {kind}_median_ms, the keys cost_ratio reads
        entry = {"train_mem_mb": round(res["train_mem_mb"][tag], 1), "rounds_train": len(res["train"][tag]["times"]),
                 "rounds_latency": len(res["torch"][tag]["times"])}  # fmt: skip
        for kind in ("train", "torch", "onnx"):
            if tag in res[kind]:
                entry.update({f"{kind}_{stat}_ms": round(res[kind][tag][stat], 3) for stat in ("min", "median")})
        per[tag] = entry
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    how = (f"compare.py --costs, {stamp}, {measure.device_name(device)}, {torch.get_num_threads()} thread(s); one "
           f"process, every model once per round; fwd+bwd of the network at batch {s.batch}, {s.size} px, loss "
           f"excluded, min {s.min_rounds} rounds; batch-1 fused inference, {s.latency_rounds} rounds; ONNX: "
           f"{res['onnx_note']}; memory: torch's CPU allocations (profiler) or CUDA's allocator peak, one fwd+bwd")
    costs = {"settings": cost_settings(settings), "how": how, "models": per}
    atomic_write(out / COSTS_FILE, json.dumps(costs, indent=2))
    return costs


# -------------------------------------------------------------------------------------------------------- jobs
def parse_extra(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --extra expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    fixed = {"seed", "deterministic", "epochs", "imgsz", "batch", "optimizer", "lr0", "device", "workers", "data",
             "project", "name", "exist_ok", "pretrained", "resume"}  # fmt: skip
    clash = sorted(fixed & out.keys())
    if clash:
        raise SystemExit(f"error: --extra may not set {clash}: use the flags, or they are fixed by compare.py")
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

    from ultra_vil.errors import UserError

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
    from ultra_vil.errors import UserError

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


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' or 'cpu'; validates cpu / cuda / cuda:N / N (the rules of ultra_vil.measure)."""
    from ultra_vil.measure import DeviceError
    from ultra_vil.measure import resolve_device as resolve

    try:
        return str(resolve(device))  # 'cpu' or 'cuda:N': the form settings.json has always stored
    except DeviceError as e:
        raise SystemExit(f"error: {e}") from None


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
    m = re.fullmatch(r"(yolo(?:e-)?v?\d+)([nslmx]?)(.*)", yaml_path.stem)
    if not m:
        raise SystemExit(f"error: {yaml_path}: the name must start with a YOLO generation (e.g. yolov8-vil.yaml, "
                         "yolo11-vil.yaml) to be scaled")  # fmt: skip
    if m.group(2) and m.group(2) != scale:
        raise SystemExit(f"error: {yaml_path} names scale '{m.group(2)}' but --scale is '{scale}'; pass the "
                         f"unscaled YAML (e.g. {m.group(1)}{m.group(3)}.yaml)")  # fmt: skip
    stem = f"{m.group(1)}{scale}{m.group(3)}"
    scaled = yaml_path.with_name(stem + yaml_path.suffix)
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", str(scaled))
    if unified != str(yaml_path) and not scaled.exists():
        raise SystemExit(
            f"error: Ultralytics would map {scaled} to {unified}, not to {yaml_path}, because a folder in the path "
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
                raise SystemExit(f"error: {yaml_path}: ViLBackbone weights {path} not found")
            found.append(str(path))
    return found


def model_sha(yaml_path: Path) -> str:
    """The YAML's sha, plus its backbone weights' (other weights: a new run, not a skipped one)."""
    return "+".join([file_sha(yaml_path), *(file_sha(Path(w)) for w in backbone_weights(yaml_path))])


# ------------------------------------------------------------------------------------------------------ parent


def pick_models(paths: list[str], scale: str, baseline: str = "auto") -> list[dict]:
    """Stock baselines, then ViL models: {tag, cfg, yaml (None for stock), weights, baseline (ViL only)}.

    `baseline` 'auto': each ViL YAML is compared with the stock model of its own generation and the scale
    (cfg/yolo26-vil.yaml -> yolo26{scale}, cfg/yolov8-vil-p5.yaml -> yolov8{scale}); a generation name instead
    (yolov8, yolo11, yolo26) compares every ViL YAML with that one. With no ViL YAML: the stock model of that
    generation alone (yolov8{scale} for 'auto').
    """
    if baseline != "auto" and not re.fullmatch(r"yolo(?:e-)?v?\d+", baseline):
        raise SystemExit(f"error: --baseline {baseline!r}: 'auto' or a generation such as yolov8, yolo11, yolo26")
    vil = []
    for m in paths:
        path = find_file(m)
        if not path.is_file():
            raise SystemExit(f"error: --models {m}: file not found")
        tag, scaled = scaled_model(path, scale)
        base = baseline_tag(tag) if baseline == "auto" else f"{baseline}{scale}"
        if base is None:
            raise SystemExit(f"error: {path}: no YOLO generation in its name for --baseline auto")
        vil.append({"tag": tag, "cfg": str(scaled), "yaml": str(path), "weights": backbone_weights(path),
                    "baseline": base})  # fmt: skip
    alone = f"{'yolov8' if baseline == 'auto' else baseline}{scale}"  # with no ViL YAML: that stock model alone
    bases = list(dict.fromkeys([m["baseline"] for m in vil] or [alone]))
    models = [{"tag": b, "cfg": f"{b}.yaml", "yaml": None} for b in bases]
    for m in vil:
        if any(x["tag"] == m["tag"] for x in models):
            raise SystemExit(f"error: two models would both be called {m['tag']}; rename one YAML")
        models.append(m)
    return models


def run(args, argv: list[str] | None = None) -> int:
    """The whole comparison for parsed scripts/compare.py arguments: train and measure every (model, seed) that
    has no row yet, each in a fresh process, then write compare.csv / .md / .png. Returns 1 if a run failed.

    A rows/*.json that cannot be read as a run's row (cut short, not a mapping, text where a number belongs) is
    named in a warning and trained again. With --report, which trains nothing, it is an error naming the file:
    leaving the run out would change the verdicts without a word in the reports. --report builds no model either
    (preflight is for training; --costs builds them when it measures).
    """
    from ultra_vil.errors import UserError

    for flag in ("data", "out_dir"):
        if getattr(args, flag) is None:
            raise SystemExit(f"error: --{flag.replace('_', '-')} is required")
    if args.epochs < 1 or args.img_size < 32 or args.batch_size < 1 or args.latency_runs < 1:
        raise SystemExit("error: --epochs, --batch-size, --latency-runs must be >= 1 and --img-size >= 32")
    if not args.seeds:
        raise UserError("--seeds: at least one seed is needed")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"error: --seeds repeats a seed: {args.seeds}")
    extra = parse_extra(args.extra)
    device = resolve_device(args.device)
    data = find_file(args.data)
    if not data.is_file():
        raise SystemExit(f"error: --data {args.data} not found")
    out = args.out_dir.resolve()
    for sub in ("rows", "logs", "runs", "jobs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    # Models: the stock baselines first (one per generation in use, at --scale), then the ViL YAMLs at that scale.
    models = pick_models(args.models, args.scale, args.baseline)

    settings = {
        "data": stored_path(data, out), "data_sha": file_sha(data), "scale": args.scale, "epochs": args.epochs,
        "img_size": args.img_size, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr0": args.lr0,
        "device": device, "workers": args.workers, "extra": extra, "latency_runs": args.latency_runs,
        "latency_warmup": args.latency_warmup, "onnx": not args.no_onnx,
    }  # fmt: skip
    check_settings(out / "settings.json", settings)
    report_only = getattr(args, "report", False)
    if not report_only:
        preflight(data, models, args.scale)

    runs = [(m, s) for m in models for s in args.seeds]  # the reports' order
    # Training order: seed by seed (every model at seed 0, then seed 1, ...), so an interrupted study already
    # holds complete pairs. Several compare.py processes may share one --out-dir (CPU cores, GPUs): each run is
    # claimed by a lock file first, and a process skips runs that another live process holds.
    order = [] if report_only else [(m, s) for s in args.seeds for m in models]
    failed: dict[tuple[str, int], str] = {}
    busy: list[str] = []
    for i, (model, seed) in enumerate(order, start=1):
        label = f"[{i}/{len(order)}] {model['tag']} seed {seed}"
        row_file = out / "rows" / f"{model['tag']}_seed{seed}.json"
        yaml_sha = model_sha(Path(model["yaml"])) if model["yaml"] else "stock"
        held, holder = claim(out / "jobs" / f"{model['tag']}_seed{seed}.lock")  # before looking for the row:
        if held is None:  # another process may finish it in between
            print(f"{label}: running in another process ({holder}), skipped", flush=True)
            busy.append(f"{model['tag']} seed {seed}")
            continue
        try:
            if row_file.is_file():
                try:
                    saved = read_row(row_file, model["tag"], seed)
                except UserError as e:
                    print(f"warning: {e}: treated as missing, training it again", flush=True)
                else:
                    if saved.get("yaml_sha") == yaml_sha:
                        print(f"{label}: done before, skipped ({row_file.relative_to(out)})", flush=True)
                        continue
                    print(f"{label}: {model['yaml']} (or its backbone weights) changed since its row was written: "
                          "training again", flush=True)  # fmt: skip
            print(f"{label}: training {args.epochs} epoch(s) at imgsz {args.img_size} on {device} ...", flush=True)
            job = {**settings, "data": str(data), "tag": model["tag"], "cfg": model["cfg"],
                   "vil": model["yaml"] is not None, "yaml_sha": yaml_sha, "seed": seed, "out_dir": str(out),
                   "row_file": str(row_file)}  # fmt: skip
            t0 = time.time()
            ok, why = run_worker(job, out / "jobs" / f"{model['tag']}_seed{seed}.json",
                                 out / "logs" / f"{model['tag']}_seed{seed}.log", args.quiet, held)  # fmt: skip
        finally:
            held.release()
        if ok:
            try:
                row = read_row(row_file, model["tag"], seed)["row"]
            except UserError as e:
                ok, why = False, f"its row is unusable: {e}"
        if ok:
            print(f"{label}: finished in {time.time() - t0:.0f} s: mAP50 {fmt(row['map50'])}, mAP50-95 "
                  f"{fmt(row['map50_95'])}, train {fmt(row['train_s_per_epoch'])} s/epoch", flush=True)  # fmt: skip
        else:
            failed[(model["tag"], seed)] = why
            print(f"{label}: FAILED: {why}", flush=True)

    rows, notes, names, missing, threads = [], {}, [], [], None
    for model, seed in runs:
        row_file = out / "rows" / f"{model['tag']}_seed{seed}.json"
        if (model["tag"], seed) in failed:
            continue
        if not row_file.is_file():
            missing.append(f"{model['tag']} seed {seed}")
            continue
        try:
            saved = read_row(row_file, model["tag"], seed)
        except UserError as e:
            if report_only:
                raise
            print(f"warning: {e}: left out of the reports", flush=True)  # a run another process holds
            missing.append(f"{model['tag']} seed {seed}")
            continue
        rows.append(saved["row"])
        notes[(model["tag"], seed)] = saved.get("notes", {})
        names = names or saved["names"]
        threads = threads or saved.get("env", {}).get("threads")  # what the runs trained with
    if getattr(args, "costs", False):  # also with --report: it measures, but trains nothing
        costs, why = read_costs(out, settings)
        if why:
            print(why, flush=True)
        elif costs and all(m["tag"] in costs["models"] for m in models):
            print(f"costs: {out / COSTS_FILE} holds every model: not measured again (delete it to remeasure)")
        else:
            held, holder = claim(out / "jobs" / "costs.lock")
            if held is None:
                print(f"costs: being measured in another process ({holder}), skipped", flush=True)
            else:
                try:
                    if report_only:
                        preflight(data, models, args.scale)
                    print(f"costs: every model side by side, {settings['img_size']} px ...", flush=True)
                    measure_study_costs(models, settings, names or data_names(data), out, threads)
                finally:
                    held.release()
    write_csv(out / "compare.csv", rows, names)
    write_md(out / "compare.md", rows, notes, failed, models, settings, names, argv, out)
    write_png(out / "compare.png", rows, [m["tag"] for m in models])
    print(f"wrote {out / 'compare.csv'}, {out / 'compare.md'}, {out / 'compare.png'}", flush=True)
    print((out / "compare.md").read_text().split("\n## ")[0], flush=True)
    if report_only and missing:
        print(f"--report: {len(missing)} of {len(runs)} run(s) have no row yet ({', '.join(missing)}): the reports "
              "hold the others", flush=True)
    lacking = [r for r in busy if r in missing]  # a busy run whose row exists is in the reports
    if lacking:
        print(f"{len(lacking)} run(s) were in other processes ({', '.join(lacking)}): the reports lack them; run "
              "this command again once those finish", flush=True)
    return 1 if failed else 0


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


def read_row(path: Path, tag: str | None = None, seed: int | None = None) -> dict:
    """A rows/*.json as the worker writes it, checked: {"row": {...}, "names": [...], "notes": {...}, "env": {...},
    "yaml_sha": ...}, the row of `tag` and `seed` (when given) with a number or n/a in every measured column.

    Anything else raises a one-line UserError naming the file: a file cut short, a list, text where a number
    belongs would otherwise stop the study with a traceback deep in the statistics, far from the file."""
    from ultra_vil.errors import UserError

    try:
        saved = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError("not a text file: cannot be a run's row", path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path) from None
    except OSError as e:
        raise UserError(f"cannot read it: {e.strerror or e}", path) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("row"), dict):
        got = "a mapping without a 'row' mapping" if isinstance(saved, dict) else type(saved).__name__
        raise UserError(f"expected a run's row (a mapping with 'row' and 'names'), got {got}", path)
    row, names = saved["row"], saved.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"names: expected a list of class names, got {names!r}", path)
    for key in ("notes", "env"):
        if not isinstance(saved.get(key, {}), dict):
            raise UserError(f"{key}: expected a mapping, got {saved[key]!r}", path)
    if not isinstance(row.get("model"), str) or not isinstance(row.get("seed"), int) or isinstance(row["seed"], bool):
        raise UserError(f"row: expected a model name and an integer seed, got {row.get('model')!r} seed "
                        f"{row.get('seed')!r}", path)  # fmt: skip
    if tag is not None and (row["model"], row["seed"]) != (tag, seed):
        raise UserError(f"holds the row of {row['model']} seed {row['seed']}, not of {tag} seed {seed}", path)
    for col in (*COLUMNS[2:], *(f"ap50_{n}" for n in names), *(f"ap50_95_{n}" for n in names)):
        v = row.get(col)
        if v != NA and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise UserError(f"row: {col}: expected a number or {NA!r}, got {v!r}", path)
    return saved


def check_settings(path: Path, settings: dict) -> None:
    """Rows in one out-dir must come from the same settings, or the comparison would mix apples and pears.

    The data YAML counts by its content (data_sha), not its path: the same study in another clone, or a
    settings.json of an older version (which stored the absolute path of the clone it ran in), is the same study.
    The file is then rewritten with the settings of now, the data's path in the form stored_path gives."""
    if path.is_file():
        from ultra_vil.errors import UserError

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
            raise SystemExit(f"error: {path.parent} holds runs made with other settings:\n" + "\n".join(lines)
                             + "\nuse another --out-dir (or delete that one)")  # fmt: skip
    path.write_text(json.dumps(settings, indent=2) + "\n")


def preflight(data: Path, models: list[dict], scale: str) -> None:
    """Fail in seconds, not after hours: the data set is valid and every model builds at this scale."""
    from ultra_vil.data.yolo_check import check_yolo_dataset

    raw = data.read_text()
    report = check_yolo_dataset(data, decode=False)
    if not report.ok:
        if "download:" in raw and any("not found" in i.message for i in report.issues.errors):
            print(f"note: {data} is not on disk yet; Ultralytics will run its 'download' step", flush=True)
        else:
            print(report.format(20), flush=True)
            raise SystemExit(f"error: {data} has errors (above); fix them or run scripts/convert_dataset.py --check")
    elif report.issues.warnings:
        print(f"{data}: {len(report.issues.warnings)} warning(s); see scripts/convert_dataset.py --check {data}")
    if any(m["yaml"] for m in models):
        register_vil(required=True)
    from ultralytics import YOLO

    for m in models:
        try:
            model = YOLO(m["cfg"], verbose=False)
        except Exception as e:
            raise SystemExit(f"error: cannot build {m['cfg']}: {type(e).__name__}: {e}") from e
        built = model.model.yaml.get("scale")
        if m["yaml"] and "scales" not in model.model.yaml:
            print(f"warning: {m['yaml']} has no 'scales': it is built at one size whatever --scale says", flush=True)
        elif built != scale:
            raise SystemExit(f"error: {m['cfg']} was built at scale {built!r}, not {scale!r}")


def register_vil(required: bool) -> bool:
    """Import ultra_vil.yolo so that Ultralytics' parser knows the ViL modules (the .pth hook does it too)."""
    try:
        import ultra_vil.yolo  # noqa: F401
    except ImportError as e:
        if required:
            raise SystemExit(
                f"error: cannot import ultra_vil.yolo ({e}); ViL models need it. Install the package with "
                "`pip install -e .` from the repository root."
            ) from e
        return False
    return True


LOCK_MARK = "flock"  # the third word of a lock file whose holder keeps an flock on it ("PID HOST flock")


@dataclass
class RunLock:
    """The lock of one run, held: its open lock file, with an exclusive flock (fcntl.flock) on it.

    The kernel drops an flock when the last descriptor of the open file closes, so the lock is held exactly as
    long as its holder, or a job process that inherited the descriptor (run_worker passes it on), lives: no pid
    has to be asked whether it is still alive, and a killed holder frees its runs by dying.
    """

    path: Path
    fd: int

    def name(self, pid: int) -> None:
        """Record `pid` as the holder: the process that writes the run, named in other processes' messages."""
        import socket

        text = f"{pid} {socket.gethostname()} {LOCK_MARK}\n".encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, text)  # over the old text, then cut: a reader never sees the file empty
        os.ftruncate(self.fd, len(text))

    def release(self) -> None:
        """Delete the lock file, then close it. In that order: a process that opened the file before it was
        deleted gets the flock only once it is closed, and then finds the path gone (claim checks it) and starts
        again on a new file, rather than holding a lock that nobody else can see."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.path, self.fd):
                self.path.unlink()
        except PermissionError:  # Windows deletes no open file (and has no flock to keep): close first
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (not deleted, nor replaced by a new one)."""
    try:
        st, ours = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)


def _read_lock(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip()


def _holder(text: str) -> str:
    """'pid N on HOST' from a lock file's text; an empty file is a holder that has not written it yet."""
    words = text.split()
    return f"pid {words[0]} on {words[1]}" if len(words) >= 2 else "a process that is starting (empty lock file)"


def _older_holder(text: str, host: str) -> str:
    """The holder a lock file names that the flock cannot vouch for: '' when there is none.

    Called with the flock held, so a holder of this version (LOCK_MARK) is gone, and so is one that left an empty
    file (killed between creating and writing it). An older version wrote "PID HOST" and held no flock: its pid
    decides, as it did then. Another host's lock is always respected: its pid means nothing here, and not every
    network file system passes an flock between hosts (delete it by hand if that machine died)."""
    words = text.split()
    if len(words) < 2:
        return ""
    pid, where = words[0], words[1]
    if where != host:
        return f"pid {pid} on {where}"
    if len(words) >= 3 and words[2] == LOCK_MARK:
        return ""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return ""
    except PermissionError:  # alive, another user's
        pass
    return f"pid {pid} on {where}"


def claim(lock: Path) -> tuple[RunLock | None, str]:
    """Take the lock file of one run for this process: (the held lock, "") when taken, else (None, who holds it:
    "pid N on HOST").

    The lock is an flock on the file (see RunLock), taken without waiting, and the file's text only says who holds
    it. That makes a take-over atomic: of the processes that find a stale lock, the kernel gives the flock to one,
    and the others are refused. (Reading the holder's pid, asking whether it lives, deleting the file and creating
    a new one are four steps another process can come between: it deleted a lock that had just been taken, and
    two processes trained one run into one folder.) A lock is free when nobody holds its flock, whatever pid its
    file names (a pid can be reused), except that a lock written by an older version of compare.py (no flock) is
    respected while its pid lives, and a lock from another host always (_older_holder).

    Without fcntl (Windows) the lock file is created exclusively and never taken over: delete a stale one by hand.
    """
    import socket

    host = socket.gethostname()
    try:
        import fcntl
    except ImportError:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None, f"{_holder(lock.read_text(errors='replace'))}; if that process died, delete {lock}"
        held = RunLock(lock, fd)
        held.name(os.getpid())
        return held, ""
    for _ in range(20):
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            text = _read_lock(fd)
            os.close(fd)
            return None, _holder(text)
        except OSError as e:
            os.close(fd)
            from ultra_vil.errors import UserError

            raise UserError(f"cannot lock the run's lock file: {e.strerror or e} (the file system of --out-dir "
                            "does not support flock?)", lock) from None  # fmt: skip
        if not _same_file(lock, fd):  # its holder deleted it after we opened it: try again on the new file
            os.close(fd)
            continue
        older = _older_holder(_read_lock(fd), host)
        if older:
            os.close(fd)
            return None, older
        held = RunLock(lock, fd)
        held.name(os.getpid())
        return held, ""
    return None, f"a lock at {lock} that keeps changing"


def run_worker(job: dict, job_file: Path, log_file: Path, quiet: bool,
               lock: RunLock | None = None) -> tuple[bool, str]:  # fmt: skip
    """Run one job in a fresh Python process; its output goes to log_file (and the console unless quiet).

    The job process is tied to this one: it inherits the run's `lock`, which from then on names it (it writes the
    run) and stays held while it lives, even if this process is gone; it is told this process's pid and dies with
    it (die_with_parent). If this process stops here (Ctrl-C, an error), the job process is killed and waited for
    before the caller releases the lock, so no other process can start the run while this one still writes it.
    """
    job = {**job, "parent_pid": os.getpid()}
    job_file.write_text(json.dumps(job, indent=2))
    Path(job["row_file"]).unlink(missing_ok=True)
    for stale in (f"{job['tag']}_seed{job['seed']}", f"{job['tag']}_seed{job['seed']}_val"):
        shutil.rmtree(Path(job["out_dir"]) / "runs" / stale, ignore_errors=True)  # an interrupted run starts afresh
    cmd = [sys.executable, "-m", "ultra_vil.yolo.compare", "--worker", str(job_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(lock.fd,) if lock is not None else ())  # fmt: skip
        try:
            if lock is not None:
                lock.name(proc.pid)
            while chunk := proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
                log.write(chunk)
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc == 0 and Path(job["row_file"]).is_file():
        return True, ""
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    return False, f"exit status {rc}; see {log_file}: " + " | ".join(x.strip()[:200] for x in tail)


def die_with_parent(parent: int, poll_s: float = 1.0) -> str:
    """Make this process (a job) exit when `parent`, the compare.py process that started it, dies: "prctl" or
    "poll", how.

    An orphaned job would go on training while a rerun, finding its parent gone, takes the run over and deletes
    the run folder the orphan writes into. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) through ctypes, the kernel's
    own notice (sent when the thread that started this process ends: compare.py starts jobs from its main
    thread). Elsewhere, or where prctl fails: a daemon thread that polls os.getppid() every `poll_s` seconds and
    exits once it has changed (an orphan is given a new parent). If this process's parent is not `parent` to begin
    with, a launcher stands between them (an interpreter wrapper that does not exec) or `parent` is gone already:
    the thread then polls whether `parent` lives. Either way the parent is checked once more right after, for one
    that died before the watch was set up.
    """
    if os.getppid() == parent:
        def alive() -> bool:
            return os.getppid() == parent

        how = "prctl" if _set_pdeathsig(signal.SIGKILL) else "poll"
    else:
        def alive() -> bool:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # alive, another user's
                pass
            return True

        how = "poll"
    if how == "poll":
        import threading

        def watch() -> None:
            while alive():
                time.sleep(poll_s)
            os._exit(1)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    if not alive():
        os._exit(1)
    return how


def _set_pdeathsig(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) for this process; False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        return False


def worker_main(job_file: str) -> int:
    """The job process (`python -m ultra_vil.yolo.compare --worker JOB.json`, started by run_worker): tied to
    its parent first, then `worker`."""
    job = json.loads(Path(job_file).read_text())
    if job.get("parent_pid"):
        die_with_parent(int(job["parent_pid"]))
    return worker(job)


# ------------------------------------------------------------------------------------------------------ worker
def worker(job: dict) -> int:
    """Train, validate and time one (model, seed). Writes job['row_file'] last, atomically."""
    import torch

    from ultra_vil import measure

    if job["vil"]:
        register_vil(required=True)
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    out = Path(job["out_dir"])
    name = f"{job['tag']}_seed{job['seed']}"
    yolo_device = measure.ultralytics_device(job["device"])
    notes: dict[str, str] = {}

    model = YOLO(job["cfg"])
    epoch_times, t_start = [], [0.0]
    model.add_callback("on_train_epoch_start", lambda trainer: t_start.__setitem__(0, time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda trainer: epoch_times.append(time.perf_counter() - t_start[0]))
    # CUDA: allocator peak above the start; CPU: the process's peak RSS (VmHWM, reset here) above its RSS now
    with measure.peak_memory(job["device"]) as peak_mem:
        model.train(
            data=job["data"], epochs=job["epochs"], imgsz=job["img_size"], batch=job["batch_size"], seed=job["seed"],
            deterministic=True, optimizer=job["optimizer"], lr0=job["lr0"], device=yolo_device,
            workers=job["workers"], project=str(out / "runs"), name=name, exist_ok=True, pretrained=False,
            **{"plots": False, "val": False, **job["extra"]},  # --extra val=True: a val curve in results.csv
        )  # fmt: skip
    peak = peak_mem.mb
    save_dir = Path(model.trainer.save_dir)
    last = save_dir / "weights" / "last.pt"

    trained = YOLO(last).model.float()  # the model as trained (nc of the data set), before BN fusion
    params = sum(p.numel() for p in trained.parameters())
    gflops = get_flops(trained, job["img_size"])
    if not gflops:
        gflops, notes["gflops"] = NA, "Ultralytics' get_flops (thop) failed on this model"

    metrics = YOLO(last).val(
        data=job["data"], imgsz=job["img_size"], batch=job["batch_size"], device=yolo_device, workers=job["workers"],
        split="val", plots=False, project=str(out / "runs"), name=f"{name}_val", exist_ok=True,
    )  # fmt: skip
    box = metrics.box
    names = [metrics.names[i] for i in sorted(metrics.names)]
    row: dict[str, Any] = {
        "model": job["tag"], "seed": job["seed"], "params": params, "gflops": round(gflops, 4) if gflops != NA else NA,
        "map50": float(box.map50), "map50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
    }  # fmt: skip

    # Latency, batch 1: the fused fp32 model's forward (no pre/post-processing, no NMS), median after warm-up.
    torch.manual_seed(0)
    x = torch.rand(1, 3, job["img_size"], job["img_size"])
    net = YOLO(last).model.float().fuse().eval().to(job["device"])
    row["latency_ms_torch"] = round(time_ms(lambda: net(x.to(job["device"])), job), 3)
    if not job["onnx"]:
        row["latency_ms_onnx"], notes["latency_ms_onnx"] = NA, "not measured (--no-onnx)"
    else:
        row["latency_ms_onnx"], why = onnx_latency(last, x.numpy(), job)
        if why:
            notes["latency_ms_onnx"] = why

    row["train_s_per_epoch"] = round(statistics.median(epoch_times), 3) if epoch_times else NA
    if not epoch_times:
        notes["train_s_per_epoch"] = "no epoch finished"
    row["peak_mem_mb"] = round(peak, 1) if peak is not None else NA
    if peak is None:
        notes["peak_mem_mb"] = "no peak-RSS reading on this OS (needs Linux /proc)"
    present = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for c, n in enumerate(names):
        row[f"ap50_{n}"] = float(box.all_ap[present[c], 0]) if c in present else NA
    for c, n in enumerate(names):
        row[f"ap50_95_{n}"] = float(box.all_ap[present[c]].mean()) if c in present else NA
    absent = [n for c, n in enumerate(names) if c not in present]
    if absent:
        notes["per_class"] = f"no val instances of {absent}: their AP is n/a"

    env = {
        "torch": torch.__version__, "ultralytics": __import__("ultralytics").__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "device_name": measure.device_name(torch.device(job["device"])),
        "epochs_timed": len(epoch_times), "save_dir": str(save_dir),
    }  # fmt: skip
    saved = {"row": row, "notes": notes, "names": names, "yaml_sha": job["yaml_sha"], "env": env}
    from ultra_vil.checkpoints import atomic_write

    atomic_write(job["row_file"], json.dumps(saved, indent=2))
    return 0


def time_ms(fn, job: dict) -> float:
    """Median batch-1 latency in ms after the job's warm-up runs (ultra_vil.measure, CUDA synchronised)."""
    import torch

    from ultra_vil import measure

    with torch.inference_mode():
        return measure.time_ms(fn, job["device"], warmup=job["latency_warmup"], repeat=job["latency_runs"])


def onnx_latency(last: Path, x, job: dict) -> tuple[float | str, str]:
    """(median ms, "") or (n/a, why): Ultralytics' ONNX export of last.pt, run by ONNX Runtime on the CPU."""
    try:
        import onnxruntime as ort
        import torch
        from ultralytics import YOLO

        onnx_file = YOLO(last).export(format="onnx", imgsz=job["img_size"], device="cpu", dynamic=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same threads as the PyTorch CPU timing
        session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(job["latency_warmup"]):
            session.run(None, feed)
        times = []
        for _ in range(job["latency_runs"]):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        return round(statistics.median(times), 3), ""
    except Exception as e:  # export or runtime failure: report it, keep the rest of the row
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = msg if len(msg) <= 200 else msg[:200] + " ..."
        return NA, f"ONNX export or ONNX Runtime failed ({type(e).__name__}: {msg}); the full error is in the run's log"


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_csv(path: Path, rows: list[dict], names: list[str]) -> None:
    columns = COLUMNS + [f"ap50_{n}" for n in names] + [f"ap50_95_{n}" for n in names]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, NA) for c in columns})


def mean_std(values: list) -> tuple[float | None, float | None, int]:
    nums = [float(v) for v in values if v != NA and v != ""]
    if not nums:
        return None, None, 0
    return statistics.fmean(nums), (statistics.stdev(nums) if len(nums) > 1 else None), len(nums)


def cell(values: list, digits: int = 3, scale: float = 1.0) -> str:
    mean, std, n = mean_std(values)
    if mean is None:
        return NA
    text = f"{mean * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    if n < len(values):
        text += f" ({n} of {len(values)})"
    return text


TABLE = [  # (column, header, digits, scale)
    ("params", "params (M)", 2, 1e-6), ("gflops", "GFLOPs", 2, 1.0), ("map50", "mAP50", 3, 1.0),
    ("map50_95", "mAP50-95", 3, 1.0), ("precision", "precision", 3, 1.0), ("recall", "recall", 3, 1.0),
    ("latency_ms_torch", "latency PyTorch (ms)", 1, 1.0), ("latency_ms_onnx", "latency ONNX RT CPU (ms)", 1, 1.0),
    ("train_s_per_epoch", "train (s/epoch)", 1, 1.0), ("peak_mem_mb", "peak mem (MB)", 0, 1.0),
]  # fmt: skip


def write_md(path: Path, rows, notes, failed, models, settings, names, argv, out: Path) -> None:
    by_model = {m["tag"]: [r for r in rows if r["model"] == m["tag"]] for m in models}
    env = {}
    for row in rows[:1]:
        env = json.loads((out / "rows" / f"{row['model']}_seed{row['seed']}.json").read_text()).get("env", {})
    cuda = settings["device"].startswith("cuda")
    data_name = Path(settings["data"]).name
    data_shown = settings["data"]  # stored_path's form: relative to the repository when inside it
    if REPO is not None and Path(data_shown).is_absolute() and Path(data_shown).is_relative_to(REPO):
        data_shown = os.path.relpath(data_shown, REPO)
    split_counts = _split_counts(stored_file(settings["data"], out))
    pretrained = ", ".join(f"{m['tag']} `{w}`" for m in models for w in m.get("weights") or [])
    pairs = [(m["tag"], m.get("baseline") or models[0]["tag"]) for m in models if m.get("yaml", "") is not None
             and m["tag"] != (m.get("baseline") or models[0]["tag"])]  # fmt: skip
    comparisons = [compare_pair(rows, v, b) for v, b in pairs if by_model.get(v) and by_model.get(b)]
    lines = [
        f"# ViL vs stock YOLO at scale {settings['scale']} on {data_name}",
        "",
        *verdict_lines(comparisons, read_costs(out, settings)[0]),
        "## Runs",
        "",
        f"Data: `{data_shown}`{split_counts}, {len(names)} class(es). "
        + (f"Pretrained ViL backbone weights: {pretrained}; everything else from scratch, " if pretrained else
           "From scratch (no pretrained weights), ")
        + f"{settings['epochs']} epoch(s), imgsz {settings['img_size']}, batch {settings['batch_size']}, "
        f"{settings['optimizer']} lr0={settings['lr0']}, deterministic, seeds "
        f"{sorted({r['seed'] for r in rows})}; other train settings Ultralytics' defaults"
        + (f" except {settings['extra']}" if settings["extra"] else "") + ". "
        f"Device: {settings['device']} ({env.get('device_name', '?')}; PyTorch CPU threads: {env.get('threads', '?')}, "
        "as Ultralytics sets them: min(8, cores - 1)); "
        f"torch {env.get('torch', '?')}, ultralytics {env.get('ultralytics', '?')}.",
        "",
        "| model | " + " | ".join(h for _, h, _, _ in TABLE) + " |",
        "|---" * (len(TABLE) + 1) + "|",
    ]  # fmt: skip
    for tag, rs in by_model.items():
        if rs:
            lines.append(f"| {tag} | " + " | ".join(cell([r[c] for r in rs], d, s) for c, h, d, s in TABLE) + " |")
        else:
            lines.append(f"| {tag} | " + " | ".join("failed" for _ in TABLE) + " |")
    n_seeds = max((len(rs) for rs in by_model.values()), default=0)
    lines += [
        "",
        f"Mean ± sample std over {n_seeds} seed(s)" + (" (one seed: no std)" if n_seeds == 1 else "") + ". "
        "`n/a`: see below.",
    ]
    for v, b in pairs:
        rs, stock = by_model.get(v, []), by_model.get(b, [])
        if rs and stock:
            def mean(col, runs):
                return mean_std([r[col] for r in runs])[0]

            dm = (mean("map50_95", rs) or 0) - (mean("map50_95", stock) or 0)
            ratio = mean("params", rs) / mean("params", stock)
            lines.append(f"- {v} − {b}: mean mAP50-95 {dm:+.3f}, params {ratio:.2f}x (verdicts above).")
    cmd = "python scripts/compare.py " + " ".join(_quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines += ["", f"Reproduce by: `{cmd}`", ""]

    lines += [
        "## How each column was measured",
        "- **mAP50, mAP50-95, precision, recall**: Ultralytics `val` of `last.pt` (EMA weights after the last "
        "epoch; no checkpoint is chosen on the val split) on the data set's `val` split, imgsz "
        f"{settings['img_size']}, batch {settings['batch_size']}, Ultralytics' defaults (conf 0.001, IoU 0.7).",
        f"- **params, GFLOPs**: the model as built from its YAML (before BN fusion); GFLOPs at "
        f"{settings['img_size']}x{settings['img_size']} by Ultralytics' `get_flops` (thop).",
        f"- **latency**: batch 1, {settings['img_size']}x{settings['img_size']}, forward pass only of the fused fp32 "
        f"model (no pre-processing, no NMS), median of {settings['latency_runs']} runs after "
        f"{settings['latency_warmup']} warm-up runs. PyTorch on {settings['device']}; ONNX Runtime "
        "(CPUExecutionProvider) on the CPU with as many threads as PyTorch uses, on the ONNX file that "
        "Ultralytics' exporter writes from last.pt.",
        "- **train (s/epoch)**: median over epochs of the training loop alone (from Ultralytics' "
        "`on_train_epoch_start` to `on_train_epoch_end`; validation and checkpointing excluded).",
        ("- **peak mem**: `torch.cuda.max_memory_allocated` during training minus what was allocated before it "
         "(CUDA tensors only)." if cuda else
         "- **peak mem**: CPU run, so no CUDA memory: the training process's peak resident memory (Linux VmHWM, "
         "reset just before training) minus its resident memory then; dataloader worker processes "
         f"(--workers {settings['workers']}) are not included."),
        "",
    ]  # fmt: skip
    na_lines = []
    for (tag, seed), ns in notes.items():
        for col, why in ns.items():
            na_lines.append(f"- {tag} seed {seed}, `{col}`: {why}")
    na_lines += checkpoint_gaps(rows, out)
    if na_lines:
        lines += ["## Notes and `n/a` values", *na_lines, ""]
    if failed:
        lines += ["## Failed runs (no row; rerun the same command to retry them)"]
        lines += [f"- {tag} seed {seed}: {why}" for (tag, seed), why in failed.items()] + [""]
    if names and rows:
        lines += ["## AP50-95 per class (mean over seeds)", "", "| model | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]  # fmt: skip
        for tag, rs in by_model.items():
            if rs:
                lines.append(f"| {tag} | " + " | ".join(cell([r[f'ap50_95_{n}'] for r in rs]) for n in names) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


CHECKPOINT_GAP = 0.02  # mAP50-95: last.pt vs the trainer's own final validation, beyond float16 rounding


def checkpoint_gaps(rows: list[dict], out: Path) -> list[str]:
    """Runs whose last.pt scores far from the trainer's final validation of the same weights (results.csv, last
    row). Ultralytics validates its fp32 EMA model but saves it in float16; a tensor beyond float16's range (65504)
    saturates in the file and the reloaded model differs (scripts/checkpoint_range.py names such tensors)."""
    lines = []
    for r in rows:
        csv_file = out / "runs" / f"{r['model']}_seed{r['seed']}" / "results.csv"
        if not csv_file.is_file() or r["map50_95"] in (NA, ""):
            continue
        with open(csv_file, newline="") as f:
            last = (list(csv.DictReader(f)) or [{}])[-1]
        trainer = _number({k.strip(): v for k, v in last.items()}.get("metrics/mAP50-95(B)"))
        if trainer and abs(float(r["map50_95"]) - trainer) > CHECKPOINT_GAP:
            lines.append(f"- {r['model']} seed {r['seed']}: last.pt scores mAP50-95 {float(r['map50_95']):.3f}, but the "
                         f"trainer's final validation of the same run read {trainer:.3f} (its fp32 EMA model; last.pt "
                         "holds it in float16): run scripts/checkpoint_range.py on the run's weights for tensors "
                         "beyond float16's range")  # fmt: skip
    return lines


def data_names(data: Path) -> list[str]:
    """The class names of a data YAML (the costs' nc before any run has finished)."""
    from ultra_vil.data.yolo_check import read_data_yaml

    return read_data_yaml(data).names


def _split_counts(data: Path) -> str:
    try:
        from ultra_vil.data.yolo_check import read_data_yaml

        spec = read_data_yaml(data)
        return " (" + ", ".join(f"{len(v)} {k}" for k, v in spec.splits.items()) + " images)"
    except Exception:
        return ""


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./:=+-]+", a) else json.dumps(a)


def write_png(path: Path, rows: list[dict], tags: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("map50", "mAP50"), ("map50_95", "mAP50-95"), ("precision", "precision"), ("recall", "recall"),
              ("latency_ms_torch", "latency PyTorch (ms)"), ("latency_ms_onnx", "latency ONNX RT CPU (ms)"),
              ("train_s_per_epoch", "train (s/epoch)"), ("peak_mem_mb", "peak mem (MB)"),
              ("params", "params (M)"), ("gflops", "GFLOPs")]  # fmt: skip
    fig, axes = plt.subplots(2, 5, figsize=(18, 6.5))
    colors = ["#7f7f7f"] + [plt.cm.tab10(i) for i in range(10)]
    for ax, (col, title) in zip(axes.flat, panels):
        scale = 1e-6 if col == "params" else 1.0
        for i, tag in enumerate(tags):
            mean, std, _ = mean_std([r[col] for r in rows if r["model"] == tag])
            if mean is None:
                ax.text(i, 0, NA, ha="center", va="bottom")
                continue
            ax.bar(i, mean * scale, yerr=None if std is None else std * scale, color=colors[i % len(colors)], capsize=4,
                   alpha=0.45)  # fmt: skip
            pts = [(int(r["seed"]), float(r[col]) * scale) for r in rows if r["model"] == tag and r[col] != NA]
            for k, (_, y) in enumerate(sorted(pts)):  # every seed as a point, spread a little sideways
                ax.plot(i + (k - (len(pts) - 1) / 2) * 0.08, y, "o", color="black", markersize=3.5)
        ax.set_title(title)
        ax.set_xticks(range(len(tags)), tags, rotation=20, ha="right", fontsize=8)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"stock YOLO vs ViL: bars = mean over {n} seed(s), error bars = std, points = single seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":  # a job process: python -m ultra_vil.yolo.compare --worker JOB.json
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit("usage: python -m ultra_vil.yolo.compare --worker JOB.json (started by scripts/compare.py)")
    sys.exit(worker_main(sys.argv[2]))
