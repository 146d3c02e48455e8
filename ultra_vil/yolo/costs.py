"""YOLO models' costs measured side by side in one process: fwd+bwd time and peak memory, batch-1 fused inference
in PyTorch and in ONNX Runtime.

Every model takes its turn in each round (A, B, C, A, B, C, ...: `ultra_vil.bench.timing.compare_interleaved`), so all
of them share the machine's noise and their ratios (min/min, median/median) hold on a busy machine where absolute
times do not. Models are built from their YAMLs: the time of a forward pass does not depend on the weights' values.
Used by scripts/benchmark.py (its yolo section) and by compare.py --costs (a study's cost ratios, beside the
timings that each training process took alone, under whatever load the machine had during that run).
`ort_session` is the one way ONNX files are run for timing (compare.py's per-run ONNX latency opens its export
with it too).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ultra_vil.bench.memory import peak_mem_mb
from ultra_vil.bench.timing import compare_interleaved

LOGGER = logging.getLogger(__name__)


@dataclass
class CostSettings:
    """What one costs run measures: fwd+bwd at (batch, 3, size, size), inference at (1, 3, size, size)."""

    size: int = 640
    batch: int = 4
    rounds: int = 7  # fwd+bwd rounds (each model once per round)
    min_rounds: int = 3
    warmup: int = 1
    max_seconds: float | None = 30.0  # per comparison: stop adding rounds after this (but run min_rounds)
    latency_rounds: int = 20
    onnx: bool = True
    amp: bool = False  # CUDA only: bf16 autocast in the fwd+bwd


def tensor_sum(out) -> torch.Tensor:
    """Sum of every tensor in a model output (Ultralytics' train-mode Detect returns a dict of tensors and lists)."""
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    items = out.values() if isinstance(out, dict) else out
    return sum(tensor_sum(o) for o in items)


def build(cfgs: dict[str, str], nc: int, device: torch.device) -> dict[str, nn.Module]:
    """name -> Ultralytics DetectionModel built from its YAML (a stock name such as yolov8n.yaml, or a path; a
    scale letter in the name picks the scale), seeded, on `device`. A missing YAML raises here, named."""
    from ultralytics.nn.tasks import DetectionModel

    import ultra_vil.yolo  # noqa: F401  registers the ViL and other mixer modules with Ultralytics' parser

    models = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        models[name] = DetectionModel(cfg, nc=nc, verbose=False).to(device)
    return models


def onnx_session(model: nn.Module, x: torch.Tensor, path: Path):
    """Export a fused eval model to ONNX (TorchScript exporter, fixed shape) and open it in ONNX Runtime:
    (a function that runs it once on x, the execution provider)."""
    from ultralytics.nn.modules import Detect

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, Detect):  # what Ultralytics' exporter sets: one output tensor, no training branches
            mod.export, mod.format = True, "onnx"
    with torch.no_grad():
        torch.onnx.export(m, x, str(path), opset_version=17, input_names=["images"], output_names=["output0"],
                          dynamo=False)  # fmt: skip
    return ort_session(path, x)


def ort_session(path: str | Path, x: torch.Tensor):
    """Open the ONNX file `path` in ONNX Runtime with as many intra-op threads as torch uses (the same threads as
    the PyTorch timing), on CUDA when x is a CUDA tensor and Runtime has that provider, else on the CPU:
    (a function that runs it once on x, the execution provider)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    providers = ["CUDAExecutionProvider"] if x.is_cuda and "CUDAExecutionProvider" in ort.get_available_providers() \
        else ["CPUExecutionProvider"]  # fmt: skip
    session = ort.InferenceSession(str(path), opts, providers=providers)
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    return lambda: session.run(None, feed), providers[0]


def measure_costs(models: dict[str, nn.Module], s: CostSettings, device: torch.device) -> dict:
    """Interleaved costs of `models` (the first is the usual reference). Returns
    {"train": {name: compare_interleaved result}, "train_mem_mb": {name: peak MiB of one fwd+bwd},
     "torch": {...}, "onnx": {...} (empty when not measured), "onnx_note": why not / its provider}."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda")
    x = torch.randn(s.batch, 3, s.size, s.size, device=device)

    def train_step(model):
        def run():
            model.train()
            with amp:
                out = model(x)
            tensor_sum(out).backward()  # gradients accumulate: allocated once, in the warm-up

        return run

    def compare(fns, rounds, warmup, dev):
        return compare_interleaved(fns, rounds=rounds, warmup=warmup, device=dev, max_seconds=s.max_seconds,
                                   min_rounds=min(s.min_rounds, rounds))  # fmt: skip

    fns = {name: train_step(m) for name, m in models.items()}
    out = {"train": compare(fns, s.rounds, s.warmup, device)}
    out["train_mem_mb"] = {name: peak_mem_mb(fn, device) for name, fn in fns.items()}
    for name, r in out["train"].items():
        LOGGER.info("%-20s fwd+bwd min %8.1f ms median %8.1f ms %8.1f MiB", name, r["min"], r["median"],
                    out["train_mem_mb"][name])  # fmt: skip

    fused = {name: copy.deepcopy(m).float().fuse(verbose=False).eval() for name, m in models.items()}
    one = torch.rand(1, 3, s.size, s.size, device=device)

    def infer(model):
        def run():
            with torch.inference_mode():
                model(one)

        return run

    warm = max(s.warmup, 2)
    out["torch"] = compare({name: infer(m) for name, m in fused.items()}, s.latency_rounds, warm, device)
    for name, r in out["torch"].items():
        LOGGER.info("%-20s torch batch-1 min %7.2f ms median %7.2f ms", name, r["min"], r["median"])
    out["onnx"], out["onnx_note"] = {}, ""
    if not s.onnx:
        out["onnx_note"] = "not measured"
        return out
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        out["onnx_note"] = "skipped: onnxruntime is not installed"
        return out
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sessions = {name: onnx_session(m, one, Path(tmp) / f"{name}.onnx") for name, m in fused.items()}
        except Exception as e:  # an export failure is a finding to report, not a reason to lose the other numbers
            LOGGER.warning("ONNX export failed: %s", e)
            out["onnx_note"] = f"ONNX export failed: {type(e).__name__}: {e}"[:300]
            return out
        out["onnx"] = compare({name: f for name, (f, _) in sessions.items()}, s.latency_rounds, warm, None)
        out["onnx_note"] = f"ONNX Runtime {next(iter(sessions.values()))[1]}"
    for name, r in out["onnx"].items():
        LOGGER.info("%-20s onnx batch-1 min %7.2f ms median %7.2f ms", name, r["min"], r["median"])
    return out
