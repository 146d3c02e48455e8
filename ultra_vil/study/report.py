"""The reports of a study: rows, compare.csv, compare.md (verdicts first), compare.png."""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from ultra_vil.errors import UserError
from ultra_vil.study.costs import cost_lines, read_costs
from ultra_vil.study.models import REPO
from ultra_vil.study.protocol import stored_file
from ultra_vil.study.stats import COLUMNS, CONFIDENCE, COST_COLUMNS, Comparison, NA, _number, compare_pair


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


def read_row(path: Path, tag: str | None = None, seed: int | None = None) -> dict:
    """A rows/*.json as the worker writes it, checked: {"row": {...}, "names": [...], "notes": {...}, "env": {...},
    "yaml_sha": ...}, the row of `tag` and `seed` (when given) with a number or n/a in every measured column.

    Anything else raises a one-line UserError naming the file: a file cut short, a list, text where a number
    belongs would otherwise stop the study with a traceback deep in the statistics, far from the file."""

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
    """compare.md: the verdicts, the runs (settings and the mean ± std table), how each column was measured, then
    the notes, the failed runs and the per-class AP, each section from its own helper."""
    by_model = {m["tag"]: [r for r in rows if r["model"] == m["tag"]] for m in models}
    pairs = [(m["tag"], m.get("baseline") or models[0]["tag"]) for m in models if m.get("yaml", "") is not None
             and m["tag"] != (m.get("baseline") or models[0]["tag"])]  # fmt: skip
    comparisons = [compare_pair(rows, v, b) for v, b in pairs if by_model.get(v) and by_model.get(b)]
    lines = [
        f"# ViL vs stock YOLO at scale {settings['scale']} on {Path(settings['data']).name}",
        "",
        *verdict_lines(comparisons, read_costs(out, settings)[0]),
        *_runs_section(rows, models, settings, names, out, by_model, pairs, argv),
        *_measured_section(settings),
        *_notes_sections(rows, notes, failed, out),
        *_per_class_section(names, rows, by_model),
    ]
    path.write_text("\n".join(lines))


def _runs_section(rows, models, settings, names, out: Path, by_model: dict, pairs: list, argv) -> list[str]:
    """compare.md's "Runs": the data and settings, the mean ± std table, each pair's mean difference, the command."""
    env = {}
    for row in rows[:1]:
        env = json.loads((out / "rows" / f"{row['model']}_seed{row['seed']}.json").read_text()).get("env", {})
    data_shown = settings["data"]  # stored_path's form: relative to the repository when inside it
    if REPO is not None and Path(data_shown).is_absolute() and Path(data_shown).is_relative_to(REPO):
        data_shown = os.path.relpath(data_shown, REPO)
    split_counts = _split_counts(stored_file(settings["data"], out))
    pretrained = ", ".join(f"{m['tag']} `{w}`" for m in models for w in m.get("weights") or [])
    lines = [
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
    return lines + ["", f"Reproduce by: `{cmd}`", ""]


def _measured_section(settings: dict) -> list[str]:
    """compare.md's "How each column was measured", with the study's sizes, runs and device filled in."""
    cuda = settings["device"].startswith("cuda")
    return [
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


def _notes_sections(rows: list[dict], notes: dict, failed: dict, out: Path) -> list[str]:
    """compare.md's "Notes and `n/a` values" (the workers' notes, checkpoint gaps) and "Failed runs", when any."""
    lines, na_lines = [], []
    for (tag, seed), ns in notes.items():
        for col, why in ns.items():
            na_lines.append(f"- {tag} seed {seed}, `{col}`: {why}")
    na_lines += checkpoint_gaps(rows, out)
    if na_lines:
        lines += ["## Notes and `n/a` values", *na_lines, ""]
    if failed:
        lines += ["## Failed runs (no row; rerun the same command to retry them)"]
        lines += [f"- {tag} seed {seed}: {why}" for (tag, seed), why in failed.items()] + [""]
    return lines


def _per_class_section(names: list[str], rows: list[dict], by_model: dict) -> list[str]:
    """compare.md's per-class AP50-95 table (mean over seeds), when there are classes and rows."""
    if not (names and rows):
        return []
    lines = ["## AP50-95 per class (mean over seeds)", "", "| model | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for tag, rs in by_model.items():
        if rs:
            lines.append(f"| {tag} | " + " | ".join(cell([r[f'ap50_95_{n}'] for r in rs]) for n in names) + " |")
    return lines + [""]


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
