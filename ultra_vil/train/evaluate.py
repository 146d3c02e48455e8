"""Evaluation of the classifier: top-1 / top-5 over a val split (summed over ranks), unreadable-file
accounting, and --eval-only of a checkpoint."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ultra_vil import checkpoints
from ultra_vil.classifier import build_from_config
from ultra_vil.train import distributed as D
from ultra_vil.train import train_state
from ultra_vil.train.data import (
    DataError,
    EvalSampler,
    ImageFolderDataset,
    build_eval_transform,
    check_same_classes,
    make_loader,
    normalize,
    scan_image_folder,
)

LOGGER = logging.getLogger("ultra_vil.train.engine")  # one logger for the training run's messages

# progress(iterable, total=..., desc=...) -> iterable, optionally with set_postfix(dict); scripts pass tqdm
Progress = Callable[..., Iterable]


def no_progress(iterable: Iterable, **_) -> Iterable:
    return iterable


def resolve_resume_path(args: argparse.Namespace) -> Path | None:
    if not args.resume:
        return None
    path = args.out_dir / "last.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise checkpoints.CheckpointError("no such file (--resume)", path)
    return path


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def scalar_img_size(img_size) -> int:
    return int(img_size if isinstance(img_size, int) else img_size[0])


class BadFileLog:
    """Counts and reports unreadable files of one split; fails when an epoch has more than `max_fraction`."""

    def __init__(self, split: str, max_fraction: float) -> None:
        self.split, self.max_fraction = split, max_fraction
        self.warned: set[str] = set()
        self.epoch_bad: set[str] = set()

    def start_epoch(self) -> None:
        self.epoch_bad = set()

    def add(self, bad: list[tuple[str, str]], epoch_images: int) -> None:
        for path, reason in bad:
            self.epoch_bad.add(path)
            if path not in self.warned:
                self.warned.add(path)
                LOGGER.warning("skipping unreadable %s image %s: %s", self.split, path, reason)
        if len(self.epoch_bad) > self.max_fraction * epoch_images:  # over the limit whatever the rest holds
            self.fail(len(self.epoch_bad), epoch_images)

    def check_total(self, total_bad: int, epoch_images: int) -> None:
        if total_bad > self.max_fraction * epoch_images:
            self.fail(total_bad, epoch_images)

    def fail(self, n_bad: int, epoch_images: int) -> None:
        examples = ", ".join(sorted(self.epoch_bad)[:5])
        raise DataError(
            f"{n_bad} unreadable {self.split} image(s) of {epoch_images} in one epoch "
            f"({100 * n_bad / epoch_images:.2f}%), more than --max-bad-fraction {self.max_fraction}: {examples}"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, info: D.DistInfo, amp: str, bad_log: BadFileLog, progress: Progress, desc: str
) -> dict:
    """Top-1 / top-5 (%) and mean cross-entropy over the whole val set, summed over all ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss sum, top-1 hits, top-5 hits, images
    n_total = len(loader.dataset)
    bad_log.start_epoch()
    for images, labels, bad in progress(loader, total=len(loader), desc=desc, leave=False):
        bad_log.add(bad, n_total)
        if images is None:
            continue
        images = normalize(images.to(info.device, non_blocking=True))
        labels = labels.to(info.device, non_blocking=True)
        with autocast(info.device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == labels[:, None]  # (B, k)
        sums += torch.stack(
            [F.cross_entropy(logits, labels, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum(),
             torch.tensor(float(labels.numel()), device=info.device)]
        ).double()
    bad_count = D.all_reduce_sum(torch.tensor([len(bad_log.epoch_bad)], device=info.device), info)
    bad_log.check_total(int(bad_count.item()), n_total)
    loss_sum, top1, top5, n = D.all_reduce_sum(sums, info).tolist()
    if n == 0:
        raise DataError("no readable validation image")
    return dict(val_loss=loss_sum / n, val_top1=100 * top1 / n, val_top5=100 * top5 / n, val_images=int(n))


def make_val_loader(index, img_size: int, args, info: D.DistInfo):
    dataset = ImageFolderDataset(index, build_eval_transform(img_size, args.crop_ratio), args.seed, False)
    sampler = EvalSampler(len(dataset), info.rank, info.world_size)
    batch = max(1, 2 * args.batch_size // info.world_size)  # no activations kept: twice the training batch fits
    return make_loader(dataset, sampler, batch, args.workers, info.device.type == "cuda")


def evaluate_checkpoint(args: argparse.Namespace, info: D.DistInfo, progress: Progress | None) -> dict:
    """--eval-only: top-1/top-5 of the checkpoint (and of its EMA weights, if it has them) on <data>/val."""
    progress = progress if (progress and info.is_main) else no_progress
    path = resolve_resume_path(args)
    ckpt = train_state.load(path)
    config = dict(ckpt["config"])
    if args.img_size is not None:
        config["img_size"] = args.img_size
    img_size = scalar_img_size(config["img_size"])
    val_index = scan_image_folder(args.data, "val")
    if ckpt.get("classes") is not None:
        check_same_classes(list(ckpt["classes"]), val_index.classes, Path(f"{path} (classes)"), val_index.root)
    elif len(val_index.classes) != config["num_classes"]:
        raise DataError(
            f"{val_index.root} has {len(val_index.classes)} classes, checkpoint {path} {config['num_classes']}"
        )
    loader = make_val_loader(val_index, img_size, args, info)
    results = {}
    for name in ("model", "ema"):
        if ckpt.get(name) is None:
            continue
        model = build_from_config(config)
        checkpoints.load_weights(model, ckpt[name], f"{path} ({name})", drop_mismatched_head=False)
        model.to(info.device)
        metrics = evaluate(model, loader, info, args.amp, BadFileLog("val", args.max_bad_fraction), progress,
                           f"eval {name}")
        results[name] = metrics
        LOGGER.info(
            "%s %s: top-1 %.2f  top-5 %.2f  loss %.4f  (%d images, %d px)", path, name, metrics["val_top1"],
            metrics["val_top5"], metrics["val_loss"], metrics["val_images"], img_size,
        )
    return results
