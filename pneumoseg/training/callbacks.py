"""Training side effects: history and curves, throughput, snapshots, per-epoch seeding, atomic checkpoints.

* :class:`HistoryCallback` (rank zero) rewrites ``RUN/history.csv`` and ``RUN/curves.png`` at the
  end of every epoch, atomically. Its rows are part of the checkpoint (callback state), so a
  resumed run's history is exactly that of an uninterrupted one. Columns: ``epoch, lr,
  train_loss, val_loss, train_dice_kaggle, val_dice_kaggle, val_dice_positive, val_pred_positive,
  val_dice_kaggle_tuned, val_dice_positive_tuned, val_pred_positive_tuned, val_positives_found,
  val_empty_baseline, val_rule_top, val_rule_min_area_train_px, val_rule_bottom, step`` (the ``_tuned`` ones: the best rule
  of the validation grid, ``training.module``; ``val_empty_baseline``: what predicting nothing scores
  in dice_kaggle), one ``train_<part>`` per loss part, ``train_img_per_s`` and ``epoch_time_s``. ``epoch``
  counts from 1 (as everything a user sees); ``step`` is the optimizer steps taken so far;
  ``lr`` the rate at the epoch's start.
* :class:`EpochLine` prints one line per epoch (epoch, step, loss, Dice, lr, img/s, ETA): the
  progress output when stdout is not a terminal (nohup, SLURM).
* :class:`ThroughputMonitor` measures training images per second (all ranks together) from the
  first batch's start to the last batch's end of each epoch (data loading included, validation
  excluded).
* :class:`LastCheckpoint` saves ``last.ckpt`` after every epoch (for resume); every checkpoint saved
  at an epoch's end is stored as a finished epoch (:func:`mark_epoch_finished`), so a resume starts
  the next epoch instead of replaying this one's end.
* :class:`Interruption` records the signal that stopped ``fit`` (SIGTERM, Ctrl-C).
* :class:`SnapshotCheckpoint` saves ``snapshot-K.ckpt`` at the end of each snapshot cycle (of
  epochs; :class:`StepSnapshotCheckpoint`: of optimizer steps, for step budgets).
* :class:`StepSeed` reseeds torch's global generator before each training batch from (seed,
  epoch, batch, rank), so dropout draws do not depend on where a run was interrupted.
* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary name, then renames it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.training.schedules import SnapshotCallbackBuilder

__all__ = [
    "HISTORY_COLUMNS",
    "AtomicCheckpointIO",
    "EpochLine",
    "HistoryCallback",
    "Interruption",
    "LastCheckpoint",
    "SnapshotCheckpoint",
    "StepSeed",
    "StepSnapshotCheckpoint",
    "ThroughputMonitor",
    "mark_epoch_finished",
    "plot_history",
]

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "train_dice_kaggle", "val_dice_kaggle",
                   "val_dice_positive", "val_pred_positive", "val_dice_kaggle_tuned", "val_dice_positive_tuned",
                   "val_pred_positive_tuned", "val_positives_found", "val_empty_baseline", "val_rule_top", "val_rule_min_area_train_px",
                   "val_rule_bottom", "step"]


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
        self._start = math.nan  # NaN until an epoch starts in this process (never a time across a restart)
        self._end = math.nan
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
        self._start = self._end = math.nan


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

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        progress = trainer.fit_loop.epoch_progress.current
        if progress.processed == progress.completed + 1:  # inside the epoch-end hooks (best.ckpt, last.ckpt)
            mark_epoch_finished(checkpoint)


def mark_epoch_finished(checkpoint: dict[str, Any]) -> None:
    """Store a checkpoint saved in ``on_train_epoch_end`` as the state after that epoch (in place).

    Lightning counts an epoch completed only after its end hooks, so such a checkpoint holds a
    "processed, not completed" epoch. Resuming it with a step budget (``max_steps``: Lightning then
    always restarts its loops) replays the epoch's end: the history got a NaN row, the epoch and
    step counts were off by one, and the next epoch began at the last one's batch count. Marked
    finished (epoch completed, the batch counters of the next epoch at zero), the resumed run
    starts the next epoch like an uninterrupted one. Checkpoints without loop state are left as is.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return
    for scope in fit["epoch_progress"].values():
        scope["completed"] = scope["processed"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
        if key in fit:
            fit[key]["current"] = {k: 0 for k in fit[key]["current"]}
            if "is_last_batch" in fit[key]:
                fit[key]["is_last_batch"] = False
    optim = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    for part in optim.values():
        part["current"] = {k: 0 for k in part["current"]}


class Interruption(L.Callback):
    """Remember what stopped ``fit``: Lightning's SIGTERM exception or Ctrl-C (``exception``; None: nothing).

    Lightning's signal connector turns SIGTERM into ``trainer.received_sigterm``; the loops raise
    ``SIGTERMException`` (a ``SystemExit`` with code 0) at the next batch's end, and Ctrl-C ends in
    ``sys.exit(1)``: after ``fit`` both look like an exit. ``signal_name`` / ``exit_code`` name it.
    """

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self.exception = exception

    @property
    def signal_name(self) -> str:
        return "Ctrl-C" if isinstance(self.exception, KeyboardInterrupt) else "SIGTERM"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process killed by it."""
        return 128 + (signal.SIGINT if isinstance(self.exception, KeyboardInterrupt) else signal.SIGTERM)


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


class StepSnapshotCheckpoint(L.Callback):
    """Save ``snapshot-K.ckpt`` after optimizer step ``warmup + K * cycle`` (K = 1..M; the last at ``total``)."""

    def __init__(self, dirpath: str | os.PathLike[str], total: int, snapshots: int, warmup: int = 0) -> None:
        self.dirpath = Path(dirpath)
        span = max(total - warmup, 1)
        cycle = math.ceil(span / snapshots)
        self.marks = {min(warmup + k * cycle, total): k for k in range(1, snapshots + 1)}
        self._saved: set[int] = set()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step in self.marks and step not in self._saved:
            self._saved.add(step)
            trainer.save_checkpoint(self.dirpath / f"snapshot-{self.marks[step]}.ckpt", weights_only=True)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class EpochLine(L.Callback):
    """One line per epoch on ``write`` (default stdout), rank zero: epoch, step, loss, Dice, lr, img/s, ETA.

    ``total_steps`` (the run's optimizer-step budget) gives the ETA: time so far / steps so far x
    steps left. Epochs count from 1.
    """

    def __init__(self, total_steps: int, epochs: int | None = None,
                 throughput: ThroughputMonitor | None = None,
                 write: Callable[[str], None] | None = None) -> None:
        self.total_steps = total_steps
        self.epochs = epochs
        self.throughput = throughput
        self.write = write or (lambda line: print(line, file=sys.stdout, flush=True))
        self._t0 = math.nan
        self._step0 = 0
        self._lr = math.nan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = dict(trainer.callback_metrics)
        step = trainer.global_step
        done = step - self._step0
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * max(self.total_steps - step, 0) if done > 0 else math.nan
        of = f"/{self.epochs}" if self.epochs else ""
        parts = [f"epoch {trainer.current_epoch + 1}{of}", f"step {step}/{self.total_steps}",
                 f"loss {_value(m, 'train/loss'):.4f}"]
        if "val/dice_kaggle" in m:
            parts.append(f"val dice {_value(m, 'val/dice_kaggle'):.4f} (pos {_value(m, 'val/dice_positive'):.4f})")
        parts.append(f"lr {self._lr:.2e}")
        if self.throughput is not None and math.isfinite(self.throughput.img_per_s):
            parts.append(f"{self.throughput.img_per_s:.1f} img/s")
        parts.append(f"ETA {_fmt_time(eta)}")
        self.write("  ".join(parts))


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


class HistoryCallback(L.Callback):
    """``RUN/history.csv`` and ``RUN/curves.png`` after each epoch (see the module docstring)."""

    #: seconds between two renderings of curves.png (short epochs: the plot would cost more than them)
    PLOT_EVERY_S = 20.0

    def __init__(self, run_dir: str | os.PathLike[str], throughput: ThroughputMonitor | None = None,
                 plot: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.throughput = throughput
        self.plot = plot
        self.rows: list[dict[str, float]] = []
        self._lr = math.nan
        self._plotted = -math.inf

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
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "lr": self._lr,
                                 "step": trainer.global_step}
        for col in HISTORY_COLUMNS[2:-1]:
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
            self.write(plot=time.monotonic() - self._plotted >= self.PLOT_EVERY_S)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            self.write()

    def write(self, plot: bool = True) -> None:
        """Rewrite history.csv (and, with ``plot``, curves.png) from ``self.rows``."""
        columns = list(HISTORY_COLUMNS)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (int(v) if k in ("epoch", "step") else f"{v:.6g}") for k, v in r.items()})
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.plot and plot:
            plot_history(self.rows, self.run_dir / "curves.png")
            self._plotted = time.monotonic()


def plot_history(rows: list[dict[str, float]], path: str | os.PathLike[str]) -> None:
    """Panels like the seed's ``plot_history`` (Dice and loss per epoch, train vs validation), plus
    the learning rate. ``rows``' ``epoch`` counts from 1 (history.csv)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(15, 4), dpi=100)
    lr_ax = fig.add_subplot(1, 3, 3)
    lrs = [r.get("lr", math.nan) for r in rows]
    lr_ax.plot(epochs, lrs, "-o", ms=3, color="tab:green")
    if any(isinstance(v, int | float) and v > 0 for v in lrs):
        lr_ax.set_yscale("log")
    lr_ax.set_title("Learning rate (epoch start)")
    lr_ax.set_xlabel("epoch")
    lr_ax.grid(alpha=0.3)
    for ax, metric, title in ((fig.add_subplot(1, 3, 1), "dice_kaggle", "Dice (per image, challenge)"),
                              (fig.add_subplot(1, 3, 2), "loss", "Loss")):
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
