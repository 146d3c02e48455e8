"""The classifier training loop: one process on CPU or GPU, or many under torchrun (DDP).

`run(args)` takes the namespace of `ultra_vil.train.config.parse_args` and either trains (writing last.pt,
best.pt, metrics.csv, config.yaml and curves.png into --out-dir, on rank 0 only) or, with --eval-only,
evaluates a checkpoint. A step:

    uint8 batch -> device -> normalise -> mixup/cutmix + smoothed targets -> autocast forward -> soft CE
    -> backward (DDP all-reduces the gradients) -> clip -> AdamW (lr from the warmup-cosine schedule) -> EMA

Reproducibility: every random choice is drawn from a seed derived from (seed, epoch, index) for augmentation
and (seed, epoch, step, rank) for mixup and drop path (the global torch generator is reseeded each step), and
the sampler's order from (seed, epoch). A run resumed from any checkpoint therefore replays exactly what the
uninterrupted run would have done: on CPU the final weights are bit-identical.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ultra_vil import checkpoints
from ultra_vil.classifier import VisionLSTMConfig, create_model
from ultra_vil.errors import ArgumentError, NonFiniteLossError
from ultra_vil.train import train_state
from ultra_vil.train import distributed as D
from ultra_vil.train.data import (
    STREAM_STEP,
    DataError,
    ImageFolderDataset,
    ImageFolderIndex,
    TrainSampler,
    build_train_transform,
    check_class_count,
    check_same_classes,
    derive_seed,
    make_loader,
    normalize,
    scan_image_folder,
)
from ultra_vil.train.ema import ModelEma
from ultra_vil.train.evaluate import (
    BadFileLog,
    Progress,
    autocast,
    no_progress,
    evaluate,
    evaluate_checkpoint,
    make_val_loader,
    resolve_resume_path,
)
from ultra_vil.train.mixup import Mixup, soft_cross_entropy
from ultra_vil.train.recipe import WarmupCosine, build_optimizer
from ultra_vil.train.report import TensorBoard, git_sha, plot_curves, write_config, write_metrics

LOGGER = logging.getLogger(__name__)

MODEL_KEYS_IGNORED_ON_RESUME = ("checkpoint",)  # activation checkpointing changes no weight


def run(args: argparse.Namespace, progress: Progress | None = None) -> dict:
    """Train (or with --eval-only evaluate) as `args` says; returns the final metrics of this process."""
    info = D.setup(args.device)
    try:
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if args.amp is None:
            args.amp = "bf16" if info.device.type == "cuda" else "none"
        if args.eval_only:
            return evaluate_checkpoint(args, info, progress)
        return Trainer(args, info, progress).fit()
    finally:
        D.teardown()


class Trainer:
    """Builds data, model, optimiser and state from `args` (and a checkpoint to resume), then `fit()`s."""

    def __init__(self, args: argparse.Namespace, info: D.DistInfo, progress: Progress | None = None) -> None:
        """Set up in this order: the checkpoint to resume, the data checks, the model (seeded), the loaders, the
        recipe, the training state (restored from the checkpoint), the compile/DDP wrappers. `args` is completed
        in place (num_classes, img_size, patch_size, patch_stride, drop_path)."""
        self.args, self.info = args, info
        self.progress = progress if (progress and info.is_main) else no_progress
        self.device = info.device
        self.out_dir = Path(args.out_dir)
        resume_path, resume = self._read_resume()
        train_index, val_index = self._check_data()
        self._build_model(resume)
        self._build_loaders(train_index, val_index)
        self._build_recipe()
        self._init_state(resume, resume_path)
        self._wrap_model()

    # ---------------------------------------------------------------------------------------------- setup
    def _read_resume(self) -> tuple[Path | None, dict | None]:
        """(path, checkpoint) of --resume, or (None, None); a weights-only file (no optimizer state) is refused."""
        resume_path = resolve_resume_path(self.args)
        resume = train_state.load(resume_path) if resume_path else None
        if resume is not None and "optimizer" not in resume:
            raise ArgumentError(f"--resume {resume_path} holds weights only (a best.pt?): resume from last.pt, or "
                                f"start a new run from it with --finetune")
        return resume_path, resume

    def _check_data(self) -> tuple[ImageFolderIndex, ImageFolderIndex]:
        """Scan <data>/train and <data>/val and check their classes (against each other, --num-classes and the
        class count) before the model is built: every data check that can fail runs first. Sets `classes` and
        fills in args.num_classes; returns the (train, val) indexes of `scan_image_folder`."""
        args = self.args
        train_index = scan_image_folder(args.data, "train")
        val_index = scan_image_folder(args.data, "val")
        check_same_classes(train_index.classes, val_index.classes, train_index.root, val_index.root)
        self.classes = train_index.classes
        if args.num_classes is None:
            args.num_classes = len(self.classes)
        elif args.num_classes != len(self.classes):
            raise DataError(
                f"num_classes (--num-classes) is {args.num_classes} but {train_index.root} has "
                f"{len(self.classes)} class folders"
            )
        check_class_count(self.classes, train_index.root, getattr(args, "allow_single_class", False))
        return train_index, val_index

    def _build_model(self, resume: dict | None) -> None:
        """`raw`, the unwrapped VisionLSTM on the device: seeded before construction, so every process (and a
        rerun) starts from the same weights, then initialised from --finetune if given (not when resuming).

        The geometry a resumed run leaves unset comes from the checkpoint's config; args.img_size, patch_size and
        drop_path are set to what the model uses."""
        args = self.args
        if resume is not None:
            for key in ("img_size", "patch_size", "patch_stride"):
                if getattr(args, key) is None:
                    setattr(args, key, resume["config"][key])
        args.img_size = args.img_size or 224
        args.patch_size = args.patch_size or 16
        torch.manual_seed(args.seed)
        overrides = {k: getattr(args, k) for k in ("dim", "num_blocks") if getattr(args, k) is not None}
        finetune = None
        if args.finetune is not None and resume is None:  # read first: a released file needs legacy_norm
            finetune = checkpoints.read_weights(args.finetune)
            if "legacy_norm.weight" in finetune[0]:
                overrides["legacy_norm"] = True
        self.raw = create_model(
            args.model, num_classes=args.num_classes, img_size=args.img_size, patch_size=args.patch_size,
            patch_stride=args.patch_stride, drop_path=args.drop_path, checkpoint=args.grad_checkpointing,
            **overrides,
        )
        args.drop_path = self.raw.config["drop_path"]
        if finetune is not None:
            self._load_finetune(args.finetune, finetune[0])
        self.raw.to(self.device)

    def _build_loaders(self, train_index: ImageFolderIndex, val_index: ImageFolderIndex) -> None:
        """The sampler, the train and val loaders (uint8 (B, 3, H, W) batches) and the unreadable-file logs;
        `steps_per_epoch` and `epoch_images` (images one epoch draws over all ranks) come from the sampler."""
        args, info = self.args, self.info
        self.sampler = TrainSampler(len(train_index), args.batch_size, info.rank, info.world_size, args.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.epoch_images = self.steps_per_epoch * args.batch_size
        train_set = ImageFolderDataset(
            train_index, build_train_transform(args.img_size, args.aug, args.rrc_scale, args.color_jitter),
            args.seed, substitute_bad=True,
        )
        pin = self.device.type == "cuda"
        self.train_loader = make_loader(train_set, self.sampler, self.sampler.local_batch, args.workers, pin)
        self.val_loader = make_val_loader(val_index, args.img_size, args, info)
        self.train_bad = BadFileLog("train", args.max_bad_fraction)
        self.val_bad = BadFileLog("val", args.max_bad_fraction)

    def _build_recipe(self) -> None:
        """The recipe: peak lr (--lr per 1024 images of batch), AdamW, the warmup-cosine schedule (in steps), the
        fp16 grad scaler, mixup/cutmix and, with --ema > 0, the EMA of the weights."""
        args = self.args
        self.peak_lr = args.lr * args.batch_size / 1024
        self.optimizer = build_optimizer(
            self.raw, self.peak_lr, args.weight_decay, args.betas, args.layer_decay, fused=self.device.type == "cuda"
        )
        self.schedule = WarmupCosine(
            self.peak_lr, args.min_lr, round(args.warmup_epochs * self.steps_per_epoch),
            args.epochs * self.steps_per_epoch,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp == "fp16")
        self.mixup = Mixup(args.num_classes, args.mixup, args.cutmix, args.smoothing)
        self.ema = ModelEma(self.raw, args.ema) if args.ema > 0 else None

    def _init_state(self, resume: dict | None, resume_path: Path | None) -> None:
        """The loop's state: a new run's (epoch 0, step 0, no history), then the checkpoint's when resuming."""
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.best_top1, self.history = -1.0, []
        self.partial = dict(loss_sum=0.0, count=0)  # running sums of an epoch a step checkpoint cut in two
        if resume is not None:
            self._load_resume(resume, resume_path)

    def _wrap_model(self) -> None:
        """`model` (compiled with --compile, else `raw`) and `train_model` (`model` under DDP when distributed).

        Evaluation uses `model` without DDP: ranks see different numbers of val batches, and DDP's forward would
        wait for the others."""
        self.model = torch.compile(self.raw) if self.args.compile else self.raw
        self.train_model = self.model
        if self.info.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False, gradient_as_bucket_view=True,
            )

    # ---------------------------------------------------------------------------------------------- loading
    def _load_finetune(self, path: Path, state: dict) -> None:
        """Initialise from weights in any format `ultra_vil.checkpoints` reads (another run's checkpoint, a
        VisionLSTM2 state dict, a released .th): matched by name, position embedding resized to this grid (other
        resolution or patch stride), head dropped if its shape differs (other classes); every other tensor must
        fit, or the error lists the names that do not."""
        checkpoints.load_weights(self.raw, state, path)
        LOGGER.info("finetune: initialised from %s", path)

    def _load_resume(self, ckpt: dict, path: Path) -> None:
        defaults = VisionLSTMConfig.defaults()  # keys older checkpoints lack (legacy_norm)
        ours = {k: v for k, v in {**defaults, **self.raw.config}.items() if k not in MODEL_KEYS_IGNORED_ON_RESUME}
        theirs = {k: v for k, v in {**defaults, **ckpt["config"]}.items() if k not in MODEL_KEYS_IGNORED_ON_RESUME}
        differ = sorted(k for k in set(ours) | set(theirs) if _norm(ours.get(k)) != _norm(theirs.get(k)))
        if differ:
            raise ArgumentError(
                f"--resume {path}: the model differs from the checkpoint's in "
                + ", ".join(f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)" for k in differ)
                + "; use --finetune to start a new run from it"
            )
        if ckpt["step"] and ckpt.get("steps_per_epoch") != self.steps_per_epoch:
            raise ArgumentError(
                f"--resume {path} stopped inside an epoch of {ckpt.get('steps_per_epoch')} steps, this run has "
                f"{self.steps_per_epoch} (batch size or data changed): resume with the same --batch-size and data"
            )
        self.raw.load_state_dict(ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ArgumentError(f"--resume {path}: optimizer state does not fit (--layer-decay changed?): {e}") from e
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                LOGGER.warning("--resume %s has no EMA weights: the EMA starts from the current weights", path)
                self.ema = ModelEma(self.raw, self.args.ema)
        self.start_epoch, self.start_step, self.global_step = ckpt["epoch"], ckpt["step"], ckpt["global_step"]
        self.best_top1, self.history = ckpt["best_top1"], list(ckpt["history"])
        if self.info.is_main:  # the running sums of a cut epoch are global: one rank carries them on
            self.partial = dict(ckpt.get("partial") or self.partial)
        train_state.set_rng_state(ckpt["rng"])
        LOGGER.info("resumed from %s: %d epoch(s) done + %d step(s)", path, self.start_epoch, self.start_step)

    # ---------------------------------------------------------------------------------------------- saving
    def resolved_args(self) -> dict:
        """The arguments as plain YAML types; `config` itself is left out (it is in config.yaml's header)."""
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in vars(self.args).items() if k != "config"}

    def _state(self, epoch: int, step: int, partial: dict) -> dict:
        return dict(
            model=self.raw.state_dict(), config=self.raw.config, optimizer=self.optimizer.state_dict(),
            scheduler=dict(self.schedule.state_dict(), step=self.global_step), scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch, global_step=self.global_step,
            best_top1=self.best_top1, history=self.history, classes=self.classes, args=self.resolved_args(),
            partial=partial, rng=train_state.rng_state(),
        )

    def save_last(self, epoch: int, step: int, partial: dict | None = None) -> None:
        """last.pt after `epoch` complete epochs and `step` steps of the next; `partial` holds that epoch's
        running loss sums (global over ranks) so its train_loss comes out the same after a resume."""
        if self.info.is_main:
            state = self._state(epoch, step, partial or dict(loss_sum=0.0, count=0))
            checkpoints.atomic_save(state, self.out_dir / "last.pt")

    def save_best(self, epoch: int, metrics: dict) -> None:
        if self.info.is_main:
            checkpoints.atomic_save(
                dict(model=self.raw.state_dict(), config=self.raw.config,
                     ema=self.ema.state_dict() if self.ema is not None else None, epoch=epoch,
                     classes=self.classes, metrics=metrics, args=self.resolved_args()),
                self.out_dir / "best.pt",
            )

    def write_reports(self) -> None:
        if self.info.is_main and self.history:
            write_metrics(self.history, self.out_dir / "metrics.csv")
            plot_curves(self.history, self.out_dir / "curves.png")

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        args, info = self.args, self.info
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            header = [
                "resolved arguments of scripts/train_classifier.py: repeat the run with --config <this file>",
                f"config file: {args.config}" if args.config else "config file: none (flags and defaults)",
                f"git {git_sha() or 'unknown'}, torch {torch.__version__}, python {platform.python_version()}, "
                f"{info.world_size} process(es) on {self.device.type}",
            ]
            write_config(self.resolved_args(), self.out_dir / "config.yaml", header)
            self.write_reports()  # a resumed run drops rows of epochs after its checkpoint
        n_params = sum(p.numel() for p in self.raw.parameters())
        LOGGER.info(
            "%s: %.2fM params, %d classes, %d px, patch %d/%d | %d train / %d val images, %d steps/epoch | "
            "%d process(es) on %s, batch %d, peak lr %.3g, amp %s%s",
            args.model, n_params / 1e6, args.num_classes, args.img_size, args.patch_size,
            args.patch_stride or args.patch_size, len(self.train_loader.dataset), len(self.val_loader.dataset),
            self.steps_per_epoch, info.world_size, self.device, args.batch_size, self.peak_lr, args.amp,
            ", compiled" if args.compile else "",
        )
        tb = TensorBoard(self.out_dir / "tensorboard") if info.is_main else None
        try:
            for epoch in range(self.start_epoch, args.epochs):
                t0 = time.perf_counter()
                start_step = self.start_step if epoch == self.start_epoch else 0
                train = self.train_one_epoch(epoch, start_step)
                val = evaluate(self.model, self.val_loader, info, args.amp, self.val_bad, self.progress, "val")
                row = dict(epoch=epoch + 1, train_loss=train["loss"], val_loss=val["val_loss"],
                           val_top1=val["val_top1"], val_top5=val["val_top5"], lr=train["lr"],
                           img_per_s=train["img_per_s"], time_s=time.perf_counter() - t0)
                if self.ema is not None:
                    ema = evaluate(self.ema.module, self.val_loader, info, args.amp, self.val_bad, self.progress,
                                   "val ema")
                    row.update(ema_val_top1=ema["val_top1"], ema_val_top5=ema["val_top5"])
                self.history.append(row)
                is_best = row["val_top1"] > self.best_top1
                self.best_top1 = max(self.best_top1, row["val_top1"])
                self.save_last(epoch + 1, 0)
                if is_best:
                    self.save_best(epoch + 1, row)
                self.write_reports()
                if tb is not None:
                    tb.scalars(row, epoch + 1)
                LOGGER.info(
                    "epoch %d/%d  train_loss %.4f  val_loss %.4f  top1 %.2f  top5 %.2f%s  lr %.3g  %.4g img/s  "
                    "%.1fs%s", epoch + 1, args.epochs, row["train_loss"], row["val_loss"], row["val_top1"],
                    row["val_top5"], f"  ema_top1 {row['ema_val_top1']:.2f}" if self.ema is not None else "",
                    row["lr"], row["img_per_s"], row["time_s"], "  *best" if is_best else "",
                )
        finally:
            if tb is not None:
                tb.close()
        if self.start_epoch >= args.epochs:
            LOGGER.info("nothing to do: the checkpoint already has %d of %d epochs", self.start_epoch, args.epochs)
        return dict(self.history[-1]) if self.history else {}

    def train_one_epoch(self, epoch: int, start_step: int) -> dict:
        args, info, device = self.args, self.info, self.device
        self.train_model.train()
        self.sampler.set_epoch(epoch, start_step)
        self.train_bad.start_epoch()
        loss_sum = torch.tensor(self.partial["loss_sum"], dtype=torch.float64, device=device)
        count = torch.tensor(float(self.partial["count"]), dtype=torch.float64, device=device)
        seen, lr, t0 = 0, self.schedule(self.global_step), time.perf_counter()
        bar = self.progress(self.train_loader, total=len(self.train_loader),
                            desc=f"epoch {epoch + 1}/{args.epochs}")
        for step, (images, labels, bad) in enumerate(bar, start=start_step):
            self.train_bad.add(bad, self.epoch_images)
            images = normalize(images.to(device, non_blocking=True))  # (B, 3, H, W) float32
            labels = labels.to(device, non_blocking=True)
            seed = derive_seed(args.seed, STREAM_STEP, epoch, step, info.rank)
            torch.manual_seed(seed)  # drop path draws from the global generator
            images, targets = self.mixup(images, labels, np.random.default_rng(seed))
            lr = self.schedule.apply(self.optimizer, self.global_step)
            with autocast(device, args.amp):
                logits = self.train_model(images)
            loss = soft_cross_entropy(logits, targets)
            self.scaler.scale(loss).backward()
            if args.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.raw.parameters(), args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.raw)
            self.global_step += 1
            loss_sum += loss.detach().double() * labels.numel()
            count += labels.numel()
            seen += labels.numel()
            if (step + 1) % 10 == 0 or step + 1 == self.steps_per_epoch:
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"training loss is {value} at epoch {epoch + 1} step {step + 1}: lower --lr or use "
                        f"--amp bf16/none"
                    )
                if hasattr(bar, "set_postfix"):
                    rate = seen * info.world_size / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", refresh=False)
            every = args.save_every_steps
            if every and self.global_step % every == 0 and step + 1 < self.steps_per_epoch:
                totals = D.all_reduce_sum(torch.stack([loss_sum, count]), info).tolist()
                self.save_last(epoch, step + 1, dict(loss_sum=totals[0], count=int(totals[1])))
        elapsed = time.perf_counter() - t0
        totals = D.all_reduce_sum(
            torch.stack([loss_sum, count, torch.tensor(float(seen), dtype=torch.float64, device=device),
                         torch.tensor(float(len(self.train_bad.epoch_bad)), dtype=torch.float64, device=device)]),
            info,
        ).tolist()
        self.train_bad.check_total(int(totals[3]), self.epoch_images)
        self.partial = dict(loss_sum=0.0, count=0)
        loss = totals[0] / max(totals[1], 1.0)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss} in epoch {epoch + 1}: lower --lr or use --amp bf16")
        return dict(loss=loss, lr=lr, img_per_s=totals[2] / max(elapsed, 1e-9))


def _norm(v):
    """Config values as compared on resume: lists and tuples alike."""
    return tuple(v) if isinstance(v, (list, tuple)) else v
