"""``pneumoseg tune RUN`` and ``pneumoseg evaluate RUN``: post-processing search and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console

if TYPE_CHECKING:
    from pneumoseg.predict import Predictor

__all__ = ["evaluate", "register", "tune"]


def _predictor(run: Path, checkpoint: str, tta: bool, device: str | None) -> Predictor:
    from pneumoseg.predict import Predictor

    return Predictor([run], checkpoint=checkpoint, tta=tta, device=device)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


@cli_errors
def tune(
    run: Path = typer.Argument(..., help="Run folder written by `pneumoseg train`."),
    split: str = typer.Option("val", "--split", help="Split to tune on (train | val | test)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K | a .ckpt path."),
    tta: bool = typer.Option(False, "--tta", help="Horizontal-flip test-time augmentation."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Grid-search threshold / min-area / triplet rule on a split; store the best in RUN."""
    from pneumoseg.tune import tune_run

    best, table = tune_run(_predictor(run, checkpoint, tta, device), run, split, progress=progress)
    columns = ("mode", "threshold", "top_threshold", "min_area", "bottom_threshold", "dice_kaggle", "dice_positive")
    shown = Table(*columns, title=f"Post-processing search on {split} (top 5 of {len(table)})")
    for _, row in table.head(5).iterrows():
        shown.add_row(*(_fmt(row[c]) for c in columns))
    console.print(shown)
    console.print(f"best: {best.to_dict()} -> {run / 'postprocess.json'} (all rules: {run / 'tune.csv'})")


@cli_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by `pneumoseg train`."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (train | val | test)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K | a .ckpt path."),
    tta: bool = typer.Option(False, "--tta", help="Horizontal-flip test-time augmentation."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    report: bool = typer.Option(False, "--report", help="Also write RUN/report.html (+ .md), as `pneumoseg report`."),
) -> None:
    """Challenge metric (dice_kaggle), dice_positive and image-level detection on a split."""
    from pneumoseg.evaluate import evaluate_run

    metrics = evaluate_run(_predictor(run, checkpoint, tta, device), run, split, progress=progress)
    table = Table(title=f"{run.name}: {split} split", show_header=False)
    for key in ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity", "fpr_empty",
                "n_images", "n_positive"):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"outputs: {run / 'eval'} (metrics.json, per_image.csv, best.png, worst.png, cases.csv, cases/)")
    if report:
        from pneumoseg.report import write_report

        files = write_report(run)
        console.print(f"report: {files.html} (summary: {files.markdown})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``evaluate`` to ``app``."""
    app.command("tune")(tune)
    app.command("evaluate")(evaluate)
