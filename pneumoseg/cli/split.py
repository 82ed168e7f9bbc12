"""``pneumoseg split``: patient-grouped, stratified train/val/test (and folds) -> CACHE/splits.csv."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console, print_warnings

__all__ = ["register", "split"]


@cli_errors
def split(
    cache: Annotated[Path, typer.Argument(help="Cache folder from `pneumoseg prepare` (holds index.csv).")],
    val: Annotated[float | None, typer.Option("--val", show_default=False, help="Validation fraction "
                                              "(default 0.1; not with --folds, where fold 0 is the validation "
                                              "set).")] = None,
    test: Annotated[float, typer.Option("--test", help="Fraction of images held out for test.")] = 0.1,
    folds: Annotated[int, typer.Option("--folds", help="K >= 2: K folds of the non-test images (0: plain "
                                                       "train / val / test).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the assignment.")] = 10,
    force: Annotated[bool, typer.Option("--force/--no-force", help="Replace a splits.csv with other content "
                                                                  "(runs trained on it then no longer match "
                                                                  "their validation and test images).")] = False,
) -> None:
    """Split by patient (no patient in two splits), keeping the positive rate in every split.

    Writes CACHE/splits.csv. An existing splits.csv with other content is kept (exit 2) unless
    --force: runs trained on it would otherwise be validated and tested on other images.
    """
    import pandas as pd

    from pneumoseg.data.split import read_index, split_summary, write_splits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_splits(cache, val=val, test=test, folds=folds, seed=seed, force=force)
    print_warnings(str(w.message) for w in caught)
    splits = pd.read_csv(path, dtype={"image_id": str})
    summary = split_summary(read_index(cache), splits)
    table = Table(title=f"splits of {escape(str(cache))} (seed {seed})")
    for col in summary.columns:
        table.add_column(col.replace("_", " "), justify="left" if col == "split" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(*(f"{v:.1%}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("split")(split)
