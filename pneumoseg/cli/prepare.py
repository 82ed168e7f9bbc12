"""``pneumoseg prepare``: DICOM + RLE (or PNG folders) -> the resized training cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import Progress, cli_errors, console, fail, print_failures, print_warnings

if TYPE_CHECKING:
    from pneumoseg.data.prepare import PrepareResult

# Literal copies (pneumoseg.data.prepare / pneumoseg.io.images import cv2 and numpy); equality with the
# library's constants is checked in tests/cli/test_lazy_cli.py.
SIZES = tuple(range(128, 1024 + 1, 32))
DEFAULT_MASK_RULE = "soft"
MASK_RULES: tuple[str, ...] = ("any", "fraction", "soft")

__all__ = ["prepare", "register"]

_RULES = ", ".join(MASK_RULES)


def _print_summary(result: PrepareResult, size: int) -> None:
    print_warnings(result.warnings, file_warnings=result.file_warnings)
    print_failures(result.failures)
    table = Table(title=f"pneumoseg prepare -> {escape(str(result.cache))} ({size}px)", show_header=True)
    for col in ("prepared", "already done", "failed", "images in index", "positive"):
        table.add_column(col, justify="right")
    n_index = result.n_done + result.n_skipped
    table.add_row(str(result.n_done), str(result.n_skipped), str(result.n_failed), str(n_index),
                  f"{result.n_positive} ({result.n_positive / max(n_index, 1):.1%})")
    console.print(table)
    console.print(f"index: {escape(str(result.index_path))}", highlight=False, soft_wrap=True)


@cli_errors
def prepare(
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    dicom_dir: Annotated[Path | None, typer.Option("--dicom-dir", help="Folder searched for *.dcm and *.dicom.")] = None,
    rle: Annotated[Path | None, typer.Option("--rle", help="Annotation CSV (train-rle.csv).")] = None,
    png_dir: Annotated[Path | None, typer.Option("--png-dir", help="Folder with images/ and masks/.")] = None,
    size: Annotated[int, typer.Option("--size", help=f"Output size in pixels: a multiple of 32 from {SIZES[0]} to "
                                                     f"{SIZES[-1]} (256, 384, 512, 768 and 1024 are common).")] = 512,
    workers: Annotated[int | None, typer.Option("--workers", min=1, show_default=False,
                                                help="Worker processes (default: one per CPU core).")] = None,
    mask_rule: Annotated[str, typer.Option("--mask-rule", help=f"Downscaling of the training masks: one of "
                                            f"{_RULES} (any covered pixel / >= half covered / covered "
                                            "fraction 0..255).")] = DEFAULT_MASK_RULE,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Rebuild a cache of another size, layout or "
                                                                "mask rule (deletes only its own files).")] = False,
    progress: Progress = True,
    exact_decode: Annotated[bool, typer.Option(
        "--exact-decode", help="--dicom-dir: decode every image in full before resizing (PNGs always "
                               "are). By default 8-bit JPEG images at least twice --size are decoded at a "
                               "reduced DCT scale (1/2, 1/4, 1/8), ~0.06 grey level from the exact path on "
                               "average (docs/data.md).")] = False,
) -> None:
    """Resize images and masks into a cache, with index.csv. Rerun the same command to resume.

    Either --dicom-dir DIR --rle CSV, or --png-dir DIR. Items that cannot be read (or whose names
    cannot name a file) are listed and skipped; the command then exits with code 2. --out must not
    contain or lie in an input folder, and must be new, empty or a pneumoseg cache. A cache of
    another size, layout or mask rule is refused unless --overwrite (which deletes only that
    cache's own files). CACHE/truth/ keeps every mask at its source resolution for evaluation.
    """
    from pneumoseg.data.prepare import prepare_dicom, prepare_png

    if (dicom_dir is None) == (png_dir is None):
        raise fail("give either --dicom-dir DIR --rle CSV, or --png-dir DIR (exactly one of them)")
    if dicom_dir is not None:
        if rle is None:
            raise fail("--dicom-dir needs --rle CSV (the annotation file, e.g. train-rle.csv)")
        result = prepare_dicom(dicom_dir, rle, out, size=size, workers=workers, progress=progress,
                               overwrite=overwrite, mask_rule=mask_rule, exact_decode=exact_decode)
    else:
        if rle is not None:
            raise fail("--rle goes with --dicom-dir; the PNG layout reads masks from --png-dir/masks")
        assert png_dir is not None
        result = prepare_png(png_dir, out, size=size, workers=workers, progress=progress, overwrite=overwrite,
                             mask_rule=mask_rule)
    _print_summary(result, size)
    if result.n_failed:
        raise fail(f"{result.n_failed} item(s) could not be prepared (listed above); the others are in "
                   f"{escape(str(result.index_path))}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
