"""What a run leaves for people to read: metrics.csv, curves.png, config.yaml and TensorBoard scalars.

Only rank 0 calls these. metrics.csv is rewritten whole from the run's history (kept in the checkpoint), so
a resumed run never holds duplicate or orphaned rows from the epochs after its last checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess
from pathlib import Path

import yaml

from ultra_vil.checkpoints import atomic_write

LOGGER = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s", "time_s")
EMA_COLUMNS = ("ema_val_top1", "ema_val_top5")  # appended when --ema > 0


def write_metrics(history: list[dict], path: Path) -> None:
    """One row per epoch: METRIC_COLUMNS (+ EMA_COLUMNS if the rows have them); written atomically."""
    columns = list(METRIC_COLUMNS) + [c for c in EMA_COLUMNS if history and c in history[0]]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, text.getvalue())


def plot_curves(history: list[dict], path: Path) -> None:
    """curves.png: train/val loss and val top-1 (top-5 dashed) over epochs."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe in DataLoader-forking processes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train (augmented, soft targets)")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [r["val_top1"] for r in history], "o-", label="val top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in history], "--", label="val top-5")
    if history and "ema_val_top1" in history[0]:
        ax_acc.plot(epochs, [r["ema_val_top1"] for r in history], "o-", label="EMA val top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_config(resolved: dict, path: Path, header: list[str]) -> None:
    """config.yaml: every resolved argument under its argparse name, so `--config <out>/config.yaml` repeats
    the run; facts that are not arguments (git SHA, versions, world size) go in the comment header."""
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(resolved, sort_keys=False)
    atomic_write(path, text)


class TensorBoard:
    """Scalars to <out-dir>/tensorboard if the `tensorboard` package is installed; otherwise does nothing."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
        except ImportError:
            LOGGER.debug("tensorboard is not installed: no TensorBoard scalars")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(prefix + k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
