"""The config builds: an :class:`~pneumoseg.config.ExperimentConfig` -> data module, LightningModule, Trainer.

:func:`build_datamodule` (``data`` / ``augment`` / ``sampler``), :func:`build_module` (network, loss,
optimizer and scheduler factories, post-processing) and :func:`build_trainer` (the run folder's
callbacks, logger, devices, precision and the budget of a :class:`~pneumoseg.training.budget.StepPlan`).
``pneumoseg.training.run.train`` calls them and fits.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from torch import nn

from pneumoseg.config import ExperimentConfig
from pneumoseg.data.datamodule import SegmentationDataModule
from pneumoseg.errors import ConfigError
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.scoring.grid import validation_grid
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.training.budget import StepPlan, batch_limit
from pneumoseg.training.callbacks import (
    AtomicCheckpointIO,
    EpochLine,
    HistoryCallback,
    LastCheckpoint,
    SnapshotCheckpoint,
    StepSeed,
    StepSnapshotCheckpoint,
    ThroughputMonitor,
)
from pneumoseg.training.losses import create_loss
from pneumoseg.training.module import SegmentationModule
from pneumoseg.training.run_folder import build_model
from pneumoseg.training.schedules import SnapshotCallbackBuilder, optimizer_factory, scheduler_factory

__all__ = ["build_datamodule", "build_logger", "build_module", "build_trainer", "check_cache_size",
           "require_cache"]


def _monitor(cfg: ExperimentConfig) -> tuple[str, str]:
    """The monitored metric and its direction: ``("val/<train.monitor>", "max")`` (``"min"`` for loss)."""
    return f"val/{cfg.train.monitor}", "min" if cfg.train.monitor == "loss" else "max"


def build_module(cfg: ExperimentConfig, net: nn.Module | None = None,
                 total_steps: int | None = None) -> SegmentationModule:
    """The LightningModule: network, loss, optimizer/scheduler factories and post-processing.

    ``total_steps``: schedule over that many optimizer steps (a step budget; ``plan_steps``).
    """
    s, o = cfg.schedule, cfg.optim
    metric, mode = _monitor(cfg)
    return SegmentationModule(
        net if net is not None else build_model(cfg),
        create_loss(cfg.loss),
        optimizer_factory(o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum),
        Preprocessing.from_config(cfg),
        scheduler_factory(s.name, epochs=cfg.train.epochs, snapshots=s.snapshots, min_lr=s.min_lr,
                          factor=s.factor, patience=s.patience, monitor=metric, mode=mode,
                          total_steps=total_steps, warmup_steps=s.warmup_steps),
        postprocess=PostProcess(cfg.postprocess.threshold, cfg.postprocess.min_area),
        aux_weight=cfg.model.aux_weight if cfg.model.aux_classifier else 0.0,
        channels_last=cfg.train.channels_last,
        train_dice=cfg.train.train_dice,
        val_grid=validation_grid(cfg.data.size),
    )




def check_cache_size(cfg: ExperimentConfig, cache: Path) -> str | None:
    """A warning when ``CACHE/cache.json``'s size differs from ``data.size`` (ConfigError with strict_size)."""
    try:
        size = json.loads((cache / "cache.json").read_text(encoding="utf-8")).get("size")
    except (OSError, ValueError):
        return None
    if not isinstance(size, int) or size == cfg.data.size:
        return None
    what = "upsampled" if size < cfg.data.size else "downsampled"
    factor = (cfg.data.size / size) ** 2
    message = (f"{cache}: the cache holds {size} px images but data.size is {cfg.data.size}: every image is "
               f"{what} on the fly ({factor:.2g}x the pixels of the cache); set data.size={size} "
               f"(or prepare a {cfg.data.size} px cache)")
    if cfg.train.strict_size:
        raise ConfigError(message + " [train.strict_size]")
    return message


def require_cache(cfg: ExperimentConfig) -> Path:
    """``cfg.data.cache``; ConfigError saying how to set it when it is not."""
    if cfg.data.cache is None:
        raise ConfigError("data.cache is not set: pass --cache CACHE (or --set data.cache=CACHE)")
    return Path(cfg.data.cache)


def build_datamodule(cfg: ExperimentConfig) -> SegmentationDataModule:
    """The data module of ``cfg.data`` / ``augment`` / ``sampler``; ConfigError without a cache."""
    d = cfg.data
    require_cache(cfg)
    sampler = None
    if cfg.sampler is not None:
        sampler = {"pos_start": cfg.sampler.pos_start, "pos_end": cfg.sampler.pos_end,
                   "mode": cfg.sampler.mode, "epoch_length": cfg.sampler.epoch_length}
    return SegmentationDataModule(
        d.cache, fold=d.fold, size=Preprocessing.from_config(cfg).size, batch_size=cfg.train.batch_size,
        num_workers=d.num_workers,
        augment={"preset": cfg.augment.preset, "transforms": cfg.augment.transforms},
        sampler=sampler, epochs=cfg.train.epochs, seed=cfg.train.seed,
    )


def build_logger(name: str, run_dir: Path) -> Any:
    """The Lightning logger of ``train.logger`` under ``RUN/logs`` (CSV when the package is missing)."""
    from lightning.pytorch import loggers

    save = run_dir / "logs"
    if name == "none":
        return False
    try:
        if name == "tensorboard":
            return loggers.TensorBoardLogger(save, name="", version="")
        if name == "mlflow":
            return loggers.MLFlowLogger(experiment_name=run_dir.name, tracking_uri=f"file:{save / 'mlruns'}")
        if name == "wandb":
            return loggers.WandbLogger(name=run_dir.name, save_dir=str(save))
    except ModuleNotFoundError as exc:
        warnings.warn(f"train.logger={name}: {exc}; logging to CSV in {save} instead", stacklevel=2)
    return loggers.CSVLogger(save, name="", version="")


def build_trainer(cfg: ExperimentConfig, run_dir: str | os.PathLike[str], progress: bool = True,
                  callbacks: list[L.Callback] | tuple[L.Callback, ...] = (),
                  reload_train_loader: bool = False, plan: StepPlan | None = None) -> L.Trainer:
    """The Lightning Trainer with the run folder's callbacks (checkpoints, history, snapshots).

    ``reload_train_loader``: rebuild the train loader every epoch (epochs that differ in length).
    ``plan``: the resolved budget (``plan_steps``); a step plan stops the Trainer after exactly
    ``plan.steps`` optimizer steps. With ``progress`` and stdout not a terminal, one line per
    epoch (``EpochLine``) replaces the progress bar.
    """
    t = cfg.train
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    metric, mode = _monitor(cfg)
    throughput = ThroughputMonitor()
    cbs: list[L.Callback] = [StepSeed(t.seed), throughput, HistoryCallback(run_dir, throughput)]
    step_mode = plan is not None and plan.step_mode
    step_schedule = step_mode or cfg.schedule.warmup_steps > 0
    if cfg.schedule.name == "snapshot" and step_schedule and plan is not None:
        cbs.append(StepSnapshotCheckpoint(ckpt_dir, plan.steps, cfg.schedule.snapshots, cfg.schedule.warmup_steps))
    elif cfg.schedule.name == "snapshot":
        cbs.append(SnapshotCheckpoint(ckpt_dir, SnapshotCallbackBuilder(t.epochs, cfg.schedule.snapshots,
                                                                         cfg.optim.lr)))
    if step_mode and plan is not None:
        cbs.append(_StopAtBudget(plan.steps))
    if t.ema is not None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        cbs.append(EMAWeightAveraging(decay=t.ema))
    cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=metric, mode=mode, save_top_k=1,
                               save_last=False, auto_insert_metric_name=False, save_on_train_epoch_end=True,
                               enable_version_counter=False, every_n_epochs=_val_every(plan)))  # validated epochs
    cbs.append(LastCheckpoint(ckpt_dir))
    tty = sys.stdout.isatty()
    if progress and tty:
        cbs.append(RichProgressBar())
    elif progress:
        total = plan.steps if plan is not None else 0
        cbs.append(EpochLine(total, plan.epochs if plan is not None else t.epochs, throughput))
    cbs.extend(callbacks)
    strategy: Any = "auto"
    if t.devices > 1 or t.num_nodes > 1:
        unused = cfg.model.aux_classifier and cfg.model.aux_weight == 0
        strategy = "ddp_find_unused_parameters_true" if unused else "ddp"
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=-1 if step_mode else t.epochs,
        max_steps=plan.steps if step_mode and plan is not None else -1,
        check_val_every_n_epoch=_val_every(plan), accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=strategy, precision=cast(Any, t.precision),
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip, limit_train_batches=batch_limit(t.limit_train_batches),
        limit_val_batches=batch_limit(t.limit_val_batches), deterministic="warn" if t.deterministic else False,
        benchmark=not t.deterministic, callbacks=cbs, logger=build_logger(t.logger, run_dir),
        enable_progress_bar=progress and tty, enable_model_summary=False, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0, log_every_n_steps=_log_every(plan), reload_dataloaders_every_n_epochs=1 if reload_train_loader else 0,
    )


def _log_every(plan: StepPlan | None) -> int:
    """Logger interval: 50 steps, or less when the epochs are shorter (Lightning warns otherwise)."""
    if plan is None or not plan.steps_per_epoch:
        return 50
    return max(1, min(50, min(plan.steps_per_epoch)))


def _val_every(plan: StepPlan | None) -> int:
    """Validate every epoch, or every k-th when a step budget spans many tiny epochs (40-60 validations).

    k divides the plan's epochs, so the last epoch (cut at the budget: ``_StopAtBudget``) validates.
    """
    if plan is None or not plan.step_mode or plan.epochs <= 60:
        return 1
    for k in range(plan.epochs // 40, 1, -1):
        if plan.epochs % k == 0 and plan.epochs // k <= 60:
            return k
    return 1


class _StopAtBudget(L.Callback):
    """Ask the Trainer to stop once ``steps`` optimizer steps are taken, so the cut epoch still validates."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True

