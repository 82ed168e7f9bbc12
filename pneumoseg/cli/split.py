"""``pneumoseg split``: patient-grouped, stratified train/val/test (and folds) -> CACHE/splits.csv."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console, err_console
from pneumoseg.data.split import read_index, split_summary, write_splits

__all__ = ["register", "split"]


@cli_errors
def split(
    cache: Annotated[Path, typer.Argument(help="Cache folder from `pneumoseg prepare` (holds index.csv).")],
    val: Annotated[float, typer.Option("--val", help="Validation fraction (not with --folds).")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction of images held out for test.")] = 0.1,
    folds: Annotated[int, typer.Option("--folds", help="K >= 2: folds of the non-test part.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the assignment.")] = 10,
) -> None:
    """Split by patient (no patient in two splits), keeping the positive rate in every split."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_splits(cache, val=val, test=test, folds=folds, seed=seed)
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    splits = pd.read_csv(path, dtype={"image_id": str})
    summary = split_summary(read_index(cache), splits)
    table = Table(title=f"splits of {cache} (seed {seed})")
    for col in summary.columns:
        table.add_column(col.replace("_", " "), justify="left" if col == "split" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(*(f"{v:.1%}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("split")(split)
