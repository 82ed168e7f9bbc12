"""``train(cfg, run_dir)``: build everything from the config, fit, return where the results are.

The config builds, the loop runs: this module turns an :class:`~pneumoseg.config.ExperimentConfig`
into a network (``pneumoseg.models``), a loss (``pneumoseg.training.losses``), optimizer and scheduler
factories (``schedules``), the post-processing (``pneumoseg.scoring.postprocess``), the data module and a
Lightning Trainer, then calls ``fit``. The run folder (docs/architecture.md)::

    RUN/config.yaml                       the resolved config (reload with load_config(RUN))
    RUN/preprocessing.json                the model's input rule (load_preprocessing(RUN)); also in
                                          every checkpoint under "preprocessing"
    RUN/provenance.json                   the training data: source, synthetic or not, counts, split sizes
                                          (``pneumoseg.training.provenance``)
    RUN/checkpoints/best.ckpt             best by val/<train.monitor> (max; min for "loss")
    RUN/checkpoints/last.ckpt             end of the last finished epoch, for resume
    RUN/checkpoints/snapshot-K.ckpt       schedule "snapshot": end of cycle K
    RUN/history.csv  RUN/curves.png       one row / point per epoch (epochs from 1; lr curve)
    RUN/train_summary.json                optimizer_steps, epochs, budget, predicts_nothing,
                                          val_pred_positive, warnings (see TrainSummary)
    RUN/logs/                             the Lightning logger's files (train.logger; CSV by default)

The budget (:func:`plan_steps`): ``train.epochs`` epochs, unless ``train.max_steps`` (exactly that
many optimizer steps, whatever the data size: the epochs follow from the sampler's epoch lengths)
or ``train.min_steps`` (more epochs when the epochs give fewer steps). With a step budget (or
``schedule.warmup_steps``) the schedules run over optimizer steps. ``train`` prints the plan and
warns when it is small for the model (:func:`recommended_steps`); after training it flags a model
whose best checkpoint predicts an empty mask on every validation image.

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
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.config import ExperimentConfig, dump_config, load_config
from pneumoseg.data.datamodule import SegmentationDataModule
from pneumoseg.data.dataset import check_cache
from pneumoseg.errors import ConfigError, DataError, TrainingInterrupted
from pneumoseg.training.losses import create_loss
from pneumoseg.models import create_model
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.models.heads import init_output_bias
from pneumoseg.scoring.postprocess import PostProcess, validation_grid
from pneumoseg.training.callbacks import (
    AtomicCheckpointIO,
    EpochLine,
    HistoryCallback,
    Interruption,
    LastCheckpoint,
    SnapshotCheckpoint,
    StepSeed,
    StepSnapshotCheckpoint,
    ThroughputMonitor,
)
from pneumoseg.training.module import SegmentationModule
from pneumoseg.training.provenance import build_provenance, save_provenance
from pneumoseg.training.schedules import SnapshotCallbackBuilder, optimizer_factory, scheduler_factory

class _DropNoise(logging.Filter):
    """Lightning logs a sales tip for its cloud logger and device-availability lines on every Trainer,
    checkpoint paths on every resume and its own lines on a signal (``train`` says all of it once)."""

    NOISE = ("litlogger", "GPU available:", "TPU available:", "HPU available:", "IPU available:",
             "LOCAL_RANK:", "`Trainer(limit_", "Restoring states from the checkpoint", "Restored all states",
             "`Trainer.fit` stopped:", "Received SIGTERM", "Detected KeyboardInterrupt")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
              "lightning.pytorch.accelerators.cuda", "lightning.pytorch.trainer.connectors.signal_connector"):
    logging.getLogger(_name).addFilter(_DropNoise())
# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every fit.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# the module normalises batches on the device on purpose (uint8 loaders); Lightning warns about it
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer` in `LightningModule`")

__all__ = [
    "RUN_DIR_ENV",
    "SUMMARY_FILE",
    "StepPlan",
    "TrainResult",
    "TrainSummary",
    "build_datamodule",
    "build_model",
    "build_module",
    "build_trainer",
    "default_run_dir",
    "init_run",
    "list_checkpoints",
    "load_preprocessing",
    "load_run",
    "plan_steps",
    "predicts_nothing",
    "recommended_steps",
    "require_cache",
    "resolve_checkpoint",
    "save_preprocessing",
    "train",
]

RUN_DIR_ENV = "PNEUMOSEG_RUN_DIR"
PREPROCESSING_FILE = "preprocessing.json"
SUMMARY_FILE = "train_summary.json"
#: the message when the best checkpoint predicts an empty mask on every validation image
PREDICTS_NOTHING = ("the model predicts nothing on validation (no rule of the validation grid gives any "
                    "positive image a mask): more steps, a higher learning rate, or a positive sampler")


@dataclass
class StepPlan:
    """The training budget resolved against the data: ``steps`` optimizer steps over ``epochs`` epochs.

    ``by``: what decided it (``"epochs"``, ``"max_steps"`` or ``"min_steps"``); ``step_mode``: the
    Trainer stops at ``steps`` (and schedules run over steps) instead of after ``epochs``.
    ``steps_per_epoch``: optimizer steps of each epoch (the last one may be cut by the budget).
    """

    steps: int
    epochs: int
    by: str
    step_mode: bool
    steps_per_epoch: list[int] = field(default_factory=list)


@dataclass
class TrainSummary:
    """``RUN/train_summary.json``: what the run did and what a user should know about it."""

    optimizer_steps: int
    planned_steps: int
    epochs: int
    budget: str
    recommended_steps: int
    n_parameters: int
    predicts_nothing: bool | None
    val_pred_positive: float | None
    warnings: list[str] = field(default_factory=list)
    #: val dice_kaggle of an empty mask on every image (the share of images without one); None: never validated
    empty_baseline: float | None = None


@dataclass
class TrainResult:
    """Where a finished run put its results; ``empty_baseline``: see :class:`TrainSummary`."""

    run_dir: Path
    best_ckpt: Path | None
    best_score: float | None
    last_ckpt: Path | None
    history: Path
    epochs: int
    empty_baseline: float | None = None


def default_run_dir(config: str | os.PathLike[str] | None, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>``, or ``$PNEUMOSEG_RUN_DIR`` when set (DDP ranks)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stem = Path(config).stem if config is not None else "default"
    if stem == "config":  # a run folder's config.yaml
        stem = Path(config).parent.name if config is not None else stem
    return Path(root) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


def build_model(cfg: ExperimentConfig, encoder_weights: bool = True) -> nn.Module:
    """The network of ``cfg.model`` (``encoder_weights=False`` skips pretrained weights), its mask
    head's bias at ``model.output_prior`` (``pneumoseg.models.heads``)."""
    net = create_model(cfg.model.name, in_channels=cfg.data.in_channels, classes=1,
                       encoder_weights=cfg.model.encoder_weights if encoder_weights else None,
                       aux_classifier=cfg.model.aux_classifier)
    if cfg.model.output_prior is not None:
        init_output_bias(net, cfg.model.output_prior)
    return net


def _monitor(cfg: ExperimentConfig) -> tuple[str, str]:
    return f"val/{cfg.train.monitor}", "min" if cfg.train.monitor == "loss" else "max"


def build_module(cfg: ExperimentConfig, net: nn.Module | None = None,
                 total_steps: int | None = None) -> SegmentationModule:
    """The LightningModule: network, loss, optimizer/scheduler factories and post-processing.

    ``total_steps``: schedule over that many optimizer steps (a step budget; ``plan_steps``).
    """
    s, o = cfg.schedule, cfg.optim
    monitor, mode = _monitor(cfg)
    return SegmentationModule(
        net if net is not None else build_model(cfg),
        create_loss(cfg.loss),
        optimizer_factory(o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum),
        Preprocessing.from_config(cfg),
        scheduler_factory(s.name, epochs=cfg.train.epochs, snapshots=s.snapshots, min_lr=s.min_lr,
                          factor=s.factor, patience=s.patience, monitor=monitor, mode=mode,
                          total_steps=total_steps, warmup_steps=s.warmup_steps),
        postprocess=PostProcess(cfg.postprocess.threshold, cfg.postprocess.min_area),
        aux_weight=cfg.model.aux_weight if cfg.model.aux_classifier else 0.0,
        channels_last=cfg.train.channels_last,
        train_dice=cfg.train.train_dice,
        val_grid=validation_grid(cfg.data.size),
    )


def recommended_steps(n_parameters: int) -> int:
    """Fewest optimizer steps worth training a model of ``n_parameters`` for (below: ``train`` warns).

    500 for small networks (< 5 M parameters, e.g. the seed's UNet), 1000 for the others (ResNet-34
    U-Net, Xception, SE-ResNeXt50): on 42 real images at 256 px, 90-150 steps left the packaged
    configs at 0.0-0.5 positive Dice (docs/training.md).
    """
    return 500 if n_parameters < 5_000_000 else 1000


def plan_steps(cfg: ExperimentConfig, datamodule: SegmentationDataModule) -> StepPlan:
    """Resolve the budget (``train.epochs`` / ``max_steps`` / ``min_steps``) against the data.

    Optimizer steps of epoch e = ceil(batches_e / accumulate) (a partial accumulation steps at
    the epoch's end), batches_e from the sampler's epoch length (``epoch_batches``) and
    ``train.limit_train_batches``. A step budget spans as many epochs as it needs; the positive
    sampler's share then decays over those epochs (``datamodule.epochs`` is set to them).
    """
    t = cfg.train
    world = t.devices * t.num_nodes

    def per_epoch(horizon: int, n: int) -> list[int]:
        out = []
        for e in range(n):
            batches = datamodule.epoch_batches(e, horizon, world)
            if t.limit_train_batches is not None:
                lim = _limit(t.limit_train_batches)
                batches = min(batches, lim) if isinstance(lim, int) else max(1, int(batches * (lim or 1.0)))
            out.append(max(1, math.ceil(batches / t.accumulate)))
        return out

    by_epochs = per_epoch(t.epochs, t.epochs)
    target = t.max_steps
    by = "max_steps"
    if target is None:
        if t.min_steps is None or sum(by_epochs) >= t.min_steps:
            datamodule.epochs = t.epochs
            return StepPlan(sum(by_epochs), t.epochs, "epochs", False, by_epochs)
        target, by = t.min_steps, "min_steps"
    horizon = max(1, math.ceil(target / max(1.0, sum(by_epochs) / t.epochs)))
    steps: list[int] = []
    for _ in range(20):  # fixed point: the sampler's horizon is the number of epochs the budget needs
        steps = per_epoch(horizon, horizon)
        while sum(steps) < target:
            steps += per_epoch(horizon, len(steps) + 1)[len(steps):]
        needed = next(i + 1 for i, c in enumerate(_cumsum(steps)) if c >= target)
        steps = steps[:needed]
        if needed == horizon:
            break
        horizon = needed
    steps[-1] -= sum(steps) - target
    datamodule.epochs = len(steps)
    return StepPlan(target, len(steps), by, True, steps)


def _cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


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
    monitor, mode = _monitor(cfg)
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
    cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
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
        gradient_clip_val=t.grad_clip, limit_train_batches=_limit(t.limit_train_batches),
        limit_val_batches=_limit(t.limit_val_batches), deterministic="warn" if t.deterministic else False,
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


def _limit(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value > 1 else float(value)


def train(cfg: ExperimentConfig, run_dir: str | os.PathLike[str], resume: bool = False, progress: bool = True,
          callbacks: list[L.Callback] | tuple[L.Callback, ...] = ()) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (see the module docstring); ``resume`` continues from last.ckpt.

    Raises ConfigError (bad option, no cache) or DataError (cache without splits.csv, run folder
    that already holds a run when not resuming, nothing to resume), TrainingInterrupted on SIGTERM
    (Lightning's signal handling stops at the next batch's end) or Ctrl-C: its one-line message
    says what ``last.ckpt`` holds (the last finished epoch; the unfinished one is redone, so the
    resumed run equals an uninterrupted one) and how to resume.
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
    notes: list[str] = []
    size_note = check_cache_size(cfg, datamodule.cache)
    if size_note:
        notes.append(size_note)
    plan = plan_steps(cfg, datamodule)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    step_schedule = plan.step_mode or cfg.schedule.warmup_steps > 0
    module = build_module(cfg, total_steps=plan.steps if step_schedule else None)
    n_params = sum(p.numel() for p in module.net.parameters())
    wanted = recommended_steps(n_params)
    if plan.steps < wanted:
        notes.append(f"only {plan.steps} optimizer steps for {cfg.model.name} ({n_params / 1e6:.1f} M parameters; "
                     f"at least {wanted} recommended): set train.max_steps={wanted} (or train.min_steps)")
    rank0 = getattr(rank_zero_only, "rank", 0) == 0
    if rank0:
        dump_config(cfg, run_dir / "config.yaml")
        save_preprocessing(module.preprocessing, run_dir)
        save_provenance(build_provenance(cfg), run_dir)
        if progress:
            per = sorted(set(plan.steps_per_epoch))
            spread = f"{per[0]}" if len(per) == 1 else f"{per[0]}-{per[-1]}"
            print(f"train: {plan.steps} optimizer steps over {plan.epochs} epochs ({spread} per epoch; "
                  f"budget: {plan.by}); {cfg.model.name}, {n_params / 1e6:.2f} M parameters", flush=True)
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    interruption = Interruption()
    trainer = build_trainer(cfg, run_dir, progress=progress, callbacks=[*callbacks, interruption],
                            reload_train_loader=datamodule.train_length_varies, plan=plan)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exists and is not empty")  # resuming into RUN
            trainer.fit(module, datamodule=datamodule, ckpt_path=last if resume else None, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException (exit code 0) and its sys.exit(1) after Ctrl-C
        if interruption.exception is None:
            raise
        raise TrainingInterrupted(_interrupted(trainer, interruption, plan, run_dir),
                                  interruption.exit_code) from None
    ckpt = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))  # type: ignore[attr-defined]
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    score = ckpt.best_model_score
    history = next(cb for cb in trainer.callbacks if isinstance(cb, HistoryCallback))  # type: ignore[attr-defined]
    share = _best_pred_positive(history.rows, cfg)
    baseline = next((r["val_empty_baseline"] for r in reversed(history.rows)
                     if math.isfinite(r.get("val_empty_baseline", math.nan))), None)
    nothing = predicts_nothing(share)
    if nothing:
        notes.append(PREDICTS_NOTHING)
        if rank0:
            warnings.warn(PREDICTS_NOTHING, UserWarning, stacklevel=2)
    summary = TrainSummary(optimizer_steps=int(trainer.global_step), planned_steps=plan.steps,
                           epochs=int(trainer.current_epoch), budget=plan.by, recommended_steps=wanted,
                           n_parameters=int(n_params), predicts_nothing=nothing, val_pred_positive=share,
                           warnings=notes, empty_baseline=baseline)
    if rank0:
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(asdict(summary), indent=2) + "\n")
    return TrainResult(run_dir=run_dir, best_ckpt=best,
                       best_score=float(score) if score is not None else None,
                       last_ckpt=last if last.is_file() else None, history=run_dir / "history.csv",
                       epochs=trainer.current_epoch, empty_baseline=baseline)


def _interrupted(trainer: L.Trainer, interruption: Interruption, plan: StepPlan, run_dir: Path) -> str:
    """One line: which signal, where training stood, what last.ckpt holds, the resume command."""
    rows = next(cb for cb in trainer.callbacks if isinstance(cb, HistoryCallback)).rows  # type: ignore[attr-defined]
    where = f"in epoch {trainer.current_epoch + 1}/{plan.epochs} (step {trainer.global_step}/{plan.steps})"
    if not rows or not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return (f"training interrupted by {interruption.signal_name} {where} before any epoch finished: nothing "
                f"to resume, {run_dir} holds no checkpoint; start it again")
    done = rows[-1]
    return (f"training interrupted by {interruption.signal_name} {where}; last.ckpt holds epoch {int(done['epoch'])} "
            f"(step {int(done['step'])}), the unfinished epoch is redone: resume with "
            f"`pneumoseg train --resume {run_dir}`")


def predicts_nothing(pred_positive: float | None) -> bool | None:
    """True when no validation image got a non-empty predicted mask (None: never validated)."""
    if pred_positive is None or not math.isfinite(pred_positive):
        return None
    return pred_positive == 0.0


def _best_pred_positive(rows: list[dict[str, float]], cfg: ExperimentConfig) -> float | None:
    """At the epoch best.ckpt comes from (the monitored metric's best): ``val_positives_found`` (the
    largest share of positive images any rule of the validation grid gives a mask), or
    ``val_pred_positive`` for a run without the grid; None when never validated."""
    key = {"loss": "val_loss"}.get(cfg.train.monitor, f"val_{cfg.train.monitor}")
    share = "val_positives_found" if any(math.isfinite(r.get("val_positives_found", math.nan)) for r in rows) \
        else "val_pred_positive"
    rows = [r for r in rows if math.isfinite(r.get(key, math.nan)) and math.isfinite(r.get(share, math.nan))]
    if not rows:
        return None
    pick = min if cfg.train.monitor == "loss" else max
    best = pick(rows, key=lambda r: r[key])  # the first of equal scores, as ModelCheckpoint keeps it
    return float(best[share])


def init_run(cfg: ExperimentConfig, run_dir: str | os.PathLike[str]) -> Path:
    """A run folder holding ``cfg`` and its untrained network as ``checkpoints/best.ckpt``.

    For benchmarks and export tests: latency and file formats do not depend on the weights.
    """
    run = Path(run_dir)
    net = build_model(cfg, encoder_weights=False)
    dump_config(cfg, run / "config.yaml")
    preprocessing = Preprocessing.from_config(cfg)
    save_preprocessing(preprocessing, run)
    save_provenance(build_provenance(cfg), run)
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


def resolve_checkpoint(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> Path:
    """The ``.ckpt`` file ``load_run(run_dir, checkpoint)`` reads: a ``.ckpt`` path, or a name in RUN/checkpoints.

    DataError for a folder without checkpoints; ConfigError for an unknown name (listing the available ones).
    """
    run_dir = Path(run_dir)
    path = Path(checkpoint)
    if path.suffix == ".ckpt" and path.is_file():
        return path
    available = list_checkpoints(run_dir)
    if not available:
        raise DataError(f"{run_dir} has no checkpoint in {run_dir / 'checkpoints'} "
                        "(training never finished an epoch?)")
    if checkpoint not in available:
        raise ConfigError(f"{run_dir}: no checkpoint {checkpoint!r} (available: {', '.join(available)})")
    return available[checkpoint]


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
    path = resolve_checkpoint(run_dir, checkpoint)
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
