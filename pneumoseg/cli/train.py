"""``pneumoseg train``: fit an experiment config into a run folder, or resume one."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rich.markup import escape

from pneumoseg.cli._common import Overrides, Progress, cli_errors, console, err_console, one_line_warnings
from pneumoseg.errors import ConfigError, TrainingInterrupted

if TYPE_CHECKING:
    from pneumoseg.config import ExperimentConfig

__all__ = ["best_line", "experiment_configs", "register"]


def best_line(best_ckpt: Path | None, monitor: str, score: float | None, baseline: float | None) -> str:
    """``best  RUN/checkpoints/best.ckpt (val/<monitor> = 0.7500; predicting nothing scores 0.6667)``.

    For the challenge metric (``dice_kaggle``, ``dice_kaggle_tuned``) the line names the predict-nothing
    baseline (an empty mask on every validation image), and says so when the best score equals it.
    """
    text = f"val/{monitor} = {score:.4f}" if score is not None else f"val/{monitor} = n/a"
    if score is not None and baseline is not None and monitor.startswith("dice_kaggle"):
        if math.isclose(score, baseline, abs_tol=1e-6):
            text += (f", the predict-nothing baseline: an empty mask on every validation image scores "
                     f"{baseline:.4f} too")
        else:
            text += f"; predicting nothing scores {baseline:.4f}"
    return f"best         {best_ckpt} ({text})"


@contextmanager
def _interruptions() -> Iterator[None]:
    """A signal while training: its one line (where it stopped, how to resume), exit 128 + the signal."""
    try:
        yield
    except TrainingInterrupted as exc:
        err_console.print(f"[bold yellow]interrupted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # before or after fit (config, data checks)
        err_console.print("[bold yellow]interrupted:[/] Ctrl-C", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def experiment_configs() -> list[str]:
    """Names of the packaged experiment configs (``demo``, ``default``, ...; study files excluded).

    ``pneumoseg.config.list_configs`` without the ``.yaml``, read here because importing ``pneumoseg.config``
    (pydantic, yaml) would double the time of ``pneumoseg --help`` (this names them in ``train --help``);
    equality is checked in tests/cli/test_lazy_cli.py.
    """
    from importlib import resources

    folder = resources.files("pneumoseg") / "configs"
    names = []
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml") and "\nexperiments:" not in "\n" + entry.read_text():
            names.append(entry.name[: -len(".yaml")])
    return sorted(names)


def _check_config_name(config: str) -> None:
    """ConfigError listing the packaged experiment configs when ``config`` is neither a path nor one of them."""
    if Path(config).exists() or config.removesuffix(".yaml") in experiment_configs():
        return
    raise ConfigError(f"config {config!r} not found: neither a file, a run folder nor a packaged config "
                      f"(packaged: {', '.join(experiment_configs())})")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    @cli_errors
    def train_command(
        config: Annotated[str | None, typer.Argument(
            metavar="CONFIG", show_default=False,
            help=f"Experiment YAML, a packaged config name ({', '.join(experiment_configs())}) or a run folder; "
                 "default: the packaged default.yaml.")] = None,
        set_: Overrides = None,
        cache: Annotated[Path | None, typer.Option("--cache", help="Prepared cache folder (data.cache).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Run folder; default runs/<config name>-<timestamp>.")] = None,
        resume: Annotated[Path | None, typer.Option(
            "--resume", metavar="RUN", help="Continue the run in this folder from last.ckpt.")] = None,
        devices: Annotated[int | None, typer.Option(
            "--devices", metavar="N", help="Devices (train.devices); > 1 uses DDP.")] = None,
        epochs: Annotated[int | None, typer.Option("--epochs", metavar="N", help="Epochs (train.epochs).")] = None,
        max_steps: Annotated[int | None, typer.Option(
            "--max-steps", min=1, metavar="N", help="Exactly this many optimizer steps (train.max_steps).")] = None,
        strict: Annotated[bool, typer.Option(
            "--strict", help="Refuse a cache whose size differs from data.size (train.strict_size; default: a "
                             "warning).")] = False,
        batch_size: Annotated[int | None, typer.Option(
            "--batch-size", metavar="N", help="Batch size per device (train.batch_size).")] = None,
        precision: Annotated[str | None, typer.Option(
            "--precision", metavar="PRECISION", help="e.g. bf16-mixed (train.precision).")] = None,
        accelerator: Annotated[str | None, typer.Option(
            "--accelerator", metavar="NAME", help="auto, cpu or gpu (train.accelerator).")] = None,
        fold: Annotated[int | None, typer.Option("--fold", metavar="K", help="Validation fold (data.fold).")] = None,
        folds: Annotated[int | None, typer.Option(
            "--folds", min=2, metavar="K",
            help="Train every fold 0..K-1 into OUT/fold-k (needs `pneumoseg split CACHE --folds K`), tune out of "
                 "fold, summarise: mean +/- sd across folds and the out-of-fold score. Run again to resume.")] = None,
        progress: Progress = True,
    ) -> None:
        """Train a model into a run folder: config.yaml, checkpoints/, history.csv, curves.png.

        Overrides apply in order: CONFIG, each --set, then the named options (--cache, --epochs, ...).

        With --resume RUN the config is RUN/config.yaml; overrides still apply (--epochs: train longer).

        With --folds K: OUT/fold-0 .. fold-<K-1>, OUT/eval/oof/ (pooled out-of-fold predictions scored with
        the out-of-fold rule) and OUT/folds.json; finished folds are skipped when run again.
        """
        from pneumoseg.config import load_config
        from pneumoseg.training.builders import require_cache
        from pneumoseg.training.run import train
        from pneumoseg.training.run_folder import RUN_DIR_ENV, default_run_dir, run_dir_for_ranks

        overrides = list(set_ or [])
        named = {"data.cache": cache, "train.devices": devices, "train.epochs": epochs,
                 "train.batch_size": batch_size, "train.precision": precision,
                 "train.accelerator": accelerator, "data.fold": fold, "train.max_steps": max_steps,
                 "train.strict_size": True if strict else None}
        overrides += [f"{key}={json.dumps(str(v) if isinstance(v, Path) else v)}"  # JSON is valid YAML
                      for key, v in named.items() if v is not None]
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume RUN takes its config from RUN/config.yaml: "
                                  "drop the CONFIG argument")
            if out is not None and out.resolve() != resume.resolve():
                raise ConfigError("--resume RUN writes into RUN: drop --out")
            if not (resume / "config.yaml").is_file():
                raise ConfigError(f"--resume {resume}: not a run folder (no config.yaml)")
            cfg = load_config(resume / "config.yaml", overrides)
            run_dir = resume
        else:
            if config is not None:
                _check_config_name(config)
            cfg = load_config(config, overrides)
            run_dir = out if out is not None else default_run_dir(config, inherited=os.environ.get(RUN_DIR_ENV))
        require_cache(cfg)  # before any line names it ("training ... on None")
        if folds is not None:
            if resume is not None or fold is not None:
                raise ConfigError("--folds K trains (or resumes) every fold: drop --resume and --fold")
            with _interruptions(), one_line_warnings():
                _train_folds(cfg, run_dir, folds, progress)
            return
        console.print(f"[bold]{'resuming' if resume else 'training'}[/] {cfg.model.name} on {cfg.data.cache} "
                      f"-> {run_dir}", highlight=False, soft_wrap=True)
        with run_dir_for_ranks(run_dir), _interruptions(), one_line_warnings():
            result = train(cfg, run_dir, resume=resume is not None, progress=progress)
        lines = [f"run folder   {result.run_dir}",
                 best_line(result.best_ckpt, cfg.train.monitor, result.best_score, result.empty_baseline),
                 f"last         {result.last_ckpt}",
                 f"history      {result.history}",
                 f"curves       {result.run_dir / 'curves.png'}"]
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)


def _train_folds(cfg: ExperimentConfig, out: Path, folds: int, progress: bool) -> None:
    """``train --folds K``: every fold (resumed past ``OUT/fold-k/.fold-trained``), out-of-fold tuning and
    scoring; a summary table."""
    from rich.table import Table

    from pneumoseg.training.kfold import FoldMarkers
    from pneumoseg.workflows.study import train_folds

    markers = FoldMarkers(out, on_mark=lambda k: console.print(f"fold {k}: trained", highlight=False))
    console.print(f"[bold]training {folds} folds[/] -> {out}/fold-0 .. fold-{folds - 1}", highlight=False)
    summary = train_folds(cfg, out, folds, progress, markers.done, markers.mark)
    table = Table(*summary.per_fold.columns, title=f"{folds} folds: each fold's model on its own validation fold")
    for row in summary.per_fold.itertuples(index=False):
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    fmt = (lambda v: "n/a" if v != v else f"{v:.4f}")  # noqa: E731
    console.print(table)
    for col in summary.per_fold.columns.drop(["fold", "n_images"]):
        mean, sd = summary.mean_sd(col)
        console.print(f"{col} across folds: {fmt(mean)} +/- {fmt(sd)} (mean +/- sd)", highlight=False)
    oof = summary.oof
    ci = oof.get("ci95", {}).get("dice_kaggle", [math.nan, math.nan])
    console.print(f"out-of-fold dice_kaggle {fmt(oof['dice_kaggle'])} [{fmt(ci[0])}, {fmt(ci[1])}] 95 % CI on "
                  f"{oof['n_images']} images, rule {summary.rule} (tuned out of fold on the same images: slightly "
                  "optimistic; evaluate the ensemble on test for the unbiased figure)", highlight=False)
    runs = ",".join(str(r) for r in summary.runs)
    console.print(f"summary: {out / 'folds.json'}; pooled predictions: {out / 'eval' / 'oof'}", highlight=False)
    console.print(f"next: pneumoseg evaluate {runs} --split test", highlight=False, soft_wrap=True)
