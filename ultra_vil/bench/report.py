"""The benchmark's report: one CSV row per contender and size, the targets table, the mixers-vs-attention table,
benchmark.md and benchmark.png, benchmark.csv read back, and the merge of several runs into one report.

scripts/benchmark.py measures and writes through this module; scripts/readme_tables.py builds the README's tables
from a committed benchmark.csv with the same functions, so the README and benchmark.md cannot disagree.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ultra_vil.mlstm.dispatch import read_dispatch, write_dispatch

SECTIONS = ("mlstm", "dispatch", "block", "classifier", "yolo")
FIELDS = ["section", "name", "x", "min_ms", "median_ms", "rounds", "peak_mem_mb", "throughput", "vs", "ratio_min",
          "ratio_median", "note"]  # fmt: skip


def row(section, name, x, res=None, mem=None, thr=None, vs="", ratio=None, note=""):
    """One CSV row (FIELDS); `res` is a compare_interleaved entry, `ratio` (min/min, median/median) against `vs`.
    Numbers are rounded (ms to 3 places, img/s to 2); a missing or non-finite one is an empty cell."""
    fmt = lambda v, d: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v, d)
    return dict(section=section, name=name, x=x, min_ms=fmt(res and res["min"], 3),
                median_ms=fmt(res and res["median"], 3), rounds=len(res["times"]) if res else "",
                peak_mem_mb=fmt(mem, 3), throughput=fmt(thr, 2), vs=vs, ratio_min=fmt(ratio and ratio[0], 3),
                ratio_median=fmt(ratio and ratio[1], 3), note=note)  # fmt: skip


def _get(rows, section, name, x=None):
    for r in rows:
        if r["section"] == section and r["name"] == name and (x is None or r["x"] == x) and r["min_ms"] != "":
            return r
    return None


def targets(rows) -> list[tuple[str, str, str, str]]:
    """(measured, min ratio, median ratio, target and verdict) for each row of the targets table that was run."""
    out = []

    def verdict(value, limit, at_most=True):
        ok = value <= limit if at_most else value >= limit
        return "met" if ok else "missed"

    def add(what, r_min, r_med, limit, at_most=True, fmt="{:.2f}x"):
        target = f"{'<=' if at_most else '>='} {limit}x"
        out.append((what, fmt.format(r_min), fmt.format(r_med),
                    f"{target}: {verdict(r_min, limit, at_most)} (min), {verdict(r_med, limit, at_most)} (median)"))

    for px, limit in ((320, 1.5), (640, 1.0), (1280, 0.5)):
        r = _get(rows, "block", "vil_pair", px)
        if r:
            add(f"ViLBlockPair(256) vs transformer layer, fwd+bwd time, {(px // 16) ** 2} tokens ({px} px)",
                r["ratio_min"], r["ratio_median"], limit)
    mem = []
    for r in rows:
        t = _get(rows, "block", "transformer_layer", r["x"]) if r["section"] == "block" else None
        if r["name"] == "vil_pair" and r["peak_mem_mb"] != "" and t and t["peak_mem_mb"]:
            mem.append((r["x"], r["peak_mem_mb"] / t["peak_mem_mb"]))
    if mem:
        worst = max(m for _, m in mem)
        out.append(("same, peak memory, worst size (" + ", ".join(f"{px} px {m:.2f}x" for px, m in mem) + ")",
                    f"{worst:.2f}x", f"{worst:.2f}x", f"<= 2.5x: {verdict(worst, 2.5)}"))
    for step, what in (("train", "training step (fwd + bwd + AdamW)"), ("infer", "inference")):
        for other in ("official", "baseline"):
            r, o = _get(rows, "classifier", f"ours_{step}"), _get(rows, "classifier", f"{other}_{step}")
            if r and o:
                s_min, s_med = o["min_ms"] / r["min_ms"], o["median_ms"] / r["median_ms"]
                target = 1.3 if other == "official" else None
                label = f"ViL-T {what}, {r['x']} px, speed-up vs {other}"
                label += " (0.1.0)" if other == "baseline" else ""
                if target:
                    add(label, s_min, s_med, target, at_most=False)
                else:
                    out.append((label, f"{s_min:.2f}x", f"{s_med:.2f}x", "(>= 1.3x official is about 1.3-1.5x this)"))
    for name, what, limit in (("yolov8n-vil_torch", "batch-1 fused inference, PyTorch", 1.15),
                              ("yolov8n-vil_onnx", "batch-1 fused inference, ONNX Runtime", 1.15),
                              ("yolov8n-vil_train", "fwd+bwd time", 1.15)):  # fmt: skip
        r = _get(rows, "yolo", name)
        if r:
            add(f"YOLOv8n-ViL vs YOLOv8n, {what}", r["ratio_min"], r["ratio_median"], limit)
    r, s = _get(rows, "yolo", "yolov8n-vil_train"), _get(rows, "yolo", "yolov8n_train")
    if r and s and s["peak_mem_mb"]:
        m = r["peak_mem_mb"] / s["peak_mem_mb"]
        out.append(("YOLOv8n-ViL vs YOLOv8n, fwd+bwd peak memory", f"{m:.2f}x", f"{m:.2f}x",
                    f"<= 1.25x: {verdict(m, 1.25)}"))
    autos = [r for r in rows if r["section"] == "dispatch" and r["name"].startswith("auto ") and r["ratio_min"] != ""]
    choices = [c for r in autos if (c := auto_choice_row(rows, r))]
    if choices:
        add("mLSTM `auto`'s choice vs the fastest backend, worst S of the grid", max(c["ratio_min"] for c in choices),
            max(c["ratio_median"] for c in choices), 1.1)  # fmt: skip
    if autos:  # the same code as its choice, timed once more: the gap to the choice's own time is noise
        add("same, `auto` timed itself (adds the noise of a second measurement)", max(r["ratio_min"] for r in autos),
            max(r["ratio_median"] for r in autos), 1.1)  # fmt: skip
    return out


def mixer_table(sec: list[dict]) -> list[str]:
    """Where each mixer's slot unit is cheaper than attention: time (min/min of the same interleaved rounds) and
    peak-memory ratios against the reference transformer layer (dropout 0.1) and, when measured, the dropout-0 one."""
    sizes = sorted({r["x"] for r in sec})
    refs = [(n, label) for n, label in (("transformer_layer", "the transformer layer (PyTorch default, dropout "
            "0.1)"), ("transformer_layer_p0", "the same layer with dropout 0 (SDPA's fused path)"))
            if any(r["name"] == n for r in sec)]  # fmt: skip
    names = [n for n in dict.fromkeys(r["name"] for r in sec) if not n.startswith("transformer_layer")]
    lines = []
    for ref, label in refs:
        lines += [f"Each mixer against {label}; time min/min, memory peak/peak, < 1 = cheaper than attention:", "",
                  "| mixer | " + " | ".join(f"{px} px ({(px // 16) ** 2} tok)" for px in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]  # fmt: skip
        for name in names:
            cells = []
            for px in sizes:
                r, t = _get(sec, "block", name, px), _get(sec, "block", ref, px)
                if not (r and t):
                    cells.append("n/a")
                    continue
                mem = r["peak_mem_mb"] / t["peak_mem_mb"] if r["peak_mem_mb"] and t["peak_mem_mb"] else float("nan")
                cells.append(f"time {r['min_ms'] / t['min_ms']:.2f}x, memory {mem:.2f}x")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def auto_choice_row(rows, auto_row) -> dict | None:
    """The dispatch row of the backend that `auto` ran at the same S and dtype (from the note "-> backend ...")."""
    note = auto_row["note"]
    if not note.startswith("-> "):
        return None
    chosen = note[3:].split(" ")[0]
    return _get(rows, "dispatch", f"{chosen} {auto_row['name'][5:]}", auto_row["x"])


def write_outputs(rows, out_dir: Path, header: str, notes: list[str], dispatch: dict | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "benchmark.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Benchmark ({header})", "",
             "Interleaved rounds (A, B, A, B, ...), so contenders share the machine's noise; ratios are min/min and "
             "median/median. Time ratio < 1: faster than the reference; speed-up > 1: faster.", ""]  # fmt: skip
    tgt = targets(rows)
    if tgt:
        lines += ["## Targets", "", "| measured | min ratio | median ratio | target |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in tgt] + [""]
    if notes:
        lines += ["Notes: " + "; ".join(notes), ""]
    for section in SECTIONS:
        sec = [r for r in rows if r["section"] == section]
        if not sec:
            continue
        lines += [f"## {section}", "", "| name | x | min ms | median ms | rounds | peak MiB | img/s | vs | ratio min | "
                  "ratio median | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += ["| " + " | ".join(str(r[k]) for k in FIELDS[1:]) + " |" for r in sec]
        lines.append("")
        if section == "dispatch":
            lines += ["`auto` (the package table as loaded) against the fastest backend at each S: its choice's time "
                      "over the fastest's, and `auto` timed itself (the same code once more: the difference is noise)",
                      "", "| dtype | S | auto ran | fastest | choice min | choice median | within 10% | auto itself "
                      "min | auto itself median |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for r in sec:
                c = auto_choice_row(rows, r) if r["name"].startswith("auto ") and r["ratio_min"] != "" else None
                if c:
                    ok = "yes" if c["ratio_min"] <= 1.1 else "no"
                    lines.append(f"| {r['name'][5:]} | {r['x']} | {c['name'].split(' ')[0]} | {r['vs'][9:-1]} | "
                                 f"{c['ratio_min']} | {c['ratio_median']} | {ok} (min) | {r['ratio_min']} | "
                                 f"{r['ratio_median']} |")  # fmt: skip
            lines.append("")
        if section == "block":
            lines += mixer_table(sec)
        if section == "dispatch" and dispatch:
            lines += ["Measured thresholds (`mlstm_dispatch.json`):", "", "```json",
                      json.dumps(dispatch, indent=2), "```", ""]  # fmt: skip
    text = "\n".join(lines)
    (out_dir / "benchmark.md").write_text(text)
    print(text)
    plot(rows, out_dir / "benchmark.png")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for col, (section, xlabel) in enumerate([("mlstm", "sequence length S"), ("block", "image side (px), stride 16")]):
        sec = [r for r in rows if r["section"] == section and r["min_ms"] != ""]
        for name in dict.fromkeys(r["name"] for r in sec):
            pts = [(r["x"], r["min_ms"], r["peak_mem_mb"]) for r in sec if r["name"] == name]
            xs = [p[0] for p in pts]
            axes[0, col].plot(xs, [p[1] for p in pts], "o-", label=name)
            axes[1, col].plot(xs, [max(p[2] or 0, 1e-3) for p in pts], "o-", label=name)
        for r, ylabel in ((0, "fwd+bwd time, min over rounds (ms)"), (1, "peak memory (MiB)")):
            ax = axes[r, col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        axes[0, col].set_title(section)
    for r, section in ((0, "classifier"), (1, "yolo")):
        ax = axes[r, 2]
        sec = [x for x in rows if x["section"] == section and x["min_ms"] != ""]
        if sec:
            names = [x["name"] for x in sec]
            ax.barh(names, [x["min_ms"] for x in sec], color="tab:blue", label="min")
            ax.barh(names, [x["median_ms"] - x["min_ms"] for x in sec], left=[x["min_ms"] for x in sec],
                    color="tab:orange", alpha=0.6, label="median - min")  # fmt: skip
            ax.set_xlabel("time per call (ms)")
            ax.legend(fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
        ax.set_title(section)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


NUMERIC = ("min_ms", "median_ms", "rounds", "peak_mem_mb", "throughput", "ratio_min", "ratio_median")


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of a benchmark.csv with their numbers back (empty cells stay "")."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["x"] = int(r["x"])
        for k in NUMERIC:
            r[k] = "" if r[k] == "" else int(r[k]) if k == "rounds" else float(r[k])
    return rows


def merge(dirs: list[Path], out_dir: Path, note: str) -> int:
    """One report from several runs (sections measured in separate processes, so that one failure loses one).
    A section that a later DIR measured again replaces the earlier DIRs' rows of that section."""
    rows, headers, notes, dispatch = [], [], [], None
    for d in dirs:
        new = read_csv_rows(d / "benchmark.csv")
        again = {r["section"] for r in new}
        rows = [r for r in rows if r["section"] not in again] + new
        md = d / "benchmark.md"
        if md.is_file():
            lines = md.read_text().splitlines()
            headers.append(f"{d.name}: {lines[0].removeprefix('# Benchmark (').removesuffix(')')}")
            notes += [x.removeprefix("Notes: ") for x in lines if x.startswith("Notes: ")]
        if (d / "mlstm_dispatch.json").is_file():
            dispatch = read_dispatch(d / "mlstm_dispatch.json")
            write_dispatch(out_dir / "mlstm_dispatch.json", {k: v for k, v in dispatch.items() if k != "comment"},
                           dispatch["comment"])  # fmt: skip
    rows.sort(key=lambda r: SECTIONS.index(r["section"]))
    header = f"merged from {len(dirs)} runs" + (f", {note}" if note else "")
    write_outputs(rows, out_dir, header, (["runs: " + " | ".join(headers)] if headers else []) + notes, dispatch)
    return 0
