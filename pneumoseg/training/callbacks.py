"""Training side effects: history and curves, throughput, snapshots, per-epoch seeding, atomic checkpoints.

* :class:`HistoryCallback` (rank zero) rewrites ``RUN/history.csv`` and ``RUN/curves.png`` at the
  end of every epoch, atomically. Its rows are part of the checkpoint (callback state), so a
  resumed run's history is exactly that of an uninterrupted one. Columns: ``epoch, lr,
  train_loss, val_loss, train_dice_kaggle, val_dice_kaggle, val_dice_positive``, one
  ``train_<part>`` per loss part, ``train_img_per_s`` and ``epoch_time_s``.
* :class:`ThroughputMonitor` measures training images per second (all ranks together) from the
  first batch's start to the last batch's end of each epoch (data loading included, validation
  excluded).
* :class:`LastCheckpoint` saves ``last.ckpt`` after every epoch (for resume).
* :class:`SnapshotCheckpoint` saves ``snapshot-K.ckpt`` at the end of each snapshot cycle.
* :class:`StepSeed` reseeds torch's global generator before each training batch from (seed,
  epoch, batch, rank), so dropout draws do not depend on where a run was interrupted.
* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary name, then renames it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumoseg.atomic import atomic_path, atomic_write_text
from pneumoseg.training.schedules import SnapshotCallbackBuilder

__all__ = [
    "HISTORY_COLUMNS",
    "AtomicCheckpointIO",
    "HistoryCallback",
    "LastCheckpoint",
    "SnapshotCheckpoint",
    "StepSeed",
    "ThroughputMonitor",
    "plot_history",
]

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "train_dice_kaggle", "val_dice_kaggle",
                   "val_dice_positive"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then rename (no half-written .ckpt)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        del storage_options
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class StepSeed(L.Callback):
    """``torch.manual_seed`` from (seed, epoch, batch, global rank) before each training batch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        key = np.random.SeedSequence([self.seed, trainer.current_epoch, batch_idx, trainer.global_rank])
        torch.manual_seed(int(key.generate_state(1, np.uint64)[0] >> np.uint64(1)))


class ThroughputMonitor(L.Callback):
    """Training images per second of the last epoch (``img_per_s``), over all ranks."""

    def __init__(self) -> None:
        self.img_per_s = math.nan
        self.epoch_time_s = math.nan
        self._start = 0.0
        self._end = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._end = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._images += int(batch["image"].shape[0]) * trainer.world_size
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            self._end = max(self._end, time.perf_counter())
        self.epoch_time_s = self._end - self._start
        self.img_per_s = self._images / self.epoch_time_s if self.epoch_time_s > 0 else math.nan


class LastCheckpoint(Checkpoint):
    """Save ``dirpath/last.ckpt`` at the end of every training epoch, after the best-checkpoint update.

    (Lightning's ``save_last`` only rewrites last.ckpt on epochs that also saved a top-k
    checkpoint.) Being a ``Checkpoint``, it runs after the other callbacks' epoch-end hooks, so
    the file holds this epoch's history row and best score.
    """

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        self.dirpath = Path(dirpath)

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)


class SnapshotCheckpoint(L.Callback):
    """Save ``dirpath/snapshot-K.ckpt`` (weights only) at the end of snapshot cycle K (K = 1, 2, ...)."""

    def __init__(self, dirpath: str | os.PathLike[str], builder: SnapshotCallbackBuilder) -> None:
        self.dirpath = Path(dirpath)
        self.builder = builder

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.builder.is_snapshot_epoch(epoch) and not trainer.sanity_checking:
            k = (epoch + 1) // self.builder.cycle
            trainer.save_checkpoint(self.dirpath / f"snapshot-{k}.ckpt", weights_only=True)


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


class HistoryCallback(L.Callback):
    """``RUN/history.csv`` and ``RUN/curves.png`` after each epoch (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike[str], throughput: ThroughputMonitor | None = None,
                 plot: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.throughput = throughput
        self.plot = plot
        self.rows: list[dict[str, float]] = []
        self._lr = math.nan

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "history.csv"

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = dict(trainer.callback_metrics)
        row: dict[str, float] = {"epoch": trainer.current_epoch, "lr": self._lr}
        for col in HISTORY_COLUMNS[2:]:
            stage, _, name = col.partition("_")
            row[col] = _value(metrics, f"{stage}/{name}")
        for key in sorted(metrics):
            name = key.removeprefix("train/")
            if key.startswith("train/") and f"train_{name}" not in row and name != "img_per_s":
                row[f"train_{name}"] = _value(metrics, key)
        if self.throughput is not None:
            row["train_img_per_s"] = self.throughput.img_per_s
            row["epoch_time_s"] = self.throughput.epoch_time_s
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        """Rewrite history.csv (and curves.png) from ``self.rows``."""
        columns = list(HISTORY_COLUMNS)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else f"{v:.6g}") for k, v in r.items()})
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.plot:
            plot_history(self.rows, self.run_dir / "curves.png")


def plot_history(rows: list[dict[str, float]], path: str | os.PathLike[str]) -> None:
    """Two panels like the seed's ``plot_history``: Dice and loss per epoch, train vs validation."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    epochs = [r["epoch"] + 1 for r in rows]
    fig = Figure(figsize=(11, 4), dpi=100)
    for ax, metric, title in ((fig.add_subplot(1, 2, 1), "dice_kaggle", "Dice (per image, challenge)"),
                              (fig.add_subplot(1, 2, 2), "loss", "Loss")):
        for stage, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [r.get(f"{stage}_{metric}", math.nan) for r in rows], style, ms=3,
                    label="train" if stage == "train" else "validation")
        if metric == "dice_kaggle":
            ax.plot(epochs, [r.get("val_dice_positive", math.nan) for r in rows], "--", ms=3,
                    label="validation, positives only")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
