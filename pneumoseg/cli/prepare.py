"""``pneumoseg prepare``: DICOM + RLE (or PNG folders) -> the resized training cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console, err_console, fail
from pneumoseg.data.prepare import SIZES, PrepareResult, prepare_dicom, prepare_png

__all__ = ["prepare", "register"]

_SIZES = ", ".join(map(str, SIZES))


def _print_summary(result: PrepareResult, size: int) -> None:
    for line in result.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for line in result.failures:
        err_console.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
    table = Table(title=f"pneumoseg prepare -> {result.cache} ({size}px)", show_header=True)
    for col in ("prepared", "already done", "failed", "images in index", "positive"):
        table.add_column(col, justify="right")
    n_index = result.n_done + result.n_skipped
    table.add_row(str(result.n_done), str(result.n_skipped), str(result.n_failed), str(n_index),
                  f"{result.n_positive} ({result.n_positive / max(n_index, 1):.1%})")
    console.print(table)
    console.print(f"index: {result.index_path}", highlight=False, soft_wrap=True)


@cli_errors
def prepare(
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    dicom_dir: Annotated[Path | None, typer.Option("--dicom-dir", help="Folder searched for *.dcm.")] = None,
    rle: Annotated[Path | None, typer.Option("--rle", help="Annotation CSV (train-rle.csv).")] = None,
    png_dir: Annotated[Path | None, typer.Option("--png-dir", help="Folder with images/ and masks/.")] = None,
    size: Annotated[int, typer.Option("--size", help=f"Output size: one of {_SIZES}.")] = 512,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes [default: all].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild another size/layout.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Resize images and masks into a cache, with index.csv. Rerun the same command to resume.

    Either --dicom-dir DIR --rle CSV, or --png-dir DIR. Items that cannot be read are listed and
    skipped; the command then exits with code 2. An --out holding a cache of another size or layout
    is refused unless --overwrite (which deletes that cache's files first).
    """
    if (dicom_dir is None) == (png_dir is None):
        raise fail("give either --dicom-dir DIR --rle CSV, or --png-dir DIR (exactly one of them)")
    if dicom_dir is not None:
        if rle is None:
            raise fail("--dicom-dir needs --rle CSV (the annotation file, e.g. train-rle.csv)")
        result = prepare_dicom(dicom_dir, rle, out, size=size, workers=workers, progress=progress,
                               overwrite=overwrite)
    else:
        if rle is not None:
            raise fail("--rle goes with --dicom-dir; the PNG layout reads masks from --png-dir/masks")
        assert png_dir is not None
        result = prepare_png(png_dir, out, size=size, workers=workers, progress=progress, overwrite=overwrite)
    _print_summary(result, size)
    if result.n_failed:
        raise fail(f"{result.n_failed} item(s) could not be prepared (listed above); the others are in "
                   f"{result.index_path}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
