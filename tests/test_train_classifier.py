"""Classifier training (scripts/train_classifier.py, ultra_vil/train): its contracts, on CPU.

End to end: a 2-epoch run learns and writes its files; a run killed with SIGKILL and resumed ends with the
same weights as an uninterrupted one; two gloo processes under torchrun end where one process does; bad data
and bad configs fail (or warn) as documented. Plus the recipe's pieces one by one. Models are tiny (width
16-32, 2 blocks, 16-32 px), so the whole file takes well under a minute on a quiet 2-core CPU.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import load_script

from ultra_vil import checkpoints
from ultra_vil.classifier import create_model, load_checkpoint
from ultra_vil.train import train_state
from ultra_vil.train.config import parse_args
from ultra_vil.train.data import (
    BadImageError,
    EvalSampler,
    TrainSampler,
    read_image,
    scan_image_folder,
)
from ultra_vil.train.ema import ModelEma
from ultra_vil.train.mixup import Mixup, smooth_one_hot
from ultra_vil.train.recipe import WarmupCosine, param_groups

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_classifier.py"
TINY = ["--dim", "32", "--num-blocks", "2", "--img-size", "32", "--patch-size", "8", "--device", "cpu",
        "--workers", "0"]
SHAPES = {"red_circle": (255, 60, 60), "green_square": (60, 220, 60), "blue_hbar": (70, 90, 255),
          "yellow_vbar": (240, 220, 50)}


train_classifier = load_script(SCRIPT.stem)


def make_shapes(root: Path, n_train: int, n_val: int, size: int = 32, seed: int = 0) -> Path:
    """A 4-class ImageFolder of PNGs: a coloured shape per class (hue and shape both tell the class), at a random
    place and size, with a jittered colour, on noise. Chance is 25%."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, rgb in SHAPES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                bgr = tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-40, 41, 3), 0, 255)[::-1])
                cx, cy = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
                r = int(rng.integers(size // 6, size // 4 + 1))
                if "circle" in name:
                    cv2.circle(img, (cx, cy), r, bgr, -1)
                elif "square" in name:
                    cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), bgr, -1)
                elif "hbar" in name:
                    cv2.rectangle(img, (2, cy - 3), (size - 3, cy + 3), bgr, -1)
                else:
                    cv2.rectangle(img, (cx - 3, 2), (cx + 3, size - 3), bgr, -1)
                cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=48, n_val=16)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory) -> Path:
    """One 2-epoch run, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("run")
    argv = TINY + ["--data", str(shapes), "--out-dir", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "0.5",
                   "--warmup-epochs", "0", "--aug", "rrc", "--rrc-scale", "0.6", "1", "--mixup", "0", "--cutmix", "0"]
    assert train_classifier.main(argv) == 0
    return out


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env() -> dict:
    """One thread per process: the tests' subprocesses share 2 cores, and on CPU a fixed thread count keeps the
    floating-point reductions, and so the weights, reproducible from run to run."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------------ end to end
def test_two_epochs_learn_and_write_outputs(trained):
    """2 epochs on the 4-class shapes set: val top-1 >= 60% (chance 25%); every output file is there."""
    for name in ("last.pt", "best.pt", "metrics.csv", "config.yaml", "curves.png"):
        assert (trained / name).is_file(), name
    rows = read_metrics(trained / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s", "time_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # Measured: 95-100% after 2 epochs over seeds 0-9. 60% of 64 val images is 39 hits; an untrained model
    # (Binomial(64, 0.25): mean 16, sd 3.5) reaches that with probability < 1e-9, so passing means learning.
    assert float(rows[-1]["val_top1"]) >= 60.0
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"]) or float(rows[0]["val_top1"]) >= 90
    assert cv2.imread(str(trained / "curves.png")) is not None


def test_checkpoints_load_with_weights_only(trained):
    """last.pt holds the full training state and best.pt the weights, both under torch.load(weights_only=True)."""
    last = torch.load(trained / "last.pt", weights_only=True)
    for key in ("model", "config", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "global_step",
                "rng", "history", "classes", "args"):
        assert key in last, key
    assert (last["epoch"], last["step"], last["global_step"]) == (2, 0, 2 * 24)
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python"}
    model = load_checkpoint(trained / "best.pt")  # the classifier's own loader reads training checkpoints
    reference = load_checkpoint(trained / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 4)
    best = torch.load(trained / "best.pt", weights_only=True)
    assert "optimizer" not in best and best["classes"] == sorted(SHAPES)
    if best["epoch"] == 2:
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_config_yaml_repeats_the_run(trained):
    """config.yaml holds every resolved argument under its argparse name: --config on it parses to the same."""
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    args = parse_args(["--config", str(trained / "config.yaml")])
    for key, value in saved.items():
        got = getattr(args, key)
        got = str(got) if isinstance(got, Path) else list(got) if isinstance(got, tuple) else got
        assert got == value, key
    assert saved["num_classes"] == 4 and saved["amp"] == "none" and saved["img_size"] == 32


def test_eval_only_prints_top1_top5(trained, shapes, capsys):
    """--eval-only --resume <ckpt> prints top-1/top-5 on the val folder, equal to the training run's last row."""
    argv = ["--data", str(shapes), "--eval-only", "--resume", str(trained / "last.pt"), "--device", "cpu",
            "--workers", "0", "--batch-size", "16"]
    assert train_classifier.main(argv) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("top-1")[1].split()[0])
    assert "top-5" in out and "64 images" in out
    assert top1 == pytest.approx(float(read_metrics(trained / "metrics.csv")[-1]["val_top1"]), abs=0.01)


def test_finetune_at_another_resolution_with_overlapping_patches(trained, shapes, tmp_path, caplog):
    """--finetune from a 32 px run with 8 px patches to 48 px with stride 4 (the long-sequence recipe's patch 16 /
    stride 8, at half scale): the position embedding is resized (4x4 -> 11x11) and the run trains with layer-wise
    lr decay; other classes get a new head."""
    two_class = tmp_path / "two"
    for split in ("train", "val"):
        for name in sorted(SHAPES)[:2]:
            shutil.copytree(shapes / split / name, two_class / split / name)
    out = tmp_path / "ft"
    argv = TINY + ["--data", str(two_class), "--out-dir", str(out), "--finetune", str(trained / "best.pt"),
                   "--img-size", "48", "--patch-stride", "4", "--epochs", "1", "--batch-size", "32",
                   "--layer-decay", "0.75", "--lr", "0.05"]
    with caplog.at_level(logging.INFO):
        assert train_classifier.main(argv) == 0
    assert "head re-initialised" in caplog.text
    last = torch.load(out / "last.pt", weights_only=True)
    assert tuple(last["model"]["pos_embed"].shape) == (1, 11, 11, 32)
    assert last["config"]["patch_stride"] == 4 and last["config"]["num_classes"] == 2
    scales = sorted({g["lr_scale"] for g in last["optimizer"]["param_groups"]})
    assert scales == pytest.approx([0.75**2, 0.75, 1.0])  # embeddings, block pair, top


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(shapes, tmp_path):
    """SIGKILL a run after epoch 1, resume it: its final weights (and EMA) are bit-identical to a run that was
    never interrupted. The recipe is the paper's (3-Augment, mixup/cutmix, drop path, EMA), with loader workers
    and step checkpoints, so every source of randomness has to be replayed."""
    common = ["--data", str(shapes), "--dim", "16", "--num-blocks", "2", "--img-size", "16", "--patch-size", "8",
              "--device", "cpu", "--workers", "1", "--epochs", "3", "--batch-size", "8", "--lr", "0.5",
              "--warmup-epochs", "1", "--drop-path", "0.1", "--ema", "0.9", "--save-every-steps", "5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, str(SCRIPT)]
    env = subprocess_env()
    reference = subprocess.Popen(cmd + common + ["--out-dir", str(full)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(cmd + common + ["--out-dir", str(cut)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline, position = time.monotonic() + 240, None
    while time.monotonic() < deadline and victim.poll() is None:
        if (cut / "last.pt").exists():
            state = torch.load(cut / "last.pt", weights_only=True)
            if state["epoch"] >= 1:
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(cut / "last.pt", weights_only=True)
    position = (state["epoch"], state["step"])
    assert (1, 0) <= position < (3, 0)  # resumed from the epoch-1 checkpoint or a later step checkpoint
    resumed = subprocess.run(cmd + common + ["--out-dir", str(cut), "--resume"], env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {cut / 'last.pt'}: {position[0]} epoch(s) done + {position[1]} step(s)" in resumed.stderr
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert (a["epoch"], b["epoch"], a["global_step"], b["global_step"]) == (3, 3, 72, 72)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    rows_a, rows_b = read_metrics(full / "metrics.csv"), read_metrics(cut / "metrics.csv")
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]  # no row lost or repeated
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr"):
            assert ra[key] == rb[key], (ra["epoch"], key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(shapes, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU), 1 epoch: final weights equal the 1-process run with the same
    global batch. 44 training images and batch 8 leave a tail of 4 that both runs drop (no sampler padding);
    the 21 val images split 11/10 over the ranks and are each counted once. Augmentation stays on (it is
    seeded per image, so both runs crop alike); mixup/cutmix and drop path, drawn per rank, are off."""
    data = tmp_path / "data"
    for split, n in (("train", 11), ("val", 5)):
        for name in SHAPES:
            folder = data / split / name
            folder.mkdir(parents=True)
            for f in sorted((shapes / split / name).iterdir())[:n]:
                shutil.copy(f, folder / f.name)
    shutil.copy(sorted((shapes / "val" / "red_circle").iterdir())[-1], data / "val" / "red_circle" / "extra.png")
    common = ["--data", str(data), "--dim", "16", "--num-blocks", "2", "--img-size", "16", "--patch-size", "8",
              "--device", "cpu", "--workers", "0", "--epochs", "1", "--batch-size", "8", "--lr", "0.5",
              "--warmup-epochs", "0", "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--seed", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT)]
    env = {**subprocess_env(), "GLOO_SOCKET_IFNAME": "lo"}
    ddp = subprocess.run(cmd + common + ["--out-dir", str(two)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "2 process(es) on cpu" in ddp.stderr and "5 steps/epoch" in ddp.stderr
    single = subprocess.run([sys.executable, str(SCRIPT)] + common + ["--out-dir", str(one)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    a = torch.load(one / "last.pt", weights_only=True)
    b = torch.load(two / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 5
    for key in a["model"]:
        # Two half-batch means averaged by all-reduce round differently from one full-batch mean (~1e-7
        # relative); 5 AdamW steps of lr 2.4e-3 keep that far below 1e-4.
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    ra, rb = read_metrics(one / "metrics.csv")[0], read_metrics(two / "metrics.csv")[0]
    assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-4)
    assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=1e-4)  # all 21 images, once each
    assert ra["val_top1"] == rb["val_top1"]


# ------------------------------------------------------------------------------------------------ bad data
def _copy_small(shapes: Path, dst: Path, n_train: int = 16, n_val: int = 4) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for name in SHAPES:
            folder = dst / split / name
            folder.mkdir(parents=True)
            for f in sorted((shapes / split / name).iterdir())[:n]:
                shutil.copy(f, folder / f.name)
    return dst


def _corrupt_files(data: Path) -> list[Path]:
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    _, jpg = cv2.imencode(".jpg", noise)
    bad = {
        data / "train" / "red_circle" / "truncated.jpg": jpg.tobytes()[: len(jpg) // 2],
        data / "train" / "green_square" / "garbage.png": b"this is not an image" * 20,
        data / "train" / "blue_hbar" / "empty.jpg": b"",
        data / "val" / "yellow_vbar" / "broken.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    }
    for path, content in bad.items():
        path.write_bytes(content)
    return list(bad)


def test_corrupt_images_are_counted_and_skipped(shapes, tmp_path, caplog):
    """Truncated, garbage and empty files: each is warned about by name, skipped, and the run completes while
    the bad share (3 of 67 train, 1 of 17 val) stays under --max-bad-fraction."""
    data = _copy_small(shapes, tmp_path / "data")
    bad = _corrupt_files(data)
    argv = TINY + ["--data", str(data), "--out-dir", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8",
                   "--max-bad-fraction", "0.1"]
    with caplog.at_level(logging.WARNING):
        assert train_classifier.main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        assert any(str(path) in w for w in warnings), f"no warning names {path}"
    assert any("truncated JPEG" in w for w in warnings) and any("empty file" in w for w in warnings)


def test_too_many_corrupt_images_fail_the_run(shapes, tmp_path, capsys):
    """Above --max-bad-fraction the run stops with an error giving the count, the limit and the files."""
    data = _copy_small(shapes, tmp_path / "data")
    _corrupt_files(data)
    argv = TINY + ["--data", str(data), "--out-dir", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8",
                   "--max-bad-fraction", "0.02"]
    assert train_classifier.main(argv) == 2  # a user error: one line, exit status 2
    err = capsys.readouterr().err
    assert "unreadable train image(s)" in err and "--max-bad-fraction 0.02" in err
    assert "truncated.jpg" in err or "garbage.png" in err or "empty.jpg" in err


def test_empty_class_folder_fails_before_training(shapes, tmp_path, capsys):
    """An empty class folder (here one holding only a non-image file) stops the run before any training."""
    data = _copy_small(shapes, tmp_path / "data")
    (data / "train" / "purple_star").mkdir()
    (data / "train" / "purple_star" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    assert train_classifier.main(TINY + ["--data", str(data), "--out-dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "empty class folder" in err and str(data / "train" / "purple_star") in err
    assert not (out / "last.pt").exists()


def test_val_with_other_classes_fails_before_training(shapes, tmp_path, capsys):
    """val/ with a different class list stops the run and names what is missing and what is extra."""
    data = _copy_small(shapes, tmp_path / "data")
    (data / "val" / "blue_hbar").rename(data / "val" / "blue_bar")
    out = tmp_path / "out"
    assert train_classifier.main(TINY + ["--data", str(data), "--out-dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing in val: blue_hbar" in err and "only in val: blue_bar" in err
    assert not (out / "last.pt").exists()


def test_single_class_data_is_an_error_unless_allowed(shapes, tmp_path, capsys, caplog):
    """One class folder would train to loss 0 and report "100% top-1" whatever the model learns: an error naming the
    folder, or with --allow-single-class a warning."""
    data = _copy_small(shapes, tmp_path / "data")
    for split in ("train", "val"):
        for name in list(SHAPES)[1:]:
            shutil.rmtree(data / split / name)
    argv = TINY + ["--data", str(data), "--out-dir", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8"]
    assert train_classifier.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data / 'train'} has a single class folder (red_circle)" in err and "--allow-single-class" in err
    with caplog.at_level(logging.WARNING):
        assert train_classifier.main(argv + ["--allow-single-class"]) == 0
    assert any("single class folder" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _user_error_case(kind: str, trained: Path, tmp_path: Path) -> tuple[list[str], str]:
    """(extra argv, text the one error line must hold) for each kind of user error."""
    if kind == "truncated":
        bad = tmp_path / "truncated.pt"
        bad.write_bytes((trained / "last.pt").read_bytes()[:5000])
        return ["--resume", str(bad)], f"error: {bad}: "
    if kind == "empty":
        bad = tmp_path / "empty.pt"
        bad.write_bytes(b"")
        return ["--resume", str(bad)], f"error: {bad}: empty file"
    if kind == "foreign":
        bad = tmp_path / "foreign.pt"
        torch.save({"weights": torch.zeros(3)}, bad)
        return ["--resume", str(bad)], f"error: {bad}: "
    if kind == "weights_only":  # a bad argument: best.pt holds no optimiser state to resume
        return ["--resume", str(trained / "best.pt")], f"--resume {trained / 'best.pt'} holds weights only"
    if kind == "missing":
        return ["--resume", str(tmp_path / "nope.pt")], f"error: {tmp_path / 'nope.pt'}: no such file"
    assert kind == "nan"
    return ["--lr", "1e30", "--clip-grad", "0", "--warmup-epochs", "0"], "error: training loss is"


@pytest.mark.parametrize("kind", ["truncated", "empty", "foreign", "weights_only", "missing", "nan"])
def test_user_errors_are_one_line_with_status_2(kind, trained, shapes, tmp_path, capsys):
    """A truncated, empty or foreign checkpoint, a NaN loss or a bad --resume: one line naming the file and the
    cause (not a traceback, not an empty reason), exit status 2; --debug adds the traceback."""
    extra, expected = _user_error_case(kind, trained, tmp_path)
    argv = TINY + ["--data", str(shapes), "--out-dir", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8",
                   "--mixup", "0", "--cutmix", "0", *extra]
    assert train_classifier.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert len(errors[0].split(": ", 2)[-1].strip()) > 3, err  # a reason, never an empty one
    assert "Traceback" not in err
    if kind in ("empty", "nan"):
        assert train_classifier.main(argv + ["--debug"]) == 2
        assert "Traceback" in capsys.readouterr().err


def test_read_image_reasons(tmp_path):
    """read_image: grey PNG -> 3 channels; truncated JPEG, garbage and empty files -> BadImageError with why."""
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((5, 7), 200, np.uint8))
    assert read_image(grey).shape == (5, 7, 3)
    _, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cases = {"cut.jpg": (jpg.tobytes()[:-300], "truncated JPEG"), "junk.jpg": (b"abc" * 50, "cannot decode"),
             "empty.png": (b"", "empty file")}
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadImageError, match=reason):
            read_image(tmp_path / name)
    with pytest.raises(BadImageError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------------------------------------ config errors
def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_config_key_exits_naming_it(tmp_path, capsys):
    """A key that is no argument (typo, or a flag spelt with dashes) exits with status 2 naming the key."""
    cfg = _write_yaml(tmp_path / "c.yaml", {"data": "x", "lerning_rate": 0.1, "batch-size": 8})
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and "batch-size" in err and "batch_size" in err and str(cfg) in err


@pytest.mark.parametrize(
    "config, flags, key",
    [
        ({"epochs": 0}, [], "epochs"),
        ({"epochs": 2.5}, [], "epochs"),
        ({"batch_size": "eight"}, [], "batch_size"),
        ({"amp": "fp8"}, [], "amp"),
        ({"ema": 1.5}, [], "ema"),
        ({"betas": [0.9]}, [], "betas"),
        ({"compile": "yes"}, [], "compile"),
        ({"mixup": -0.1}, [], "mixup"),
        ({"device": "gpu"}, [], "device"),
        ({"img_size": 30}, ["--patch-size", "8"], "img_size"),
        ({}, ["--drop-path", "1.0"], "drop_path"),
        ({}, ["--max-bad-fraction", "2"], "max_bad_fraction"),
        ({}, ["--eval-only"], "eval_only"),
    ],
)
def test_invalid_values_exit_naming_the_key(tmp_path, capsys, config, flags, key):
    """Wrong types and out-of-range values, from the YAML file or from flags, exit 2 with the key's name."""
    cfg = _write_yaml(tmp_path / "c.yaml", {"data": "x", **config})
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(cfg)] + flags)
    assert e.value.code == 2
    assert key in capsys.readouterr().err


def test_flags_win_over_config_file(tmp_path):
    """Defaults < config file < flags; YAML strings become the argument's type (Path here)."""
    cfg = _write_yaml(tmp_path / "c.yaml", {"data": "some/dir", "epochs": 3, "lr": 0.002, "compile": True})
    args = parse_args(["--config", str(cfg), "--epochs", "1", "--no-compile"])
    assert (args.epochs, args.lr, args.compile, args.data) == (1, 0.002, False, Path("some/dir"))
    assert parse_args(["--data", "d", "--model", "vil_s"]).epochs == 400  # the paper's length per preset
    assert parse_args(["--data", "d"]).epochs == 800


def test_paper_configs_parse():
    """Every cfg/classifier/*.yaml is valid, and vil_t_imagenet.yaml holds the paper's ViL-T recipe."""
    files = sorted((ROOT / "cfg" / "classifier").glob("*.yaml"))
    assert files
    for f in files:
        parse_args(["--config", str(f), "--data", "d"])
    a = parse_args(["--config", str(ROOT / "cfg" / "classifier" / "vil_t_imagenet.yaml"), "--data", "d"])
    assert (a.model, a.epochs, a.batch_size, a.lr, a.img_size, a.weight_decay, a.warmup_epochs) == (
        "vil_t", 800, 2048, 1e-3, 192, 0.05, 5)
    assert (a.mixup, a.cutmix, a.smoothing, a.clip_grad, a.min_lr, a.aug, a.color_jitter) == (
        0.8, 1.0, 0.1, 1.0, 1e-6, "3aug", 0.3)


# ------------------------------------------------------------------------------------------------ real JPEGs
@pytest.fixture(scope="module")
def imagenet_jpegs(tmp_path_factory) -> list[tuple[bytes, int]]:
    """The 20 ImageNet validation JPEGs (with class indices) inside the foolbox 3.3.4 wheel, fetched with pip."""
    tmp = tmp_path_factory.mktemp("foolbox")
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "foolbox==3.3.4", "--no-deps", "-d", str(tmp),
                            "-q"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"pip could not fetch foolbox==3.3.4: {e}")
    wheels = list(tmp.glob("foolbox-3.3.4-*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.skip(f"pip could not fetch foolbox==3.3.4: {r.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        names = sorted(n for n in z.namelist() if n.startswith("foolbox/data/imagenet_") and n.endswith(".jpg"))
        return [(z.read(n), int(Path(n).stem.split("_")[-1])) for n in names]


def test_real_imagenet_jpegs_train_and_evaluate(imagenet_jpegs, tmp_path, caplog):
    """Real ImageNet JPEGs (varied sizes, camera output) go through OpenCV decoding, the paper's augmentation and
    the eval resize/crop without a single bad-file warning."""
    assert len(imagenet_jpegs) == 20
    data = tmp_path / "imagenet20"
    for split in ("train", "val"):
        for i, (content, label) in enumerate(imagenet_jpegs):
            folder = data / split / f"{label:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(content)  # ImageNet's upper-case extension
    index = scan_image_folder(data, "train")
    assert len(index) == 20 and len(index.classes) == 19  # two images share class 609
    shapes_seen = {read_image(index.path(i)).shape for i in range(len(index))}
    assert all(s[2] == 3 and min(s[:2]) >= 100 for s in shapes_seen) and len(shapes_seen) > 1
    argv = TINY + ["--data", str(data), "--out-dir", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "4",
                   "--max-bad-fraction", "0"]
    with caplog.at_level(logging.WARNING):
        assert train_classifier.main(argv) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    row = read_metrics(tmp_path / "out" / "metrics.csv")[0]
    assert float(row["val_top5"]) >= 0 and int(row["epoch"]) == 1


# ------------------------------------------------------------------------------------------------ recipe pieces
def test_weight_decay_groups():
    """No weight decay on 1-D parameters (norms, biases, skips) and the position embedding; decay elsewhere."""
    model = create_model("vil_t", dim=16, num_blocks=2, img_size=16, patch_size=8, num_classes=3)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.05)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert no_decay | decay == set(names.values()) and not no_decay & decay
    assert "pos_embed" in no_decay and "head.bias" in no_decay and "norm.weight" in no_decay
    assert "blocks.blocks.0.layer.mixers.0.learnable_skip" in no_decay
    assert {"patch_embed.weight", "head.weight", "blocks.blocks.0.layer.proj_up.weight",
            "blocks.blocks.1.layer.mixers.0.q_proj.weight"} <= decay
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)


def test_layer_decay_scales_by_block_pair():
    """Layer-wise lr decay: embeddings at decay^3, blocks 0-1 at decay^2, blocks 2-3 at decay, head at 1."""
    model = create_model("vil_t", dim=16, num_blocks=4, img_size=16, patch_size=8, num_classes=3)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scale["patch_embed.weight"] == scale["pos_embed"] == 0.125
    assert scale["blocks.blocks.0.norm.weight"] == scale["blocks.blocks.1.layer.proj_up.weight"] == 0.25
    assert scale["blocks.blocks.3.layer.proj_down.weight"] == 0.5
    assert scale["head.weight"] == scale["norm.weight"] == 1.0


def test_warmup_cosine_schedule():
    """Linear warmup to the peak, half cosine down to min_lr at the last step."""
    s = WarmupCosine(peak_lr=1e-3, min_lr=1e-6, warmup_steps=10, total_steps=110)
    assert s(0) == pytest.approx(1e-4) and s(9) == pytest.approx(1e-3)
    assert s(60) == pytest.approx((1e-3 + 1e-6) / 2)
    assert s(110) == pytest.approx(1e-6) and s(500) == pytest.approx(1e-6)
    values = [s(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_mixup_cutmix_targets():
    """Soft targets sum to 1 and mix the label with the flipped batch by the kept area (cutmix) or lambda
    (mixup); the same generator seed gives the same batch."""
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    for mix, cut in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        mixup = Mixup(4, mix, cut, smoothing=0.1)
        x1, t1 = mixup(images, labels, np.random.default_rng(5))
        x2, t2 = mixup(images, labels, np.random.default_rng(5))
        assert torch.equal(x1, x2) and torch.equal(t1, t2)
        torch.testing.assert_close(t1.sum(1), torch.ones(4))
        lam = (t1[0, 0] - 0.1 / 4) / (1 - 0.1)  # weight of image 0's own label
        assert 0 <= lam <= 1
        if cut and not mix:  # the kept area of image 0 equals lam
            kept = (x1[0] == images[0]).all(0).float().mean()
            torch.testing.assert_close(kept, lam)
    off = Mixup(4, 0.0, 0.0, smoothing=0.1)
    x, t = off(images, labels, np.random.default_rng(0))
    assert torch.equal(x, images) and torch.equal(t, smooth_one_hot(labels, 4, 0.1))


def test_samplers_partition_global_batches():
    """Two ranks' train shards together are the one-process global batches; the tail is dropped; eval
    shards cover every image exactly once."""
    single = [i for i, _ in TrainSampler(21, 8, 0, 1, seed=1)]
    ranks = [[i for i, _ in TrainSampler(21, 8, r, 2, seed=1)] for r in (0, 1)]
    assert len(single) == 16 and len(ranks[0]) == len(ranks[1]) == 8
    for step in range(2):
        merged = ranks[0][4 * step: 4 * step + 4] + ranks[1][4 * step: 4 * step + 4]
        assert merged == single[8 * step: 8 * step + 8]
    resumed = TrainSampler(21, 8, 0, 1, seed=1)
    resumed.set_epoch(0, start_step=1)
    assert [i for i, _ in resumed] == single[8:]
    shards = [i for r in range(3) for i, _ in EvalSampler(10, r, 3)]
    assert sorted(shards) == list(range(10))


def test_ema_update():
    """EMA: ema <- decay * ema + (1 - decay) * weights after each update."""
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, before + 0.25 * 4.0)


def test_rng_states_round_trip_through_weights_only(tmp_path):
    """RNG states stored as tensors and ints survive torch.load(weights_only=True) and replay the same draws."""
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    checkpoints.atomic_save({"model": {}, "rng": train_state.rng_state()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    train_state.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temp file left behind


def test_tensorboard_scalars(shapes, tmp_path):
    """With the optional tensorboard package installed, each epoch's metrics go to <out-dir>/tensorboard."""
    pytest.importorskip("torch.utils.tensorboard")
    out = tmp_path / "tb"
    argv = TINY + ["--data", str(shapes), "--out-dir", str(out), "--epochs", "1", "--batch-size", "32"]
    assert train_classifier.main(argv) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------------------ embedded data
def _write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_builder(tmp_path):
    """The builder turns the Debian package's IDX files into train/ and val/ ImageFolders, the first N per class."""
    from ultra_vil.train.fashion_mnist import CLASS_NAMES, build_image_folder, read_idx

    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        labels = np.arange(n) % 10
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
    counts = build_image_folder(tmp_path / "fm", source, train_per_class=2, val_per_class=None)
    assert counts == {"train": 20, "val": 20}
    index = scan_image_folder(tmp_path / "fm", "train")
    assert index.classes == [f"{i}_{n}" for i, n in enumerate(CLASS_NAMES)]  # sorted order = official labels
    first = cv2.imread(str(tmp_path / "fm" / "train" / "0_t-shirt_top" / "train_00000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(first, read_idx(source / "train-images-idx3-ubyte.gz")[0])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_image_folder(tmp_path / "x", tmp_path / "missing")
    (source / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(source / "bad.gz")
    real = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
    if real.is_file():  # the installed package, when present: 60,000 labels, 6,000 per class
        assert np.bincount(read_idx(real)).tolist() == [6000] * 10
