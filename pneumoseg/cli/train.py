"""``pneumoseg train``: fit an experiment config into a run folder, or resume one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pneumoseg.cli._common import cli_errors, console
from pneumoseg.errors import ConfigError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    @cli_errors
    def train_command(
        config: str | None = typer.Argument(
            None, help="Experiment YAML, a packaged config name (default, winner, seed_unet, uxception) "
                       "or a run folder; default: the packaged default.yaml."),
        set_: list[str] = typer.Option(
            [], "--set", "-s", metavar="KEY=VALUE",
            help="Override a config key (repeatable), e.g. --set model.name=unet --set train.epochs=3."),
        cache: Path | None = typer.Option(None, "--cache", help="Prepared cache folder (data.cache)."),
        out: Path | None = typer.Option(None, "--out", "-o",
                                        help="Run folder; default runs/<config name>-<timestamp>."),
        resume: Path | None = typer.Option(None, "--resume",
                                           help="Continue the run in this folder from last.ckpt."),
        devices: int | None = typer.Option(None, "--devices", help="Devices (train.devices); > 1 uses DDP."),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs (train.epochs)."),
        batch_size: int | None = typer.Option(None, "--batch-size",
                                              help="Batch size per device (train.batch_size)."),
        precision: str | None = typer.Option(None, "--precision", help="e.g. bf16-mixed (train.precision)."),
        accelerator: str | None = typer.Option(None, "--accelerator",
                                               help="auto, cpu or gpu (train.accelerator)."),
        fold: int | None = typer.Option(None, "--fold", help="Validation fold (data.fold)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Train a model into a run folder: config.yaml, checkpoints/, history.csv, curves.png.

        Overrides apply in order: CONFIG, each --set, then the named options (--cache, --epochs, ...).

        With --resume RUN the config is RUN/config.yaml; overrides still apply (--epochs: train longer).
        """
        from pneumoseg.config import load_config
        from pneumoseg.training.run import RUN_DIR_ENV, default_run_dir, train

        overrides = list(set_)
        named = {"data.cache": cache, "train.devices": devices, "train.epochs": epochs,
                 "train.batch_size": batch_size, "train.precision": precision,
                 "train.accelerator": accelerator, "data.fold": fold}
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
            cfg = load_config(config, overrides)
            run_dir = out if out is not None else default_run_dir(config)
        console.print(f"[bold]{'resuming' if resume else 'training'}[/] {cfg.model.name} on {cfg.data.cache} "
                      f"-> {run_dir}", highlight=False, soft_wrap=True)
        previous = os.environ.get(RUN_DIR_ENV)
        os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks relaunched by Lightning reuse this folder
        try:
            result = train(cfg, run_dir, resume=resume is not None, progress=progress)
        finally:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous
        score = f"{result.best_score:.4f}" if result.best_score is not None else "n/a"
        lines = [f"run folder   {result.run_dir}",
                 f"best         {result.best_ckpt} (val/{cfg.train.monitor} = {score})",
                 f"last         {result.last_ckpt}",
                 f"history      {result.history}",
                 f"curves       {result.run_dir / 'curves.png'}"]
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
