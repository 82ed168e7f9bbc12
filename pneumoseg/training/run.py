"""``train(cfg, run_dir)``: build everything from the config, fit, return where the results are.

The config builds, the loop runs: this module turns an :class:`~pneumoseg.config.ExperimentConfig`
into a network (``pneumoseg.models``), a loss (``pneumoseg.losses``), optimizer and scheduler
factories (``schedules``), the post-processing (``pneumoseg.postprocess``), the data module and a
Lightning Trainer, then calls ``fit``. The run folder (docs/architecture.md)::

    RUN/config.yaml                       the resolved config (reload with load_config(RUN))
    RUN/preprocessing.json                the model's input rule (load_preprocessing(RUN)); also in
                                          every checkpoint under "preprocessing"
    RUN/checkpoints/best.ckpt             best by val/<train.monitor> (max; min for "loss")
    RUN/checkpoints/last.ckpt             end of the last finished epoch, for resume
    RUN/checkpoints/snapshot-K.ckpt       schedule "snapshot": end of cycle K
    RUN/history.csv  RUN/curves.png       one row / point per epoch

Resume: ``train(cfg, RUN, resume=True)`` continues from ``last.ckpt`` (weights, optimizer,
scheduler, epoch, best score, history); with the same config the result equals an uninterrupted
run's (samplers and augmentations are seeded per epoch and item, torch per epoch).

Devices: ``train.devices: N > 1`` trains with DDP (one process per GPU; Lightning relaunches the
command for ranks 1..N-1, so the run folder must not depend on the clock: the CLI passes it down
in ``PNEUMOSEG_RUN_DIR``). Multi-node: start one process per GPU with the launcher and set
``train.num_nodes``; Lightning reads the rank from the environment, e.g.::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m pneumoseg.cli.main train exp.yaml --out runs/exp --devices 8 --set train.num_nodes=2
    # SLURM (#SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8):
    srun pneumoseg train exp.yaml --out runs/exp --devices 8 --set train.num_nodes=2

``train.batch_size`` is per GPU. Mixed precision: ``train.precision: bf16-mixed`` (or
``16-mixed``; ``bf16-true`` / ``16-true`` are refused at config load: half-precision weights and
Adam state lose updates); losses are computed in float32. ``train.channels_last`` applies on CUDA.
``train.deterministic`` (default true) uses deterministic algorithms (set it false for speed: cuDNN
autotuning). With the ``positives_once`` sampler and a decaying share the epochs differ in length,
so the train loader is rebuilt every epoch (``reload_dataloaders_every_n_epochs=1``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from pneumoseg.atomic import atomic_path, atomic_write_text
from pneumoseg.config import ExperimentConfig, dump_config, load_config
from pneumoseg.data.datamodule import SegmentationDataModule
from pneumoseg.data.dataset import check_cache
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.losses import create_loss
from pneumoseg.models import create_model
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.postprocess import PostProcess
from pneumoseg.training.callbacks import (
    AtomicCheckpointIO,
    StepSeed,
    HistoryCallback,
    LastCheckpoint,
    SnapshotCheckpoint,
    ThroughputMonitor,
)
from pneumoseg.training.module import SegmentationModule
from pneumoseg.training.schedules import SnapshotCallbackBuilder, optimizer_factory, scheduler_factory

class _DropAdvertising(logging.Filter):
    """Lightning logs a sales tip for its cloud logger on every Trainer; keep the console useful."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every fit.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# the module normalises batches on the device on purpose (uint8 loaders); Lightning warns about it
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer` in `LightningModule`")

__all__ = [
    "RUN_DIR_ENV",
    "TrainResult",
    "build_datamodule",
    "build_model",
    "build_module",
    "build_trainer",
    "default_run_dir",
    "init_run",
    "list_checkpoints",
    "load_preprocessing",
    "load_run",
    "save_preprocessing",
    "train",
]

RUN_DIR_ENV = "PNEUMOSEG_RUN_DIR"
PREPROCESSING_FILE = "preprocessing.json"


@dataclass
class TrainResult:
    """Where a finished run put its results."""

    run_dir: Path
    best_ckpt: Path | None
    best_score: float | None
    last_ckpt: Path | None
    history: Path
    epochs: int


def default_run_dir(config: str | os.PathLike[str] | None, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>``, or ``$PNEUMOSEG_RUN_DIR`` when set (DDP ranks)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stem = Path(config).stem if config is not None else "default"
    if stem == "config":  # a run folder's config.yaml
        stem = Path(config).parent.name if config is not None else stem
    return Path(root) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


def build_model(cfg: ExperimentConfig, encoder_weights: bool = True) -> nn.Module:
    """The network of ``cfg.model`` (``encoder_weights=False`` skips pretrained weights)."""
    return create_model(cfg.model.name, in_channels=cfg.data.in_channels, classes=1,
                        encoder_weights=cfg.model.encoder_weights if encoder_weights else None,
                        aux_classifier=cfg.model.aux_classifier)


def _monitor(cfg: ExperimentConfig) -> tuple[str, str]:
    return f"val/{cfg.train.monitor}", "min" if cfg.train.monitor == "loss" else "max"


def build_module(cfg: ExperimentConfig, net: nn.Module | None = None) -> SegmentationModule:
    """The LightningModule: network, loss, optimizer/scheduler factories and post-processing."""
    s, o = cfg.schedule, cfg.optim
    monitor, mode = _monitor(cfg)
    return SegmentationModule(
        net if net is not None else build_model(cfg),
        create_loss(cfg.loss),
        optimizer_factory(o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum),
        Preprocessing.from_config(cfg),
        scheduler_factory(s.name, epochs=cfg.train.epochs, snapshots=s.snapshots, min_lr=s.min_lr,
                          factor=s.factor, patience=s.patience, monitor=monitor, mode=mode),
        postprocess=PostProcess(cfg.postprocess.threshold, cfg.postprocess.min_area),
        aux_weight=cfg.model.aux_weight if cfg.model.aux_classifier else 0.0,
        channels_last=cfg.train.channels_last,
        train_dice=cfg.train.train_dice,
    )


def build_datamodule(cfg: ExperimentConfig) -> SegmentationDataModule:
    """The data module of ``cfg.data`` / ``augment`` / ``sampler``; ConfigError without a cache."""
    d = cfg.data
    if d.cache is None:
        raise ConfigError("data.cache is not set: pass --cache CACHE (or --set data.cache=CACHE)")
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


def build_trainer(cfg: ExperimentConfig, run_dir: str | os.PathLike[str], progress: bool = True,
                  callbacks: list[L.Callback] | tuple[L.Callback, ...] = (),
                  reload_train_loader: bool = False) -> L.Trainer:
    """The Lightning Trainer with the run folder's callbacks (checkpoints, history, snapshots).

    ``reload_train_loader``: rebuild the train loader every epoch (epochs that differ in length).
    """
    t = cfg.train
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    monitor, mode = _monitor(cfg)
    throughput = ThroughputMonitor()
    cbs: list[L.Callback] = [StepSeed(t.seed), throughput, HistoryCallback(run_dir, throughput)]
    if cfg.schedule.name == "snapshot":
        cbs.append(SnapshotCheckpoint(ckpt_dir, SnapshotCallbackBuilder(t.epochs, cfg.schedule.snapshots,
                                                                         cfg.optim.lr)))
    cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                               save_last=False, auto_insert_metric_name=False, save_on_train_epoch_end=True,
                               enable_version_counter=False))
    cbs.append(LastCheckpoint(ckpt_dir))
    if progress:
        cbs.append(RichProgressBar())
    cbs.extend(callbacks)
    strategy: Any = "auto"
    if t.devices > 1 or t.num_nodes > 1:
        unused = cfg.model.aux_classifier and cfg.model.aux_weight == 0
        strategy = "ddp_find_unused_parameters_true" if unused else "ddp"
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=strategy, precision=cast(Any, t.precision),
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip, limit_train_batches=_limit(t.limit_train_batches),
        limit_val_batches=_limit(t.limit_val_batches), deterministic="warn" if t.deterministic else False,
        benchmark=not t.deterministic, callbacks=cbs, logger=False, enable_progress_bar=progress,
        enable_model_summary=progress, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1 if reload_train_loader else 0,
    )


def _limit(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value > 1 else float(value)


def train(cfg: ExperimentConfig, run_dir: str | os.PathLike[str], resume: bool = False, progress: bool = True,
          callbacks: list[L.Callback] | tuple[L.Callback, ...] = ()) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (see the module docstring); ``resume`` continues from last.ckpt.

    Raises ConfigError (bad option, no cache) or DataError (cache without splits.csv, run folder
    that already holds a run when not resuming, nothing to resume).
    """
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise DataError(f"{run_dir}: nothing to resume ({last} not found)")
    if not resume and last.is_file():
        raise DataError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                        "or choose another --out")
    datamodule = build_datamodule(cfg)
    check_cache(datamodule.cache)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    module = build_module(cfg)
    if getattr(rank_zero_only, "rank", 0) == 0:
        dump_config(cfg, run_dir / "config.yaml")
        save_preprocessing(module.preprocessing, run_dir)
    trainer = build_trainer(cfg, run_dir, progress=progress, callbacks=callbacks,
                            reload_train_loader=datamodule.train_length_varies)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty")  # resuming into RUN
        trainer.fit(module, datamodule=datamodule, ckpt_path=last if resume else None, weights_only=True)
    ckpt = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))  # type: ignore[attr-defined]
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    score = ckpt.best_model_score
    return TrainResult(run_dir=run_dir, best_ckpt=best,
                       best_score=float(score) if score is not None else None,
                       last_ckpt=last if last.is_file() else None, history=run_dir / "history.csv",
                       epochs=trainer.current_epoch)


def init_run(cfg: ExperimentConfig, run_dir: str | os.PathLike[str]) -> Path:
    """A run folder holding ``cfg`` and its untrained network as ``checkpoints/best.ckpt``.

    For benchmarks and export tests: latency and file formats do not depend on the weights.
    """
    run = Path(run_dir)
    net = build_model(cfg, encoder_weights=False)
    dump_config(cfg, run / "config.yaml")
    preprocessing = Preprocessing.from_config(cfg)
    save_preprocessing(preprocessing, run)
    state = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
             "preprocessing": preprocessing.to_dict()}
    with atomic_path(run / "checkpoints" / "best.ckpt") as tmp:
        torch.save(state, tmp)
    return run


def save_preprocessing(preprocessing: Preprocessing, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/preprocessing.json`` (atomically); returns its path."""
    path = Path(run_dir) / PREPROCESSING_FILE
    atomic_write_text(path, json.dumps(preprocessing.to_dict(), indent=2) + "\n")
    return path


def load_preprocessing(run_dir: str | os.PathLike[str]) -> Preprocessing:
    """The model's input rule of a run: ``RUN/preprocessing.json``, else (older runs) its config.

    DataError for a folder with neither, or an unreadable file; ConfigError for bad values.
    """
    run_dir = Path(run_dir)
    path = run_dir / PREPROCESSING_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not readable JSON ({exc})") from None
        try:
            return Preprocessing.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run folder (no {PREPROCESSING_FILE}, no config.yaml)")
    return Preprocessing.from_config(load_config(run_dir / "config.yaml"))


def list_checkpoints(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``{"best": RUN/checkpoints/best.ckpt, "last": ..., "snapshot-1": ...}`` of a run folder."""
    folder = Path(run_dir) / "checkpoints"
    return {p.stem: p for p in sorted(folder.glob("*.ckpt"))} if folder.is_dir() else {}


def load_run(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> tuple[nn.Module, ExperimentConfig]:
    """The trained network (eval mode, CPU) and the config of a run folder.

    ``checkpoint``: a name in ``RUN/checkpoints`` (``best``, ``last``, ``snapshot-K``) or a path
    to a ``.ckpt``. DataError for a folder without config or checkpoints; ConfigError for an
    unknown checkpoint name (the message lists the available ones).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run folder (no config.yaml): train one with `pneumoseg train`")
    cfg = load_config(run_dir / "config.yaml")
    available = list_checkpoints(run_dir)
    path = Path(checkpoint)
    if not (path.suffix == ".ckpt" and path.is_file()):
        if not available:
            raise DataError(f"{run_dir} has no checkpoint in {run_dir / 'checkpoints'} "
                            "(training never finished an epoch?)")
        if checkpoint not in available:
            raise ConfigError(f"{run_dir}: no checkpoint {checkpoint!r} (available: {', '.join(available)})")
        path = available[checkpoint]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as exc:
        raise DataError(f"{path}: not a readable pneumoseg checkpoint ({exc})") from None
    net = build_model(cfg, encoder_weights=False)
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{path}: weights do not fit model {cfg.model.name!r} ({first})") from None
    return net.eval(), cfg
