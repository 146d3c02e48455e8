#!/usr/bin/env python3
"""Speed and memory of ViL against attention and against other implementations, side by side on one device.

Examples:
    python scripts/benchmark.py --quick --out-dir results/bench-quick          # 2-core CPU, under 3 minutes
    python scripts/benchmark.py --out-dir results/bench-cpu \\
        --baseline-src /work/baseline-3c73528 --official-src /tmp/official      # the CPU tables of issue 9
    python scripts/benchmark.py --device cuda --out-dir results/bench-gpu       # GPU: everything, one command
    python scripts/benchmark.py --only mlstm,dispatch --update-dispatch         # re-measure `auto`'s thresholds

Sections (--only picks some); every comparison is interleaved (A, B, A, B, ... in one process, or across worker
processes for other checkouts) and reports the minimum and the median over rounds:
    mlstm       mLSTM backends (parallel, chunkwise, recurrent at small S, triton on CUDA, auto) vs PyTorch SDPA,
                fwd+bwd, NH=4 DH=64, B=1 on CPU / 8 on CUDA, S = 196 ... 6400 (25600 on CUDA); time, peak memory
    dispatch    parallel vs chunkwise (vs triton) over an S grid per dtype: the thresholds of `auto`, written to
                mlstm_dispatch.json; checks `auto` is within 10% of the fastest backend at every S
    block       ViLBlockPair(256), SequencerBlock(256), two VimBlock(256) (a mixer unit of one YOLO slot) vs
                nn.TransformerEncoderLayer(256, 4, 1024, norm_first=True, batch_first=True) (dropout 0.1, and 0),
                batch 1, image 320 ... 1280 px at stride 16 (400 ... 6400 tokens), fwd+bwd time and peak memory
    classifier  ViL-T at 224 px, batch 8: training step (fwd + bwd + AdamW) and inference, img/s; this checkout vs
                --baseline-src (another ultra-vil checkout) vs --official-src (a folder holding NX-AI's
                `vision_lstm` package), each in its own worker process, rounds interleaved across them
    yolo        stock YOLOv8n vs YOLOv8n-ViL: batch-1 fused inference at 640 (PyTorch, and ONNX Runtime when
                installed), fwd+bwd at 640 batch 4: time and peak memory

--device cuda first runs the Triton kernel's correctness check on the GPU (ultra_vil.mlstm.triton.check_on_device);
a kernel that fails it is not timed. Every mLSTM backend is checked against the float64 recurrence before timing.
Writes benchmark.csv (one row per contender and size), benchmark.md (the target table of issue 9 first, then
every section), benchmark.png and mlstm_dispatch.json into --out-dir; --update-dispatch also writes the package
copy ultra_vil/mlstm/mlstm_dispatch.json that `mlstm(backend="auto")` reads. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ultra_vil import benchmark as B
from ultra_vil import measure
from ultra_vil.bench_report import SECTIONS, merge, write_outputs

LOGGER = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Preset:
    """Sizes and round counts of one run; `full` is the issue's table, `quick` < 3 min on 2 cores, `tiny` for tests."""

    rounds: int = 7
    min_rounds: int = 3
    warmup: int = 1
    max_seconds: float = 30.0  # per comparison: stop adding rounds after this (but run min_rounds)
    mlstm_shape: tuple = (1, 4, 64)  # B, NH, DH of (a); CPU: B=1 (SDPA at S=6400, B=8 takes minutes per call)
    dispatch_shape: tuple = (8, 4, 64)  # B, NH, DH of the dispatch grid (ViL-T at batch 8 runs B*NH = 32 rows)
    mlstm_seqs: tuple = (196, 400, 1600, 6400)
    recurrent_max_seq: int = 196  # a Python loop of S steps: seconds per call already at 196 on 2 cores
    dispatch_seqs: tuple = (64, 128, 196, 256, 400, 576, 784, 1024)
    block_dim: int = 256
    block_sizes: tuple = (320, 640, 960, 1280)
    classifier_img: int = 224
    classifier_batch: int = 8
    classifier_kw: dict = dataclasses.field(default_factory=dict)  # model overrides (tiny models for tests)
    yolo_size: int = 640
    yolo_batch: int = 4
    latency_rounds: int = 20


PRESETS = {
    "full": Preset(),
    "quick": Preset(rounds=3, min_rounds=2, max_seconds=4.0, mlstm_seqs=(196, 400, 1600), recurrent_max_seq=64,
                    dispatch_seqs=(128, 256, 512), block_sizes=(320, 640), classifier_batch=2, yolo_size=320,
                    yolo_batch=2, latency_rounds=5),
    "tiny": Preset(rounds=2, min_rounds=1, warmup=1, max_seconds=2.0, mlstm_shape=(1, 2, 16),
                   dispatch_shape=(1, 2, 16), mlstm_seqs=(16, 40),
                   recurrent_max_seq=40, dispatch_seqs=(8, 16, 32), block_dim=32, block_sizes=(64, 96),
                   classifier_img=32, classifier_batch=2,
                   classifier_kw=dict(dim=32, num_blocks=2, patch_size=8), yolo_size=64, yolo_batch=1,
                   latency_rounds=2),
}  # fmt: skip
CUDA_OVERRIDES = dict(mlstm_shape=(8, 4, 64), mlstm_seqs=(196, 400, 1600, 6400, 25600), recurrent_max_seq=400,
                      dispatch_seqs=(64, 128, 196, 256, 400, 576, 784, 1024, 1600, 2304, 4096, 6400),
                      classifier_batch=256, yolo_batch=64)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or N")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: < 3 min on a 2-core CPU")
    size.add_argument("--tiny", action="store_true", help="toy sizes for tests (seconds; the numbers mean nothing)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmark"))
    p.add_argument("--rounds", type=int, help="timed rounds per comparison (default: by preset)")
    p.add_argument("--max-seconds", type=float, help="per comparison, stop adding rounds after this long")
    p.add_argument("--baseline-src", type=Path, help="another ultra-vil checkout to time in the classifier section")
    p.add_argument("--official-src", type=Path, help="a folder holding NX-AI's vision_lstm package (vision_lstm2.py)")
    p.add_argument("--yolo-cfg", default="cfg/yolov8n-vil.yaml",
                   help="the ViL model of the yolo section (Ultralytics' scale-in-the-name rule: yolov8n-vil.yaml "
                        "builds cfg/yolov8-vil.yaml at scale n)")  # fmt: skip
    p.add_argument("--classifier-batch", type=int, help="batch of the classifier section (default 8; 256 on CUDA)")
    p.add_argument("--yolo-batch", type=int, help="batch of the yolo fwd+bwd (default 4; 64 on CUDA)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                   help="no measuring: join the benchmark.csv of runs in DIR... (e.g. one per section) into --out-dir")
    p.add_argument("--note", default="", help="appended to the report's header (e.g. which commit was measured)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads here and in the worker processes (default: torch's, the core count)")
    p.add_argument("--update-dispatch", action="store_true",
                   help=f"also write the measured thresholds to {B.DISPATCH_FILE.relative_to(REPO)} (what auto reads)")
    return p


def row(section, name, x, res=None, mem=None, thr=None, vs="", ratio=None, note=""):
    """One CSV row; `res` is a compare_interleaved entry, `ratio` (min/min, median/median) against `vs`."""
    fmt = lambda v, d: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v, d)
    return dict(section=section, name=name, x=x, min_ms=fmt(res and res["min"], 3),
                median_ms=fmt(res and res["median"], 3), rounds=len(res["times"]) if res else "",
                peak_mem_mb=fmt(mem, 3), throughput=fmt(thr, 2), vs=vs, ratio_min=fmt(ratio and ratio[0], 3),
                ratio_median=fmt(ratio and ratio[1], 3), note=note)  # fmt: skip


def compare(fns, preset: Preset, device) -> dict:
    return measure.compare_interleaved(fns, rounds=preset.rounds, warmup=preset.warmup, device=device,
                                       max_seconds=preset.max_seconds, min_rounds=preset.min_rounds)  # fmt: skip


def mlstm_dtype(device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ------------------------------------------------------------------------------------------------ (a) mLSTM
def triton_status(device) -> tuple[bool, str]:
    """(time the triton backend?, why / the GPU check's result). Only on CUDA: the CPU interpreter is for tests."""
    try:
        from ultra_vil.mlstm import triton as mlstm_triton
    except ImportError as e:
        return False, f"triton backend not importable ({e})"
    if device.type != "cuda":
        return False, "triton: CUDA only (the CPU interpreter is for tests, not timing)"
    if not mlstm_triton.available(device):
        return False, "triton: not available on this device"
    check = getattr(mlstm_triton, "check_on_device", None)
    if check is None:
        return True, "triton: the module has no check_on_device: GPU correctness check skipped"
    try:
        err = check(device)
    except RuntimeError as e:
        return False, f"triton: GPU correctness check FAILED, not timed: {e}"
    return True, f"triton: GPU correctness check passed (error {err:.1e})"


def guarded_backends(backends, NH, DH, device, dtype, notes) -> list[str]:
    """The backends that pass the float64 guard (a failing one is reported in `notes` and not timed)."""
    ok = []
    for be in backends:
        try:
            err = B.check_backend(be, NH, DH, device, dtype)
        except RuntimeError as e:
            notes.append(f"guard: {e}: not timed")
            LOGGER.warning("guard: %s", e)
            continue
        LOGGER.info("guard: %s rel. error %.1e vs float64 reference", be, err)
        ok.append(be)
    return ok


def auto_choice(S, device, dtype) -> str:
    from ultra_vil.mlstm import select_backend

    try:
        return select_backend(S, device, dtype)
    except TypeError:  # a changed signature: report what we can
        return "?"


def mlstm_step(ins, backend):
    def step():
        B.mlstm(*ins, backend=backend).float().sum().backward()

    return step


def bench_mlstm(preset: Preset, device, triton: bool, notes: list[str]) -> list[dict]:
    """(a) fwd+bwd of each backend and of SDPA over S, interleaved at each S; peak memory of one untimed run."""
    Bsz, NH, DH = preset.mlstm_shape
    dtype = mlstm_dtype(device)
    budget = torch.cuda.get_device_properties(device).total_memory * 0.5 if device.type == "cuda" else 3 * 2**30
    backends = guarded_backends(["parallel", "chunkwise", "recurrent"] + (["triton"] if triton else []), NH, DH,
                                device, dtype, notes)  # fmt: skip
    rows = []
    for S in preset.mlstm_seqs:
        fns, skipped = {}, {}
        for be in [*backends, "auto"]:
            chosen = auto_choice(S, device, dtype) if be == "auto" else be
            if chosen == "parallel" and Bsz * NH * S * S * 4 * 6 > budget:
                skipped[be] = "skipped: O(S^2) memory"
            elif chosen == "recurrent" and S > preset.recurrent_max_seq:
                skipped[be] = "skipped: step loop too slow at this S"
            else:
                fns[be] = mlstm_step(B.mlstm_inputs(Bsz, NH, S, DH, dtype, device), be)
        q, k, v = (torch.randn(Bsz, NH, S, DH, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        fns["sdpa"] = lambda q=q, k=k, v=v: B.sdpa_step(q, k, v)
        res = compare(fns, preset, device)
        for name, r in res.items():
            mem = measure.peak_mem_mb(fns[name], device)
            note = f"B={Bsz} NH={NH} DH={DH} {B.dtype_name(dtype)}"
            note += f", -> {auto_choice(S, device, dtype)}" if name == "auto" else ""
            rows.append(row("mlstm", name, S, r, mem, vs="sdpa", ratio=measure.ratios(res, name, "sdpa"), note=note))
            LOGGER.info("mlstm %-9s S=%5d min %9.2f ms median %9.2f ms  %7.1f MiB", name, S, r["min"], r["median"], mem)
        rows += [row("mlstm", name, S, note=why) for name, why in skipped.items()]
    return rows


# --------------------------------------------------------------------------------------------- dispatch table
def bench_dispatch(preset: Preset, device, triton: bool, notes: list[str]) -> tuple[list[dict], dict]:
    """Thresholds of `auto` per dtype from an interleaved grid; `auto` (as dispatched now) timed alongside."""
    Bsz, NH, DH = preset.dispatch_shape
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if device.type == "cuda" else [torch.float32]
    rows, measured = [], {}
    for dtype in dtypes:
        backends = guarded_backends(["parallel", "chunkwise"] + (["triton"] if triton else []), NH, DH, device,
                                    dtype, notes)  # fmt: skip
        grid = {}
        for S in preset.dispatch_seqs:
            fns = {be: mlstm_step(B.mlstm_inputs(Bsz, NH, S, DH, dtype, device), be) for be in [*backends, "auto"]}
            grid[S] = compare(fns, preset, device)
        entry = B.pick_thresholds({S: {k: v for k, v in r.items() if k != "auto"} for S, r in grid.items()})
        measured[B.dtype_name(dtype)] = entry
        for S, res in grid.items():
            fastest = min((k for k in res if k != "auto"), key=lambda k: res[k]["min"])
            picked = B.dispatch_pick(S, entry, triton="triton" in res)
            for name, r in res.items():
                note = f"-> {auto_choice(S, device, dtype)} (package table)" if name == "auto" else ""
                if name == picked:
                    note = (note + "; " if note else "") + "picked by the measured table"
                rows.append(row("dispatch", f"{name} {B.dtype_name(dtype)}", S, r, vs=f"fastest ({fastest})",
                                ratio=measure.ratios(res, name, fastest), note=note))  # fmt: skip
        LOGGER.info("dispatch %s %s: %s", device.type, B.dtype_name(dtype), entry)
    return rows, {device.type: measured}


# ------------------------------------------------------------------------------------------------ (b) block
def bench_block(preset: Preset, device) -> list[dict]:
    """(b) ViLBlockPair(dim) and the other mixers' units of the same YOLO slot (one SequencerBlock, two VimBlocks:
    what SequencerC2f / VimC2f hold per ViL pair) vs PyTorch's pre-norm transformer layer, batch 1, tokens at
    stride 16, fwd+bwd."""
    from ultra_vil.sequencer import SequencerBlock
    from ultra_vil.vil import ViLBlockPair
    from ultra_vil.vim import VimBlock

    D = preset.block_dim
    torch.manual_seed(0)
    vil = ViLBlockPair(D).to(device)
    seq = SequencerBlock(D).to(device)
    vim = torch.nn.ModuleList([VimBlock(D), VimBlock(D)]).to(device)
    tr = B.transformer_block(D).to(device)
    tr0 = B.transformer_block(D, dropout=0.0).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for size in preset.block_sizes:
        H = W = size // 16
        S = H * W
        x = torch.randn(1, S, D, device=device)

        def step(fwd):
            def run():
                with amp:
                    out = fwd()
                out.float().sum().backward()

            return run

        fns = {"vil_pair": step(lambda x=x, grid=(H, W): vil(x, grid)),
               "sequencer_block": step(lambda x=x, grid=(H, W): seq(x, grid)),
               "vim_pair": step(lambda x=x, grid=(H, W): vim[1](vim[0](x, grid), grid)),
               "transformer_layer": step(lambda x=x: tr(x)),
               "transformer_layer_p0": step(lambda x=x: tr0(x))}  # fmt: skip
        res = compare(fns, preset, device)
        mems = {name: measure.peak_mem_mb(fn, device) for name, fn in fns.items()}
        for name, r in res.items():
            ratio = measure.ratios(res, name, "transformer_layer")
            rows.append(row("block", name, size, r, mems[name], vs="transformer_layer", ratio=ratio,
                            note=f"S={S} tokens, batch 1, width {D}; memory ratio "
                                 f"{mems[name] / max(mems['transformer_layer'], 1e-9):.2f}"))  # fmt: skip
            LOGGER.info("block %-17s %4d px min %8.2f ms median %8.2f ms %8.1f MiB", name, size, r["min"],
                        r["median"], mems[name])  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------- (c) classifier
def bench_classifier(preset: Preset, device, baseline_src: Path | None, official_src: Path | None) -> list[dict]:
    """(c) ViL-T train step and inference, this checkout vs others, each in a worker; rounds interleaved across them."""
    size, batch, kw = preset.classifier_img, preset.classifier_batch, preset.classifier_kw
    ours_kw = dict(name="vil_t", img_size=size, **kw)
    official_kw = dict(dim=kw.get("dim", 192), depth=kw.get("num_blocks", 24) // 2,
                       patch_size=kw.get("patch_size", 16), input_shape=[3, size, size])  # fmt: skip
    common = dict(batch=batch, img_size=size, device=str(device))
    specs = [("ours", REPO, "ultra_vil", ours_kw)]
    if baseline_src is not None:
        specs.append(("baseline", baseline_src, "ultra_vil", ours_kw))
    if official_src is not None:
        specs.append(("official", official_src, "official", official_kw))
    for name, src, _, _ in specs:
        if not Path(src).is_dir():
            raise SystemExit(f"error: --{name}-src {src}: not a directory")
    workers = {}
    try:
        for name, src, kind, model_kw in specs:
            workers[name] = B.Worker(src, "classifier", name, kind=kind, model_kw=model_kw, **common)
            LOGGER.info("classifier: %s from %s (%d params)", name, workers[name].info["origin"],
                        workers[name].info["params"])  # fmt: skip
        rows = []
        ref = "official" if "official" in workers else "baseline" if "baseline" in workers else ""
        for step in ("train", "infer"):
            res = compare({name: w.fn(step) for name, w in workers.items()}, preset, device)
            for name, r in res.items():
                mem = workers[name].peak_mem_mb(step) if step == "train" else None
                ratio = measure.ratios(res, name, ref) if ref else None
                info = workers[name].info
                rows.append(row("classifier", f"{name}_{step}", size, r, mem, batch / r["min"] * 1e3, vs=ref,
                                ratio=ratio, note=f"batch {batch}, {info['params']:,} params, "
                                                  f"{Path(info['origin']).parent}"))  # fmt: skip
                LOGGER.info("classifier %-9s %s: min %8.1f ms (%6.1f img/s), median %8.1f ms", name, step, r["min"],
                            batch / r["min"] * 1e3, r["median"])  # fmt: skip
        return rows
    finally:
        for w in workers.values():
            w.close()


# ------------------------------------------------------------------------------------------------- (d) yolo
def bench_yolo(preset: Preset, device, vil_cfg: str) -> list[dict]:
    """(d) stock YOLOv8n vs YOLOv8n-ViL: fwd+bwd (network only, loss excluded) and batch-1 fused inference."""
    from ultra_vil.yolo import costs  # imports Ultralytics: only for this section

    size, batch = preset.yolo_size, preset.yolo_batch
    models = costs.build({"yolov8n": "yolov8n.yaml", "yolov8n-vil": vil_cfg}, nc=80, device=device)
    settings = costs.CostSettings(size=size, batch=batch, rounds=preset.rounds, min_rounds=preset.min_rounds,
                                  warmup=preset.warmup, max_seconds=preset.max_seconds,
                                  latency_rounds=preset.latency_rounds, amp=device.type == "cuda")  # fmt: skip
    res = costs.measure_costs(models, settings, device)
    rows, mems = [], res["train_mem_mb"]
    for name, r in res["train"].items():
        rows.append(row("yolo", f"{name}_train", size, r, mems[name], batch / r["min"] * 1e3, vs="yolov8n_train",
                        ratio=measure.ratios(res["train"], name, "yolov8n"),
                        note=f"fwd+bwd, batch {batch}; memory ratio {mems[name] / mems['yolov8n']:.2f}"))  # fmt: skip
    for name, r in res["torch"].items():
        rows.append(row("yolo", f"{name}_torch", size, r, vs="yolov8n_torch",
                        ratio=measure.ratios(res["torch"], name, "yolov8n"),
                        note="batch 1, fused, eval, PyTorch"))  # fmt: skip
    if not res["onnx"]:
        return rows + [row("yolo", "onnx", size, note=res["onnx_note"])]
    for name, r in res["onnx"].items():
        rows.append(row("yolo", f"{name}_onnx", size, r, vs="yolov8n_onnx",
                        ratio=measure.ratios(res["onnx"], name, "yolov8n"),
                        note=f"batch 1, fused, {res['onnx_note']}"))  # fmt: skip
    return rows


def source_version() -> str:
    """This checkout's commit (+ "dirty" with uncommitted changes), or "unknown" outside git."""
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}"



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        return merge(args.merge, args.out_dir, args.note)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        raise SystemExit(f"error: --only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the classifier section's worker processes inherit it
    try:
        device = measure.resolve_device(args.device)
    except measure.DeviceError as e:
        raise SystemExit(f"error: {e}") from None
    name = "tiny" if args.tiny else "quick" if args.quick else "full"
    preset = PRESETS[name]
    if device.type == "cuda" and name == "full":
        preset = dataclasses.replace(preset, **CUDA_OVERRIDES)
    overrides = {"rounds": args.rounds, "max_seconds": args.max_seconds, "classifier_batch": args.classifier_batch,
                 "yolo_batch": args.yolo_batch}  # fmt: skip
    preset = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    machine = f"{device} ({measure.device_name(device)}), {torch.get_num_threads()} threads"
    header = f"{machine}, torch {torch.__version__}, python {platform.python_version()}, preset {name}"
    header += f", code {source_version()}" + (f", {args.note}" if args.note else "")
    LOGGER.info(header)
    t0 = time.perf_counter()
    notes: list[str] = []
    triton = False
    if {"mlstm", "dispatch"} & set(only):
        triton, why = triton_status(device)
        notes.append(why)
        LOGGER.info(why)
    rows, dispatch = [], None
    if "mlstm" in only:
        rows += bench_mlstm(preset, device, triton, notes)
    if "dispatch" in only:
        drows, measured = bench_dispatch(preset, device, triton, notes)
        rows += drows
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        shape = "B={} NH={} DH={}".format(*preset.dispatch_shape)
        comment = (f"mlstm(backend='auto') thresholds, fwd+bwd {shape}, preset {name}: measured by "
                   f"scripts/benchmark.py on {machine}, {stamp}")
        base = B.read_dispatch(B.DISPATCH_FILE)
        dispatch = B.write_dispatch(args.out_dir / "mlstm_dispatch.json", measured, comment, base)
        if args.update_dispatch:
            B.write_dispatch(B.DISPATCH_FILE, measured, comment, base)
            notes.append(f"wrote {B.DISPATCH_FILE.relative_to(REPO)} (auto above ran with the previous table)")
    if "block" in only:
        rows += bench_block(preset, device)
    if "classifier" in only:
        rows += bench_classifier(preset, device, args.baseline_src, args.official_src)
    if "yolo" in only:
        rows += bench_yolo(preset, device, args.yolo_cfg)
    write_outputs(rows, args.out_dir, header + f", total {time.perf_counter() - t0:.0f} s", notes, dispatch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
