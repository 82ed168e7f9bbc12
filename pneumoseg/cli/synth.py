"""``pneumoseg synth OUT``: write a synthetic data set in the challenge's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import Progress, cli_errors, console

__all__ = ["register", "synth"]


@cli_errors
def synth(
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="Output folder: gets dicom/, train-rle.csv and README.txt.")],
    n: Annotated[int, typer.Option("--n", metavar="N", help="Number of images.")] = 200,
    size: Annotated[int, typer.Option("--size", metavar="PX", help="Image height and width in pixels (>= 64).")] = 512,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Random seed; the same seed gives the same files.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace .dcm files already in OUT/dicom.")] = False,
    progress: Progress = True,
) -> None:
    """Write synthetic chest radiographs (DICOM) with pneumothorax annotations (train-rle.csv)."""
    from pneumoseg.data.synth import generate_dataset  # keeps `pneumoseg --help` fast

    summary = generate_dataset(out, n=n, size=size, seed=seed, progress=progress, overwrite=overwrite)
    table = Table(title=f"Synthetic data set (seed {seed}, {size}x{size} px)", show_header=False)
    table.add_row("images", str(summary.n_images))
    table.add_row("positive", f"{summary.n_positive} ({summary.n_positive / summary.n_images:.1%})")
    table.add_row("patients", str(summary.n_patients))
    table.add_row("annotation rows", str(summary.n_rows))
    table.add_row("DICOM files", str(summary.out_dir / "dicom"))
    table.add_row("annotations", str(summary.csv_path))
    console.print(table)
    console.print("[yellow]The images are synthetic phantoms, not patient data (see README.txt).[/]")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""
    app.command("synth")(synth)
