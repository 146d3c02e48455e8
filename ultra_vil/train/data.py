"""ImageFolder data for classifier training: OpenCV decoding, albumentations augmentation, seeded per sample.

Layout (ImageNet's): `root/train/<class>/**/*.jpg` and `root/val/<class>/**/*.jpg`; classes are the sorted
folder names of train/, and val/ must have exactly the same ones. Checks that run before training, each
raising `DataError` with the folders it concerns: a missing split, a split without class folders, a class
folder without images, a val class list that differs from train's.

Bad files found while training (unreadable, truncated, not an image) are reported, never silently dropped:
each comes back with its batch as (path, reason), the engine warns once per file and counts them, and the
run fails when more than `--max-bad-fraction` of an epoch is bad. In training a bad image is replaced by the
next readable one of the data set, so every batch keeps its size (DDP and torch.compile rely on fixed
shapes); in validation it is left out of the metrics.

Determinism: the augmentation of a sample depends only on (seed, epoch, index), never on the worker that
loads it or on what came before, so results do not change with --workers, with the number of processes, or
when a run is resumed in the middle of an epoch. The samplers yield (index, epoch) pairs so that persistent
workers see the epoch without any shared state.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ultra_vil.data.base import IMG_FORMATS
from ultra_vil.errors import ArgumentError, UserError

LOGGER = logging.getLogger(__name__)

# The one list of image extensions (Ultralytics' IMG_FORMATS, ultra_vil.data.base); compared lower-case. A file
# OpenCV cannot decode (HEIC, say) is then reported as a bad file, not silently left out of the index.
IMAGE_EXTENSIONS = tuple(f".{ext}" for ext in sorted(IMG_FORMATS))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("3aug", "rrc", "none")
MAX_SUBSTITUTE_TRIES = 16  # consecutive bad files after one bad training image before giving up

# Independent random streams derived from the run's seed (see derive_seed).
STREAM_AUGMENT, STREAM_PERMUTATION, STREAM_STEP, STREAM_WORKER = 1, 2, 3, 4


class DataError(UserError, ValueError):
    """The data cannot be trained on as it is; the message names the files or folders concerned."""


class BadImageError(Exception):
    """One file could not be read as an image."""


def derive_seed(seed: int, stream: int, *parts: int) -> int:
    """A 63-bit seed for one use of randomness, e.g. (seed, STREAM_AUGMENT, epoch, index).

    SeedSequence hashes the tuple, so neighbouring epochs or indices get unrelated streams.
    """
    state = np.random.SeedSequence([seed, stream, *parts]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


@dataclass
class ImageFolderIndex:
    """The files of one split: `paths[i]` (relative to `root`, bytes) has label `labels[i]` into `classes`.

    Paths are kept in one NumPy array rather than a list of Python strings, so DataLoader workers do not copy
    the index page by page as reference counts change (1.28M ImageNet paths take ~40 MB this way).
    """

    root: Path
    classes: list[str]
    paths: np.ndarray  # (N,) bytes
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.paths[i])


def _image_files(folder: Path) -> list[str]:
    """Image files below `folder` (recursively, sorted, hidden entries skipped), relative to `folder`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


def scan_image_folder(root: str | Path, split: str) -> ImageFolderIndex:
    """Index `root/split/<class>/...`; raises DataError for a missing split, no classes or an empty class."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} does not exist: --data must be an ImageFolder root with {split}/<class>/<image> "
            f"(e.g. /data/imagenet/{split}/n01440764/x.JPEG)"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders: expected {split}/<class>/<image>")
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        files = _image_files(split_dir / name)
        if not files:
            empty.append(str(split_dir / name))
        paths += [os.fsencode(os.path.join(name, f)) for f in files]
        labels += [label] * len(files)
    if empty:
        raise DataError(
            f"{len(empty)} empty class folder(s), with no image files ({', '.join(IMAGE_EXTENSIONS)}): "
            + ", ".join(empty)
            + ". Remove the folder(s) or add images: every class needs examples."
        )
    return ImageFolderIndex(split_dir, classes, np.array(paths), np.array(labels, dtype=np.int64))


def check_class_count(classes: list[str], split_dir: Path, allow_single_class: bool = False) -> None:
    """One class folder trains to loss 0 and "100% top-1" whatever the model learns: an error, or with
    `allow_single_class` (--allow-single-class) a warning."""
    if len(classes) != 1:
        return
    message = (
        f"{split_dir} has a single class folder ({classes[0]}): cross-entropy over one class is 0 for any model, "
        "so the loss and top-1 (100%) would say nothing"
    )
    if not allow_single_class:
        raise DataError(f"{message}. Add the other classes' folders, or pass --allow-single-class")
    LOGGER.warning("%s (--allow-single-class)", message)


def check_same_classes(train: list[str], val: list[str], train_dir: Path, val_dir: Path) -> None:
    """Raise DataError unless val has exactly the class folders of train (labels are indices into them)."""
    if train == val:
        return
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))

    def show(names: list[str]) -> str:
        return ", ".join(names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")

    parts = [f"class folders of {val_dir} differ from those of {train_dir}"]
    if missing:
        parts.append(f"missing in val: {show(missing)}")
    if extra:
        parts.append(f"only in val: {show(extra)}")
    raise DataError("; ".join(parts))


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG that ends before its image data (no SOS marker FFDA) or whose last scan is not followed by an
    end-of-image marker (FFD9).

    Entropy-coded data never contains FFD9 (0xFF is byte-stuffed), so this is exact for a file cut inside its
    scan data. OpenCV 5 refuses such files anyway; OpenCV 4 returns a grey-filled image with only a warning.
    """
    raw = data.tobytes()
    sos = raw.rfind(b"\xff\xda")
    return sos < 0 or raw.rfind(b"\xff\xd9") < sos


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); grey, 16-bit and alpha images are converted.

    Raises BadImageError with the reason for empty, truncated or undecodable files.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    except OSError as e:
        raise BadImageError(f"cannot read file: {e.strerror or e}") from None
    if data.size == 0:
        raise BadImageError("empty file")
    if data[:2].tobytes() == b"\xff\xd8" and _is_truncated_jpeg(data):
        raise BadImageError("truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # (H, W, 3) BGR
    except cv2.error as e:
        raise BadImageError(f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1]})") from None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadImageError("OpenCV cannot decode it (not an image, or a truncated/corrupt file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def build_train_transform(
    img_size: int, aug: str = "3aug", rrc_scale: tuple[float, float] = (0.08, 1.0), color_jitter: float = 0.3
) -> A.Compose:
    """The paper's training augmentation (VisionLSTM2 pretrain yamls, after DeiT III):

    "3aug": RandomResizedCrop(scale) + horizontal flip + 3-Augment (one of grey / solarize / Gaussian blur
    sigma 0.1-2, DeiT III) + ColorJitter(b = c = s = color_jitter, hue 0); "rrc": without 3-Augment;
    "none": the deterministic eval transform (for equivalence tests and debugging). Bicubic resampling.
    """
    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {aug!r}; expected one of {AUGMENTATIONS}")
    if aug == "none":
        return build_eval_transform(img_size)
    ops = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=tuple(rrc_scale), interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(p=0.5),
    ]
    if aug == "3aug":
        ops.append(
            A.OneOf(
                [
                    A.ToGray(p=1.0),
                    A.Solarize(threshold_range=(0.5, 0.5), p=1.0),  # threshold 128 of 255, as DeiT III
                    A.GaussianBlur(sigma_limit=(0.1, 2.0), p=1.0),
                ],
                p=1.0,
            )
        )
    if color_jitter > 0:
        j = color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0))
    return A.Compose(ops)


def build_eval_transform(img_size: int, crop_ratio: float = 0.875) -> A.Compose:
    """Resize the shorter side to img_size / crop_ratio (bicubic), then centre-crop img_size x img_size.

    crop_ratio 0.875 is the common ImageNet protocol (256 -> 224); the ViL yamls resize straight to the crop
    size, i.e. crop_ratio 1.0.
    """
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=round(img_size / crop_ratio), interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(height=img_size, width=img_size),
        ]
    )


class ImageFolderDataset(Dataset):
    """Indexed by (index, epoch) pairs from the samplers below; returns (image (3, H, W) uint8, label, bad).

    `bad` lists (path, reason) of every unreadable file met while loading this item. With
    `substitute_bad` (training) a bad file is replaced by the next readable one; otherwise (validation) the
    image is None and the collate function drops it.
    """

    def __init__(self, index: ImageFolderIndex, transform: A.Compose, seed: int, substitute_bad: bool) -> None:
        self.index = index
        self.transform = transform
        self.seed = seed
        self.substitute_bad = substitute_bad

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor | None, int, list[tuple[str, str]]]:
        i, epoch = item
        bad: list[tuple[str, str]] = []
        for j in range(MAX_SUBSTITUTE_TRIES if self.substitute_bad else 1):
            k = (i + j) % len(self.index)
            path = self.index.path(k)
            try:
                image = read_image(path)
                break
            except BadImageError as e:
                bad.append((str(path), str(e)))
        else:
            if not self.substitute_bad:
                return None, int(self.index.labels[i]), bad
            raise DataError(
                f"{MAX_SUBSTITUTE_TRIES} consecutive unreadable images from {bad[0][0]} on: "
                + "; ".join(f"{p}: {r}" for p, r in bad[:3])
            )
        seed = derive_seed(self.seed, STREAM_AUGMENT, epoch, i)
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.transform(image=image)["image"]  # (H, W, 3) uint8
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.index.labels[k]), bad


def collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str]]]:
    """Stack the readable images: (B, 3, H, W) uint8 (None if none is readable), (B,) int64, all bad files."""
    bad = [b for _, _, item_bad in batch for b in item_bad]
    good = [(img, label) for img, label, _ in batch if img is not None]
    if not good:
        return None, torch.zeros(0, dtype=torch.int64), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good], dtype=torch.int64), bad


class TrainSampler(Sampler):
    """Global-batch sharding: each epoch one permutation of the data set (seeded by seed and epoch) is cut into
    global batches, the incomplete last one is dropped, and rank r takes slice r of each global batch.

    So with any number of processes the same images form global batch k, and a single process with the same
    --batch-size sees exactly what all ranks of a DDP run see together: no padding, no repeated samples.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int) -> None:
        if global_batch % world_size:
            raise ArgumentError(f"batch size {global_batch} is not divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise DataError(f"{num_samples} training images are fewer than one batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = num_samples // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from global batch `start_step` (to resume in the middle of an epoch)."""
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_PERMUTATION, self.epoch))
        perm = torch.randperm(self.num_samples, generator=g)[: self.steps_per_epoch * self.global_batch]
        batches = perm.view(self.steps_per_epoch, self.world_size, self.local_batch)[self.start_step :, self.rank]
        for i in batches.flatten().tolist():
            yield i, self.epoch

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch


class EvalSampler(Sampler):
    """Every image exactly once over all ranks (rank r takes r, r + world, ...): exact metrics, no padding."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self):
        for i in self.indices:
            yield i, 0

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(worker_id: int) -> None:
    """Seed the global generators of a loader worker (augmentation itself is seeded per sample) and keep
    OpenCV to one thread per worker, so workers do not oversubscribe the cores."""
    info = torch.utils.data.get_worker_info()
    seed = derive_seed(info.seed % 2**32, STREAM_WORKER, worker_id)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cv2.setNumThreads(1)


def make_loader(
    dataset: ImageFolderDataset, sampler: Sampler, batch_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,  # the samplers already yield whole batches (train) or every image once (eval)
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255  # (1, 3, 1, 1) in uint8 units
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return mean, std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float32 normalised with the ImageNet mean and std.

    Done on the training device rather than in the workers: a uint8 batch is a quarter of the bytes to move.
    """
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std
