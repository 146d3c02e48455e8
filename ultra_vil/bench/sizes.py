"""What one benchmark run measures: its sizes and round counts (`Preset`), the interleaved comparison every section
runs with them (`compare`), and the code version named in the report's header (`source_version`)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import torch

from ultra_vil.bench.timing import compare_interleaved


@dataclasses.dataclass
class Preset:
    """Sizes and round counts of one run; `full` the targets table's, `quick` < 3 min on 2 cores, `tiny` for tests."""

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
# the full preset on a GPU: batch 8 for the mLSTM, longer sequences, and the batches a GPU is used at
CUDA_OVERRIDES = dict(mlstm_shape=(8, 4, 64), mlstm_seqs=(196, 400, 1600, 6400, 25600), recurrent_max_seq=400,
                      dispatch_seqs=(64, 128, 196, 256, 400, 576, 784, 1024, 1600, 2304, 4096, 6400),
                      classifier_batch=256, yolo_batch=64)  # fmt: skip


def make_preset(name: str, device: torch.device, **overrides) -> Preset:
    """PRESETS[name] (with CUDA_OVERRIDES for `full` on a GPU), then every override that is not None."""
    preset = PRESETS[name]
    if device.type == "cuda" and name == "full":
        preset = dataclasses.replace(preset, **CUDA_OVERRIDES)
    return dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})


def compare(fns, preset: Preset, device) -> dict:
    """`compare_interleaved` of `fns` with the preset's rounds, warm-up, time budget and minimum rounds."""
    return compare_interleaved(fns, rounds=preset.rounds, warmup=preset.warmup, device=device,
                               max_seconds=preset.max_seconds, min_rounds=preset.min_rounds)  # fmt: skip


def source_version(repo: Path) -> str:
    """The commit of the checkout `repo` (+ "uncommitted changes" where it has some), or "unknown" outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}"
