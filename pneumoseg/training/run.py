"""``train(cfg, run_dir)``: build everything from the config, fit, return where the results are.

The config builds, the loop runs: ``pneumoseg.training.builders`` turns an
:class:`~pneumoseg.config.ExperimentConfig` into a network, a loss, optimizer and scheduler factories,
the post-processing, the data module and a Lightning Trainer; this module fits them and writes the
summary. ``pneumoseg.training.run_folder`` reads a run folder back (``load_run``). The run folder
(docs/architecture.md)::

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

The budget (``pneumoseg.training.budget.plan_steps``): ``train.epochs`` epochs, unless ``train.max_steps`` (exactly that
many optimizer steps, whatever the data size: the epochs follow from the sampler's epoch lengths)
or ``train.min_steps`` (more epochs when the epochs give fewer steps). With a step budget (or
``schedule.warmup_steps``) the schedules run over optimizer steps. ``train`` prints the plan and
warns when it is small for the model (``recommended_steps``); after training it flags a model
whose best checkpoint predicts an empty mask on every validation image.

Resume: ``train(cfg, RUN, resume=True)`` continues from ``last.ckpt`` (weights, optimizer,
scheduler, epoch, best score, history); with the same config the result equals an uninterrupted
run's (samplers and augmentations are seeded per epoch and item, torch per epoch).

Devices: ``train.devices: N > 1`` trains with DDP (one process per GPU; Lightning relaunches the
command for ranks 1..N-1, so the run folder must not depend on the clock: the ``pneumoseg train``
command sets ``PNEUMOSEG_RUN_DIR`` for them and, relaunched, passes it to ``runs.default_run_dir``;
``train`` itself takes the folder as an argument and reads no environment). Multi-node: start one
process per GPU with the launcher and set ``train.num_nodes``; Lightning reads the rank from the
environment, e.g.::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m pneumoseg.cli.main train exp.yaml --out runs/exp --devices 8 --set train.num_nodes=2
    # SLURM (#SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8):
    srun pneumoseg train exp.yaml --out runs/exp --devices 8 --set train.num_nodes=2

``train.batch_size`` is per GPU. Mixed precision: ``train.precision: bf16-mixed`` (or
``16-mixed``; ``bf16-true`` / ``16-true`` are refused at config load: half-precision weights and
Adam state lose updates); losses are computed in float32. ``train.channels_last`` applies on CUDA.
``train.deterministic`` (default true) uses deterministic algorithms (set it false for speed: cuDNN
autotuning). Lightning's log lines and noise warnings are off while ``train`` runs
(``pneumoseg.util.quiet.quiet_lightning``); nothing changes at import. With the ``positives_once``
sampler and a decaying share the epochs differ in length, so the train loader is rebuilt every
epoch (``reload_dataloaders_every_n_epochs=1``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from pneumoseg.config import ExperimentConfig, dump_config
from pneumoseg.data.dataset import check_cache
from pneumoseg.errors import DataError, TrainingInterrupted
from pneumoseg.training.budget import StepPlan, plan_steps, recommended_steps
from pneumoseg.training.builders import build_datamodule, build_module, build_trainer, check_cache_size
from pneumoseg.training.callbacks import HistoryCallback, Interruption
from pneumoseg.training.provenance import build_provenance, save_provenance
from pneumoseg.training.run_folder import save_preprocessing
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.quiet import quiet_lightning

__all__ = ["PREDICTS_NOTHING", "SUMMARY_FILE", "TrainResult", "TrainSummary", "predicts_nothing", "train"]

SUMMARY_FILE = "train_summary.json"
#: the message when the best checkpoint predicts an empty mask on every validation image
PREDICTS_NOTHING = ("the model predicts nothing on validation (no rule of the validation grid gives any "
                    "positive image a mask): more steps, a higher learning rate, or a positive sampler")


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
    wanted = recommended_steps(n_params, pretrained=cfg.model.encoder_weights is not None)
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
    with quiet_lightning():
        trainer = build_trainer(cfg, run_dir, progress=progress, callbacks=[*callbacks, interruption],
                                reload_train_loader=datamodule.train_length_varies, plan=plan)
        try:
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
