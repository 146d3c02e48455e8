"""Fresh-interpreter runs of the stock `yolo` command and a tiny synthetic detection data set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def yolo_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)  # keep Ultralytics' own "running under pytest" paths out of it
    env.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", YOLO_CONFIG_DIR=str(tmp / "yolo-config"), **extra)
    return env


def run(args: list[str], tmp: Path, check: bool = True, **env) -> subprocess.CompletedProcess:
    """Run a command in a fresh interpreter from the repository root; on failure show its output."""
    proc = subprocess.run(args, cwd=ROOT, env=yolo_env(tmp, **env), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} -> rc {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def yolo(*args: str) -> list[str]:
    """The stock `yolo` entry point of this environment."""
    exe = Path(sys.executable).with_name("yolo")
    return [str(exe) if exe.exists() else shutil.which("yolo") or "yolo", *args]


def write_tiny_set(root: Path, n: int = 4, size: int = 64) -> Path:
    """n images of size x size with 1-2 bright rectangles on noise, their YOLO labels and a data YAML."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            rows = []
            for _ in range(1 + k % 2):
                w, h = rng.integers(12, 28, size=2)
                x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
                cls = int(rng.integers(0, 2))
                img[y0 : y0 + h, x0 : x0 + w] = (220, 60, 40) if cls == 0 else (40, 200, 220)
                rows.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{split}{k}.png")
            (root / "labels" / split / f"{split}{k}.txt").write_text("\n".join(rows) + "\n")
    data = root / "tiny.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: cyan\n")
    return data
