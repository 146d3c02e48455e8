"""Command-line interface of classifier training: flags, YAML run configs, validation.

Precedence: built-in defaults < `--config FILE` (YAML, keys are the argparse names: `batch_size`, not
`batch-size`) < explicit flags. An unknown key, a value of the wrong type and a value out of range each stop
the run before anything is built, with an argparse error that names the key (exit status 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from ultra_vil.classifier import VARIANTS
from ultra_vil.train.data import AUGMENTATIONS

AMP_MODES = ("none", "bf16", "fp16")
PAPER_EPOCHS = {"vil_t": 800, "vil_t_plus": 800}  # ViL-T was pretrained 800 epochs, S and B 400 (yamls)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_classifier.py",
        description="Train or evaluate the ViL image classifier on an ImageFolder (one CPU to many GPUs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file whose keys (argparse names) replace these defaults")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="ImageFolder root with train/<class>/* and val/<class>/*")
    g.add_argument("--workers", type=int,
                   help="loader processes per training process (default: min(8, cores) on GPU; 0 on CPU, where they "
                        "would compete with the compute threads)")
    g.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="fail if more than this fraction of an epoch's images cannot be read")
    g.add_argument("--aug", choices=AUGMENTATIONS, default="3aug",
                   help="3aug: RandomResizedCrop + flip + 3-Augment + colour jitter (paper); rrc: no 3-Augment; "
                        "none: the eval transform")
    g.add_argument("--rrc-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                   help="area range of RandomResizedCrop")
    g.add_argument("--color-jitter", type=float, default=0.3, help="brightness/contrast/saturation jitter; 0 = off")
    g.add_argument("--crop-ratio", type=float, default=0.875, help="eval: resize to img_size / ratio, centre crop")
    g.add_argument("--allow-single-class", action="store_true",
                   help="train on one class folder (loss 0, top-1 100%% whatever the model does): warn, not fail")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=tuple(VARIANTS), default="vil_t", help="preset of ultra_vil.classifier")
    g.add_argument("--num-classes", type=int, help="head size (default: the number of class folders)")
    g.add_argument("--img-size", type=int, help="training resolution (default 224, or the checkpoint's)")
    g.add_argument("--patch-size", type=int, help="patch size (default 16, or the checkpoint's)")
    g.add_argument("--patch-stride", type=int, help="patch stride (default: patch size; 8 = long-sequence)")
    g.add_argument("--dim", type=int, help="override the preset's width (small models for tests and smoke runs)")
    g.add_argument("--num-blocks", type=int, help="override the preset's number of blocks")
    g.add_argument("--drop-path", type=float, help="drop-path rate (default: the preset's)")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute each block in backward: less memory at high resolution")
    g = p.add_argument_group("recipe (the paper's defaults)")
    g.add_argument("--epochs", type=int, help="default: the paper's pretraining length (ViL-T 800, S/B 400)")
    g.add_argument("--batch-size", type=int, default=2048, help="global batch, over all processes")
    g.add_argument("--lr", type=float, default=1e-3, help="lr for batch 1024: peak lr = lr x batch_size / 1024")
    g.add_argument("--min-lr", type=float, default=1e-6, help="end of the cosine schedule")
    g.add_argument("--warmup-epochs", type=float, default=5.0)
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW; none on norms, biases, pos embed")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"))
    g.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clipping; 0 = off")
    g.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay for fine-tuning; 1 = off")
    g.add_argument("--mixup", type=float, default=0.8, metavar="ALPHA", help="mixup alpha; 0 = off")
    g.add_argument("--cutmix", type=float, default=1.0, metavar="ALPHA", help="cutmix alpha; 0 = off")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="EMA of the weights; 0 = off")
    g = p.add_argument_group("run")
    g.add_argument("--amp", choices=AMP_MODES, help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out-dir", type=Path, default=Path("runs/classifier"))
    g.add_argument("--resume", nargs="?", const="auto", metavar="PATH",
                   help="continue from PATH (alone: <out-dir>/last.pt); with --eval-only: the checkpoint to test")
    g.add_argument("--eval-only", action="store_true", help="print val top-1/top-5 of --resume and exit")
    g.add_argument("--finetune", type=Path, metavar="PATH",
                   help="start from these weights: an ultra-vil checkpoint, a VisionLSTM2 state dict or a released "
                        "ViL .th file, matched by name (position embedding resized, head replaced if it differs; "
                        "a released file turns on its legacy norm)")
    g.add_argument("--save-every-steps", type=int, default=0, help="also write last.pt every N steps; 0 = off")
    g.add_argument("--debug", action="store_true",
                   help="on an error you can fix (bad file, argument or data), show the traceback besides the message")
    return p


def _coerce(action: argparse.Action, key: str, value, source: Path):
    """A YAML value converted like argparse converts a flag, or an error message naming the key."""
    where = f"{source}: key {key!r}"
    if value is None:
        return value
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if action.dest == "resume" and isinstance(value, bool):
        return "auto" if value else None
    if action.nargs not in (None, "?"):
        n = action.nargs
        if not isinstance(value, (list, tuple)) or (isinstance(n, int) and len(value) != n):
            raise ValueError(f"{where} must be a list of {n} values, got {value!r}")
        return tuple(_coerce_scalar(action, where, v) for v in value)
    return _coerce_scalar(action, where, value)


def _coerce_scalar(action: argparse.Action, where: str, value):
    kind = action.type or str
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ValueError(f"{where} must be a {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is int:
        if isinstance(value, float) or (isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    elif kind is float:
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    elif kind is Path:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a path (string), got {value!r}")
        value = Path(value)
    elif not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {list(action.choices)}, got {value!r}")
    return value


def load_config_defaults(parser: argparse.ArgumentParser, path: Path) -> dict:
    """Read a run YAML into {dest: value}, converted and checked against the parser's actions."""
    if not path.is_file():
        parser.error(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        parser.error(f"--config {path}: invalid YAML: {e}")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of argument names to values, got {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(str(k) for k in data if k not in actions)
    if unknown:
        hint = [k for k in unknown if k.replace("-", "_") in actions]
        parser.error(
            f"--config {path}: unknown key(s) {unknown}"
            + (f" (keys use underscores: {[k.replace('-', '_') for k in hint]})" if hint else "")
            + f"; valid keys: {sorted(actions)}"
        )
    out = {}
    for key, value in data.items():
        try:
            out[key] = _coerce(actions[key], key, value, path)
        except ValueError as e:
            parser.error(str(e))
    return out


def _flag(key: str) -> str:
    return f"{key} (--{key.replace('_', '-')})"


def validate(args: argparse.Namespace) -> list[str]:
    """Range and consistency checks; returns the errors, each naming its key."""
    errors = []

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            errors.append(f"{_flag(key)} {rule}, got {getattr(args, key)!r}")

    if args.data is None:
        errors.append(f"{_flag('data')} is required: an ImageFolder root with train/ and val/")
    if args.eval_only and not args.resume:
        errors.append(f"{_flag('eval_only')} needs --resume PATH, the checkpoint to evaluate")
    for key in ("epochs", "batch_size", "num_classes", "img_size", "patch_size", "patch_stride", "num_blocks"):
        value = getattr(args, key)
        need(value is None or value >= 1, key, "must be >= 1")
    for key in ("weight_decay", "warmup_epochs", "mixup", "cutmix", "workers", "save_every_steps", "clip_grad",
                "min_lr", "color_jitter"):
        value = getattr(args, key)
        need(value is None or value >= 0, key, "must be >= 0")
    need(args.lr > 0, "lr", "must be > 0")
    need(args.drop_path is None or 0 <= args.drop_path < 1, "drop_path", "must be in [0, 1)")
    need(0 <= args.ema < 1, "ema", "must be in [0, 1) (0 = off)")
    need(0 <= args.max_bad_fraction <= 1, "max_bad_fraction", "must be in [0, 1]")
    need(0 <= args.smoothing < 1, "smoothing", "must be in [0, 1)")
    need(0 < args.layer_decay <= 1, "layer_decay", "must be in (0, 1] (1 = off)")
    need(0 < args.crop_ratio <= 1, "crop_ratio", "must be in (0, 1]")
    need(all(0 <= b < 1 for b in args.betas), "betas", "must be two values in [0, 1)")
    lo, hi = args.rrc_scale
    need(0 < lo <= hi <= 1, "rrc_scale", "must be MIN MAX with 0 < MIN <= MAX <= 1")
    need(args.dim is None or (args.dim >= 8 and args.dim % 8 == 0), "dim", "must be a positive multiple of 8")
    dev = args.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "device",
         "must be auto, cpu, cuda or cuda:N")
    if not args.eval_only and not errors:
        img, patch = args.img_size or 224, args.patch_size or 16
        stride = args.patch_stride or patch
        if stride > patch:
            errors.append(f"{_flag('patch_stride')} must be <= patch_size {patch}, got {stride}")
        elif img < patch or (img - patch) % stride:
            errors.append(
                f"{_flag('img_size')} {img} does not tile into patches of patch_size {patch} with patch_stride "
                f"{stride}: need (img_size - patch_size) divisible by patch_stride"
            )
    return errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults < --config file < explicit flags; then validation. Errors exit with status 2."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        parser.set_defaults(**load_config_defaults(parser, first.config))
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = PAPER_EPOCHS.get(args.model, 400)
    if args.workers is None:  # GPU: loader processes keep it fed; CPU: the cores are better spent on the math
        on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        args.workers = max(0, min(8, per_process)) if on_gpu else 0
    args.betas, args.rrc_scale = tuple(args.betas), tuple(args.rrc_scale)
    errors = validate(args)
    if errors:
        parser.error("; ".join(errors))
    return args
