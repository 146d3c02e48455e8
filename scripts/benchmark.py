#!/usr/bin/env python3
"""Speed and memory of ViL against attention, C2f and stock YOLOv8, on the current device.

Examples:
    python scripts/benchmark.py --quick --out-dir results/bench-cpu          # 2-core CPU, under 3 minutes
    python scripts/benchmark.py --device cuda --out-dir results/bench-gpu    # the full run
    python scripts/benchmark.py --only mlstm --out-dir results/bench-mlstm

Sections (--only picks some):
    mlstm       mLSTM backends vs PyTorch SDPA attention, fwd+bwd, B=8 NH=4 DH=64, S = 196 ... 25600
    block       ViL block pair vs a transformer block pair (SDPA) vs C2f on a stride-16 map, image 320 ... 1280
    classifier  ViL-T training step at 224 px (img/s), eager and torch.compile (+ compile warm-up)
    yolo        YOLOv8n vs YOLOv8n-ViL: fwd+bwd img/s at 640, batch-1 latency, peak memory

Writes benchmark.csv (section, name, x, time_ms, peak_mem_mb, throughput, note), benchmark.md (the tables) and
benchmark.png (time and memory vs sequence length, log-log) into --out-dir, and prints the tables.
Every mLSTM backend is first checked against the float64 reference; one that disagrees is not timed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch

from ultra_vil.benchmark import TransformerBlock, check_backend, mlstm_inputs, peak_mem_mb, sdpa_step, time_ms
from ultra_vil.mlstm import mlstm, select_backend

LOGGER = logging.getLogger("benchmark")
SECTIONS = ("mlstm", "block", "classifier", "yolo")
FIELDS = ["section", "name", "x", "time_ms", "peak_mem_mb", "throughput", "note"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes, no compile: < 3 min on a 2-core CPU")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmark"))
    p.add_argument("--yolo-cfg", default="cfg/yolov8n-vil.yaml", help="the ViL model of the yolo section")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def row(section, name, x, t=None, mem=None, thr=None, note=""):
    fmt = lambda v, d: "" if v is None else round(v, d)  # noqa: E731
    return dict(section=section, name=name, x=x, time_ms=fmt(t, 3), peak_mem_mb=fmt(mem, 1),
                throughput=fmt(thr, 1), note=note)


def bench_mlstm(device, quick):
    """(a) fwd+bwd of each backend and of SDPA over S, B=8 NH=4 DH=64."""
    B, NH, DH = 8, 4, 64
    seqs = [196, 400, 1600, 6400] if quick else [196, 400, 1600, 6400, 25600]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mem_budget = (torch.cuda.get_device_properties(device).total_memory * 0.6 if device.type == "cuda"
                  else 6 * 2**30)
    rows = []
    backends = ["parallel", "chunkwise", "recurrent", "auto"]
    for be in backends[:3]:
        err = check_backend(be, NH, DH, device, dtype)
        LOGGER.info("correctness guard: %s rel. error %.1e vs float64 reference", be, err)
    for S in seqs:
        for be in backends:
            chosen = select_backend(S, device, dtype) if be == "auto" else be
            if chosen == "parallel" and B * NH * S * S * 4 * 6 > mem_budget:
                rows.append(row("mlstm", be, S, note="skipped: O(S^2) memory"))
                continue
            if chosen == "recurrent" and S > (400 if quick else 1600):
                rows.append(row("mlstm", be, S, note="skipped: step loop too slow"))
                continue
            ins = mlstm_inputs(B, NH, S, DH, dtype, device)

            def step():
                mlstm(*ins, backend=be).float().sum().backward()

            t = time_ms(step, device, warmup=1, repeat=3 if quick else 10)
            rows.append(row("mlstm", be, S, t, peak_mem_mb(step, device), note=f"-> {chosen}" if be == "auto" else ""))
            LOGGER.info("mlstm %-9s S=%5d %9.2f ms", be, S, t)
        q, k, v = (torch.randn(B, NH, S, DH, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        if device.type == "cpu" and B * NH * S * S * 4 * 3 > mem_budget:
            rows.append(row("mlstm", "sdpa", S, note="skipped: O(S^2) memory on CPU"))
            continue
        t = time_ms(lambda: sdpa_step(q, k, v), device, warmup=1, repeat=3 if quick else 10)
        rows.append(row("mlstm", "sdpa", S, t, peak_mem_mb(lambda: sdpa_step(q, k, v), device), note=str(dtype)))
        LOGGER.info("mlstm %-9s S=%5d %9.2f ms", "sdpa", S, t)
    return rows


def bench_block(device, quick):
    """(b) one ViL block pair vs two transformer blocks vs C2f, width 192, stride-16 map, fwd+bwd."""
    from ultra_vil.vil import ViLStack

    try:
        from ultralytics.nn.modules import C2f
    except ImportError:  # pragma: no cover - ultralytics is a requirement
        C2f = None
    C, B = 192, (1 if quick else 8)
    sizes = [320, 640, 960] if quick else [320, 640, 960, 1280]
    torch.manual_seed(0)
    vil = ViLStack(C, 2).to(device)
    vit = torch.nn.Sequential(TransformerBlock(C), TransformerBlock(C)).to(device)
    c2f = C2f(C, C, n=1, shortcut=True).to(device) if C2f is not None else None
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for size in sizes:
        H = W = size // 16
        S = H * W
        x = torch.randn(B, S, C, device=device)
        img = torch.randn(B, C, H, W, device=device)
        cases = {"vil_pair": lambda: vil(x, (H, W)), "transformer_pair": lambda: vit(x)}
        if c2f is not None:
            cases["c2f"] = lambda: c2f(img)
        for name, fwd in cases.items():
            def step(fwd=fwd):
                with amp:
                    out = fwd()
                out.float().sum().backward()

            t = time_ms(step, device, warmup=1, repeat=3 if quick else 10)
            rows.append(row("block", name, size, t, peak_mem_mb(step, device), note=f"S={S}, B={B}, C={C}"))
            LOGGER.info("block %-16s %4d px %9.2f ms", name, size, t)
    return rows


def bench_classifier(device, quick):
    """(c) ViL-T training step at 224 (AdamW, bf16 autocast on GPU): img/s eager and compiled."""
    from ultra_vil import create_model

    B = 8 if quick else (256 if device.type == "cuda" else 32)
    rows = []
    modes = ["eager"] if quick else ["eager", "compiled"]
    for mode in modes:
        torch.manual_seed(0)
        model = create_model("vil_t").to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fwd = torch.compile(model) if mode == "compiled" else model
        x = torch.randn(B, 3, 224, 224, device=device)
        y = torch.randint(0, 1000, (B,), device=device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def step():
            with amp:
                loss = torch.nn.functional.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        warmup_s = time.perf_counter() - t0
        t = time_ms(step, device, warmup=1, repeat=3 if quick else 10)
        rows.append(row("classifier", f"vil_t_{mode}", 224, t, peak_mem_mb(step, device), B / t * 1e3,
                        note=f"B={B}, first step {warmup_s:.1f} s"))
        LOGGER.info("classifier ViL-T %s: %.1f img/s (first step %.1f s)", mode, B / t * 1e3, warmup_s)
    return rows


def bench_yolo(device, quick, vil_cfg):
    """(d) stock YOLOv8n vs YOLOv8n-ViL at 640: fwd+bwd img/s (network only, loss excluded), batch-1 latency."""
    try:
        import ultra_vil.yolo  # noqa: F401  registers the ViL modules
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as e:
        return [row("yolo", "yolov8n-vil", 640, note=f"skipped: {e}")]
    if not Path(vil_cfg).exists():
        return [row("yolo", "yolov8n-vil", 640, note=f"skipped: {vil_cfg} not found")]
    B = 2 if quick else (64 if device.type == "cuda" else 8)
    rows = []
    for name, cfg in [("yolov8n", "yolov8n.yaml"), ("yolov8n-vil", vil_cfg)]:
        torch.manual_seed(0)
        model = DetectionModel(cfg, nc=80, verbose=False).to(device)
        x = torch.randn(B, 3, 640, 640, device=device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def train_step():
            model.train()
            with amp:
                out = model(x)
            sum(o.float().sum() for o in out).backward()

        t = time_ms(train_step, device, warmup=1, repeat=2 if quick else 10)
        mem = peak_mem_mb(train_step, device)
        rows.append(row("yolo", f"{name}_train", 640, t, mem, B / t * 1e3, note=f"B={B}, fwd+bwd"))
        model.eval()
        one = torch.randn(1, 3, 640, 640, device=device)
        with torch.inference_mode():
            lat = time_ms(lambda: model(one), device, warmup=2, repeat=5 if quick else 50)
        rows.append(row("yolo", f"{name}_latency", 640, lat, note="batch 1, eval"))
        LOGGER.info("yolo %-12s train %.1f img/s, latency %.1f ms", name, B / t * 1e3, lat)
    return rows


def write_outputs(rows, out_dir: Path, header: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "benchmark.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [header, ""]
    for section in SECTIONS:
        sec = [r for r in rows if r["section"] == section]
        if not sec:
            continue
        lines += [f"### {section}", "", "| name | x | time ms | peak MiB | img/s | note |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['x']} | {r['time_ms']} | {r['peak_mem_mb']} | {r['throughput']} | {r['note']} |"
                  for r in sec]
        lines.append("")
    text = "\n".join(lines)
    (out_dir / "benchmark.md").write_text(text)
    print(text)
    plot(rows, out_dir / "benchmark.png")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (section, xlabel) in enumerate([("mlstm", "sequence length S"), ("block", "image side (px), stride 16")]):
        sec = [r for r in rows if r["section"] == section and r["time_ms"] != ""]
        for name in dict.fromkeys(r["name"] for r in sec):
            pts = [(r["x"], r["time_ms"], r["peak_mem_mb"]) for r in sec if r["name"] == name]
            xs = [p[0] for p in pts]
            axes[0, col].plot(xs, [p[1] for p in pts], "o-", label=name)
            axes[1, col].plot(xs, [max(p[2], 1e-3) for p in pts], "o-", label=name)
        for r, ylabel in ((0, "fwd+bwd time (ms)"), (1, "peak memory (MiB)")):
            ax = axes[r, col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        axes[0, col].set_title(section)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        raise SystemExit(f"--only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    device = resolve_device(args.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (f"device: {device} ({dev_name}), threads {torch.get_num_threads()}, torch {torch.__version__}, "
              f"python {platform.python_version()}, quick={args.quick}")
    LOGGER.info(header)
    t0 = time.perf_counter()
    rows = []
    if "mlstm" in only:
        rows += bench_mlstm(device, args.quick)
    if "block" in only:
        rows += bench_block(device, args.quick)
    if "classifier" in only:
        rows += bench_classifier(device, args.quick)
    if "yolo" in only:
        rows += bench_yolo(device, args.quick, args.yolo_cfg)
    write_outputs(rows, args.out_dir, header + f", total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
