"""``pneumoseg study STUDY.yaml``: train, tune, evaluate and compare a list of experiments (resumable)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import Device, Overrides, Progress, cli_errors, console

__all__ = ["register", "study"]


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


@cli_errors
def study(
    spec: Annotated[str, typer.Argument(
        metavar="STUDY", help="Study YAML (experiments = config + overrides), or a packaged study: seed_study.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Study folder: one run folder per experiment, study.json, compare.html. Run again "
                            "to resume.")],
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Shared prepared cache (overrides the study's cache).")] = None,
    folds: Annotated[int | None, typer.Option(
        "--folds", metavar="K", help="K >= 2: train K folds per experiment (overrides the study's folds; needs "
                                     "`pneumoseg split CACHE --folds K`).")] = None,
    set_: Overrides = None,
    device: Device = None,
    progress: Progress = True,
) -> None:
    """Train, tune (val; out of fold with --folds) and evaluate every experiment, then compare them all.

    --set applies to every experiment; --device to tuning and evaluation. Finished stages are skipped
    when the command is run again (killed trainings resume).
    """
    from pneumoseg.util.devices import parse_device
    from pneumoseg.workflows.study import load_study, run_study

    spec_ = load_study(spec).with_options(cache=cache, folds=folds)
    device = parse_device(device)
    caches = spec_.caches(set_ or [])  # what the experiments really use (their configs, --set, --cache)
    console.print(f"[bold]study[/] {spec_.name}: {len(spec_.experiments)} experiments on "
                  f"{', '.join(caches)}, split {spec_.split}"
                  f"{f', {spec_.folds} folds' if spec_.folds else ''} -> {out}", highlight=False, soft_wrap=True)
    result = run_study(spec_, out, set_ or [], progress=progress, device=device,
                       log=lambda line: console.print(line, highlight=False))
    table = Table("experiment", "dice_kaggle [95 % CI]", "dice_positive", "image_auc", "done before",
                  title=f"{spec_.name}: {spec_.split} split at the source resolution")
    for name, metrics in result.metrics.items():
        ci = metrics.get("ci95", {}).get("dice_kaggle", [math.nan, math.nan])
        table.add_row(name, f"{_fmt(metrics['dice_kaggle'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]",
                      _fmt(metrics.get("dice_positive")), _fmt(metrics.get("image_auc")),
                      ", ".join(result.skipped.get(name, [])) or "-")
    console.print(table)
    for name, summary in result.folds.items():
        mean, sd = summary.mean_sd("oof_dice_kaggle")
        console.print(f"{name}: {len(summary.runs)} folds, dice_kaggle per fold {_fmt(mean)} +/- {_fmt(sd)} (sd); "
                      f"out-of-fold {_fmt(summary.oof['dice_kaggle'])} with {summary.rule}", highlight=False)
    for name, run in result.runs.items():
        console.print(f"{name}: {run} (report: {result.reports[name].html})", highlight=False)
    if result.compare_html is not None:
        console.print(f"comparison: {result.compare_html} (summary: {result.compare_html.with_suffix('.md')})",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``study`` to ``app``."""
    app.command("study")(study)
