"""``pneumoseg explore``: dataset statistics, metadata table and figures for DICOM (+ RLE) or PNG sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import Progress, cli_errors, console, fail, print_failures, print_warnings

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


def _area(summary: dict[str, Any]) -> str:
    """Mask areas of the positives: mm² (with px) when every positive has a pixel spacing, else px."""
    px = _span(summary["mask_area_px"], " px")
    if summary.get("mask_area_mm2"):
        return f"{_span(summary['mask_area_mm2'], ' mm²')}; {px}"
    lacking = summary.get("n_positive_without_spacing", 0)
    return f"{px}; {lacking} of {summary['n_positive']} without pixel spacing" if lacking else px


def _labelled(summary: dict[str, Any]) -> bool:
    return bool(summary.get("labelled", True))


def _png_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    labels = [
        ("pneumothorax", f"{summary['n_positive']} ({summary['positive_rate']:.1%})"),
        ("no pneumothorax", str(summary["n_negative"])),
        ("images without mask", str(summary["n_without_mask"])),
        ("masks without image", str(summary["n_masks_without_image"])),
        ("regions per positive", _per(summary["regions_per_positive"]) or "-"),
        ("mask area (positives)", _area(summary)),
    ] if _labelled(summary) else [("labels", "unlabelled (no masks/ folder): image sizes only")]
    return [
        ("images", str(summary["n_images"])),
        ("left out (failed)", str(summary.get("n_failed", 0))),
        *labels,
        ("image size", _join(summary["image_size"])),
        ("DICOM metadata", "none in the PNG layout (no patient, age, sex, view, pixel spacing)"),
    ]


def summary_table(summary: dict[str, Any]) -> Table:
    """A two-column rich table of the dataset summary returned by ``explore`` or ``explore_png``."""
    png = summary.get("layout") == "png"
    unlabelled = " (unlabelled: no masks/)" if png else " (unlabelled: no --rle)"
    labelled = "" if summary.get("labelled", True) else unlabelled
    source = summary["png_dir"] if png else summary["dicom_dir"]
    table = Table(title=f"Dataset: {escape(source)}{labelled}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in _png_rows(summary) if png else _dicom_rows(summary):
        table.add_row(name, escape(value))
    return table


def _dicom_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    age, spacing, labelled = summary["age"], summary.get("pixel_spacing_mm"), _labelled(summary)
    labels = [
        ("pneumothorax", f"{summary['n_positive']} ({summary['positive_rate']:.1%})"),
        ("no pneumothorax", str(summary["n_negative"])),
        ("annotation rows", f"{summary['n_annotation_rows']} ({_per(summary['annotation_rows_per_image'])})"),
        ("regions per positive", _per(summary["regions_per_positive"]) or "-"),
        ("images without annotation row", str(summary["n_without_annotation_row"])),
        ("annotation ids without image", str(summary["n_annotation_ids_without_image"])),
    ] if labelled else [("labels", "unlabelled (no --rle): header statistics only")]
    by_view = [("positive rate by view", ", ".join(f"{v}: {d['positive_rate']:.1%} of {d['images']}"
                                                   for v, d in summary["by_view_position"].items()))
               ] if labelled else []
    rows = [
        ("images", f"{summary['n_images']} ({summary['n_patients']} patients)"),
        ("left out (failed)", str(summary.get("n_failed", 0))),
        *labels,
        ("sex", _join(summary["sex"])),
        ("view position", _join(summary["view_position"])),
        *by_view,
        ("age (years)", f"{_span(age)}; missing {age['missing']}, over 100: {age['over_100']}"),
        *([("mask area (positives)", _area(summary))] if labelled else []),
        ("pixel spacing", f"{_span(spacing, ' mm')}; {_join(summary['pixel_spacing_source'])}" if spacing else "-"),
        ("modality", _join(summary["modality"])),
        ("image size", _join(summary["image_size"])),
        ("transfer syntax", _join(summary["transfer_syntax"])),
    ]
    for label, part in summary.get("by_label", {}).items():
        if part["images"]:
            rows.append((f"{label}: sex / view / age", f"{_join(part['sex'])} | {_join(part['view_position'])} | "
                                                       f"{_span(part['age'])}"))
    return rows


@cli_errors
def explore(
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json, metadata.csv, samples.png, "
                                                    "distributions.png.")],
    dicom_dir: Annotated[Path | None, typer.Argument(help="Folder searched for *.dcm and *.dicom (recursively).",
                                                     show_default=False)] = None,
    rle: Annotated[Path | None, typer.Option("--rle", help="Annotation CSV (train-rle.csv, .csv.gz too); "
                                                           "without it: header statistics only.")] = None,
    png_dir: Annotated[Path | None, typer.Option("--png-dir", help="The PNG layout instead of DICOMs: DIR/images/ "
                                                                   "and optional DIR/masks/ (0/255), as prepare "
                                                                   "--png-dir reads.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Images in the sample grid (0: none).")] = 16,
    progress: Progress = True,
    full_header: Annotated[bool, typer.Option("--full-header/--short-header", help="Print every element of the "
                                                                                  "first file's header (pixel "
                                                                                  "data left out), not a "
                                                                                  "summary.")] = False,
) -> None:
    """Summarise a dataset: DICOM_DIR (labelled with --rle, or not) or --png-dir DIR; statistics and figures.

    DICOM: the first header, then the table; mask areas in mm² when every positive has a pixel
    spacing. PNG (images/ + masks/): label statistics and image sizes, no DICOM metadata. Files that
    cannot be used (unreadable, no pixel data, invalid SOPInstanceUID, bad RLE row, bad or
    mismatched mask) are listed, left out of the statistics, and make the command exit with code 2
    after writing.
    """
    from pneumoseg.data.explore import explore as explore_dataset  # lazy: keeps `pneumoseg --help` fast
    from pneumoseg.data.explore import explore_png
    from pneumoseg.io.dicom.read import DicomMeta, format_header

    if (dicom_dir is None) == (png_dir is None):
        raise fail("give either DICOM_DIR [--rle CSV], or --png-dir DIR (exactly one of them)")
    if png_dir is not None:
        if rle is not None:
            raise fail("--rle goes with DICOM_DIR; the PNG layout reads masks from --png-dir/masks")
        if full_header:
            raise fail("--full-header prints a DICOM header; the PNG layout (--png-dir) has none")
        summary = explore_png(png_dir, out, n_samples=samples, progress=progress)
        console.print("PNG layout: no DICOM header or metadata (label statistics and image sizes only)",
                      highlight=False)
    else:
        assert dicom_dir is not None
        summary = explore_dataset(dicom_dir, rle, out, n_samples=samples, progress=progress)
        if full_header:
            from pneumoseg.io.dicom.read import read_header
            from pneumoseg.util.paths import one_line

            first = dicom_dir / summary["first_file"]
            notes: list[str] = []
            header = read_header(first, notes=notes)
            summary["file_warnings"] += [one_line(f"{first}: warning: {note}") for note in notes]
            console.print(f"{escape(str(first))}:", highlight=False, soft_wrap=True)
            console.print(escape(str(header)), highlight=False, soft_wrap=True, markup=False)
        else:
            console.print(escape(format_header(DicomMeta(**summary["first_image"]))), highlight=False,
                          soft_wrap=True)
    console.print()
    console.print(summary_table(summary))
    print_warnings(summary["warnings"], file_warnings=summary["file_warnings"])
    print_failures(summary["failures"])
    for name, path in summary["files"].items():
        console.print(f"{name + ':':<15}{escape(path)}", highlight=False, soft_wrap=True)
    if summary["failures"]:
        raise fail(f"{len(summary['failures'])} file(s) could not be used (listed above) and were left out; "
                   f"the outputs in {escape(str(out))} cover the others")


def register(app: typer.Typer) -> None:
    app.command("explore")(explore)
