"""``pneumoseg explore``: dataset statistics, metadata table and figures for DICOM + RLE data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import PneumosegCommand, cli_errors, console, err_console, fail

__all__ = ["explore", "register"]


def _join(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def _per(counts: dict[str, int]) -> str:
    """{"1": 11, "4": 1} -> "1 per image: 11 images; 4 per image: 1 image"."""
    return "; ".join(f"{k} per image: {v} image{'s' if v != 1 else ''}" for k, v in counts.items())


def _span(stats: dict[str, Any], unit: str = "") -> str:
    if not stats["count"]:
        return "-"
    return f"{stats['min']:g} / {stats['median']:g} / {stats['max']:g}{unit} (min / median / max)"


def summary_table(summary: dict[str, Any]) -> Table:
    """A two-column rich table of the dataset summary returned by ``explore``."""
    labelled = "" if summary.get("labelled", True) else " (unlabelled: no --rle)"
    table = Table(title=f"Dataset: {escape(summary['dicom_dir'])}{labelled}", show_header=False,
                  title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    age = summary["age"]
    rows = [
        ("images", f"{summary['n_images']} ({summary['n_patients']} patients)"),
        ("left out (failed)", str(summary.get("n_failed", 0))),
        ("pneumothorax", f"{summary['n_positive']} ({summary['positive_rate']:.1%})"),
        ("no pneumothorax", str(summary["n_negative"])),
        ("annotation rows", f"{summary['n_annotation_rows']} ({_per(summary['annotation_rows_per_image'])})"),
        ("regions per positive", _per(summary["regions_per_positive"]) or "-"),
        ("images without annotation row", str(summary["n_without_annotation_row"])),
        ("annotation ids without image", str(summary["n_annotation_ids_without_image"])),
        ("sex", _join(summary["sex"])),
        ("view position", _join(summary["view_position"])),
        ("positive rate by view", ", ".join(f"{v}: {d['positive_rate']:.1%} of {d['images']}"
                                            for v, d in summary["by_view_position"].items())),
        ("age (years)", f"{_span(age)}; missing {age['missing']}, over 100: {age['over_100']}"),
        ("mask area (positives)", _span(summary["mask_area_px"], " px")),
        ("modality", _join(summary["modality"])),
        ("image size", _join(summary["image_size"])),
        ("transfer syntax", _join(summary["transfer_syntax"])),
    ]
    for label, part in summary.get("by_label", {}).items():
        if part["images"]:
            rows.append((f"{label}: sex / view / age", f"{_join(part['sex'])} | {_join(part['view_position'])} | "
                                                       f"{_span(part['age'])}"))
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


@cli_errors
def explore(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder searched for *.dcm (recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json, metadata.csv, samples.png, "
                                                    "distributions.png.")],
    rle: Annotated[Path | None, typer.Option("--rle", help="Annotation CSV (train-rle.csv, .csv.gz too); "
                                                           "without it: header statistics only.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Images in the sample grid (0: none).")] = 16,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    full_header: Annotated[bool, typer.Option("--full-header/--short-header", help="Print every element of the "
                                                                                  "first file's header (pixel "
                                                                                  "data left out), not a "
                                                                                  "summary.")] = False,
) -> None:
    """Summarise a DICOM dataset (labelled with --rle, or not): first header, statistics table and figures.

    Files that cannot be used (unreadable, no pixel data, invalid SOPInstanceUID, bad RLE row) are
    listed, left out of the statistics, and make the command exit with code 2 after writing.
    """
    from pneumoseg.data.explore import explore as explore_dataset  # lazy: keeps `pneumoseg --help` fast
    from pneumoseg.dicom import DicomMeta, format_header

    summary = explore_dataset(dicom_dir, rle, out, n_samples=samples, progress=progress)
    if full_header:
        import pydicom

        first = dicom_dir / summary["first_file"]
        console.print(f"{escape(str(first))}:", highlight=False, soft_wrap=True)
        console.print(escape(str(pydicom.dcmread(first, stop_before_pixels=True, force=True))), highlight=False,
                      soft_wrap=True, markup=False)
    else:
        console.print(escape(format_header(DicomMeta(**summary["first_image"]))), highlight=False, soft_wrap=True)
    console.print()
    console.print(summary_table(summary))
    # escape(): file names and header values are input, and may hold rich markup such as "[/]".
    for line in summary["file_warnings"]:  # already "<file>: warning: <text>"
        err_console.print(escape(line), highlight=False, soft_wrap=True, style="yellow")
    for line in summary["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in summary["failures"]:
        err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for name, path in summary["files"].items():
        console.print(f"{name + ':':<15}{escape(path)}", highlight=False, soft_wrap=True)
    if summary["failures"]:
        raise fail(f"{len(summary['failures'])} file(s) could not be used (listed above) and were left out; "
                   f"the outputs in {escape(str(out))} cover the others")


def register(app: typer.Typer) -> None:
    app.command("explore", cls=PneumosegCommand)(explore)
