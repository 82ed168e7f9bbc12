"""Explore a DICOM + RLE dataset or a PNG set: statistics, a metadata table, a sample grid, figures.

``explore(dicom_dir, rle_csv, out_dir)`` reads every DICOM header (``read_dicom_meta``: fast, no
decoding) and checks that pixel data is there, joins it with the annotation CSV by ImageId (the
same rule as prepare: the SOPInstanceUID, else the file stem; ``layouts.dicom_image_id``; the
``matched_by`` column says which) and writes, atomically:

* ``OUT/summary.json``       the dictionary returned (counts, rates, distributions, warnings, failures);
* ``OUT/metadata.csv``       one row per usable DICOM: header fields + has_pneumothorax (0/1),
  n_annotations (non-empty RLE rows), n_rle_rows, mask_area_px (union mask at Rows x Columns),
  pixel_spacing_mm (sqrt(row * column) of ``dicom.pixel_spacing_mm``; empty when the header has
  none), pixel_spacing_source (the attribute it came from), mask_area_mm2 (px * row * column
  spacing), file, matched_by;
* ``OUT/samples.png``        up to ``n_samples`` images, positives first, masks overlaid in red;
* ``OUT/distributions.png``  age, sex, view position, regions per positive, mask area, rate by view.

Like prepare, a bad item (unreadable file, no pixel data, invalid SOPInstanceUID, undecodable RLE
row, an id already taken by another file, a sample image that does not decode) is listed in
``summary["failures"]`` (one line naming the file or CSV row) and left out of every statistic;
the CLI then exits 2. Images without an annotation row count as "no pneumothorax" (one warning
says how many); annotation ImageIds without a DICOM are counted and reported. Without an annotation
CSV (``rle_csv=None``: an unlabelled folder) the statistics cover the headers only:
``summary["labelled"]`` is False, every label statistic is None (or empty), metadata.csv's label
columns are empty and the figures draw only header panels; nothing is counted as "no
pneumothorax", since unlabelled is not negative. Mask areas are summarised in mm²
when every positive has a pixel spacing, else in px (``summary["mask_area_unit"]``; a warning
says how many positives lack one).

``explore_png(png_dir, out_dir)`` does the same for the PNG layout that ``prepare --png-dir``
reads: ``png_dir/images/<name>.(png|jpg|jpeg)`` with optional ``png_dir/masks/<name>.png``
(0/255; no mask = no pneumothorax; no masks/ folder at all = unlabelled, as above: image sizes
only). image_id = the file stem (``paths.safe_name``);
metadata.csv holds ``PNG_COLUMNS`` (n_regions: 8-connected regions of the mask, prepare's
rule). There is no DICOM metadata (no patient, age, sex, view, pixel spacing): label
statistics, image sizes and areas in px only, and the summary says so. An unreadable image or
mask, a mask whose size differs from its image's, an unsafe or duplicate name is a failure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.util.csvsafe import safe_frame
from pneumoseg.io.dicom.read import pixel_spacing_mm, read_dicom, read_dicom_meta, read_header
from pneumoseg.errors import DataError, DicomError, PneumosegError
from pneumoseg.io.images import IMAGE_SUFFIXES, read_image, read_mask
from pneumoseg.io.layouts import dicom_image_id, find_dicoms, find_png_pairs, read_layout_mask
from pneumoseg.util.paths import check_output_dir, one_line, short_id
from pneumoseg.util.progress import progress_bar
from pneumoseg.io.rle import Annotations, read_annotations

__all__ = [
    "METADATA_COLUMNS",
    "PNG_COLUMNS",
    "Scan",
    "explore",
    "explore_png",
    "find_dicoms",
    "plot_distributions",
    "plot_samples",
    "scan_dataset",
    "scan_png",
    "summarize",
    "summarize_png",
]

METADATA_COLUMNS = [
    "image_id", "patient_id", "patient_age", "patient_sex", "modality", "body_part", "view_position",
    "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "transfer_syntax_name",
    "has_pneumothorax", "n_annotations", "n_rle_rows", "mask_area_px", "pixel_spacing_mm", "pixel_spacing_source",
    "mask_area_mm2", "file", "matched_by",
]
PNG_COLUMNS = ["image_id", "rows", "columns", "has_pneumothorax", "n_regions", "mask_area_px", "file", "mask_file"]
_THUMB = 256  # longest side of a sample-grid tile, pixels
_RED = np.array([255.0, 0.0, 0.0])


_Spacing = tuple[tuple[float, float], str]  # ((row, column) mm, source attribute): dicom.pixel_spacing_mm


def _pixel_data_and_spacing(path: Path) -> tuple[str | None, _Spacing | None]:
    """(why ``path`` has no usable pixel data (missing, truncated) or None, its pixel spacing or None).

    Pixels are not decoded: the whole data set is read with large values deferred (about 1 ms;
    ``read_header``, which also refuses pixel data cut short); ``read_dicom_meta`` stops before the
    pixel data and so cannot tell.
    """
    try:
        ds = read_header(path, pixels=True, defer_size=4096)
    except DicomError as exc:
        return str(exc).removeprefix(f"{path}: "), None
    if "PixelData" not in ds:
        return "DICOM file has no pixel data", None
    try:
        return None, pixel_spacing_mm(ds)
    except Exception:  # a malformed spacing value pydicom cannot convert: spacing unknown, image still usable
        return None, None


def _spacing_columns(area_px: int, spacing: _Spacing | None) -> dict[str, Any]:
    """pixel_spacing_mm (sqrt(row * column)), pixel_spacing_source, mask_area_mm2 (exact: px * row * column)."""
    if spacing is None:
        return {"pixel_spacing_mm": None, "pixel_spacing_source": "", "mask_area_mm2": None}
    (row, col), source = spacing
    return {"pixel_spacing_mm": round(math.sqrt(row * col), 9), "pixel_spacing_source": source,
            "mask_area_mm2": round(area_px * row * col, 6)}


@dataclass
class Scan:
    """What ``scan_dataset`` found.

    ``table``: one row per usable file (``METADATA_COLUMNS``; ``n_rle_rows`` is -1 for an image
    with no annotation row). ``failures``: one line per file left out (unreadable, no pixel data,
    invalid SOPInstanceUID, undecodable RLE row, duplicate image id). ``file_warnings``:
    ``"<file>: warning: <text>"`` lines from the DICOM reader. ``left_out_ids``: ids (or stems)
    of the files left out, so that their annotation rows are not reported as having no file.
    """

    table: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    file_warnings: list[str] = field(default_factory=list)
    left_out_ids: set[str] = field(default_factory=set)


def scan_dataset(files: list[Path], annotations: Annotations, root: Path, progress: bool = True) -> Scan:
    """Read each header, check its pixel data is there and join the annotations (see ``Scan``)."""
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    file_warnings: list[str] = []
    left_out: set[str] = set()
    taken: dict[str, Path] = {}
    with progress_bar(progress, transient=True) as bar:
        for path in bar.track(files, description="reading headers"):
            key = path.stem
            try:
                meta = read_dicom_meta(path)
                key = meta.image_id
                problem, spacing = _pixel_data_and_spacing(path)
                if problem:
                    raise DataError(f"{path}: {problem}")
                key, matched_by = dicom_image_id(meta.image_id, path, annotations)
                if key in taken:
                    raise DataError(f"{path}: duplicate image id {key!r} (also {taken[key]}); left out")
                rows = annotations.get(key)
                n_annotations = annotations.n_annotations(key) if rows else 0
                area = int(np.count_nonzero(annotations.mask(key, meta.rows, meta.columns))) if n_annotations else 0
            except PneumosegError as exc:
                failures.append(one_line(str(exc)))
                left_out.update({path.stem, key})  # its annotation rows, under either name
                continue
            taken[key] = path
            file_warnings += [one_line(f"{path}: warning: {w}") for w in getattr(meta, "warnings", ())]
            records.append({**meta.as_dict(), "image_id": key,
                            "has_pneumothorax": int(n_annotations > 0), "n_annotations": n_annotations,
                            "n_rle_rows": len(rows) if rows else -1, "mask_area_px": area,
                            **_spacing_columns(area, spacing), "file": path.relative_to(root).as_posix(), "matched_by": matched_by})
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    return Scan(table, failures, file_warnings, left_out)


def _counts(values: pd.Series, missing: str = "unknown") -> dict[str, int]:
    """Value -> count (descending), with empty / NaN values under ``missing``."""
    labels = values.fillna("").astype(str).str.strip().replace("", missing)
    return {str(k): int(v) for k, v in labels.value_counts().items()}


def _stats(values: pd.Series) -> dict[str, float | int | None]:
    """min / median / mean / max / count of a numeric series (None when empty)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return {"count": 0, "min": None, "median": None, "mean": None, "max": None}
    return {"count": int(v.size), "min": float(v.min()), "median": float(v.median()),
            "mean": round(float(v.mean()), 2), "max": float(v.max())}


def _label_stats(df: pd.DataFrame, regions: str) -> dict[str, Any]:
    """Counts, rate, regions per positive (column ``regions``), image sizes and px areas: both layouts."""
    n_images = len(df)
    pos = df[df["has_pneumothorax"] == 1]
    return {
        "n_images": n_images,
        "n_positive": len(pos),
        "n_negative": n_images - len(pos),
        "positive_rate": round(len(pos) / n_images, 4) if n_images else 0.0,
        "regions_per_positive": {str(k): int(v) for k, v in pos[regions].value_counts().sort_index().items()},
        "image_size": _counts(df["rows"].astype(str) + "x" + df["columns"].astype(str)),
        "mask_area_px": _stats(pos["mask_area_px"]),
        "mask_area_fraction_mean": round(float((pos["mask_area_px"] / (pos["rows"] * pos["columns"])).mean()), 5)
        if len(pos) else None,
    }


def _area_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Pixel spacings, and the positives' mask areas in mm² when every positive has a spacing (else None)."""
    pos = df[df["has_pneumothorax"] == 1]
    n_lacking = int(pd.to_numeric(pos["pixel_spacing_mm"], errors="coerce").isna().sum())
    in_mm2 = len(pos) > 0 and n_lacking == 0
    spacing = pd.to_numeric(df["pixel_spacing_mm"], errors="coerce")
    return {"mask_area_unit": "mm2" if in_mm2 else "px",
            "mask_area_mm2": _stats(pos["mask_area_mm2"]) if in_mm2 else None,
            "n_positive_without_spacing": n_lacking,
            "pixel_spacing_mm": {**_stats(spacing), "missing": int(spacing.isna().sum())},
            "pixel_spacing_source": _counts(df["pixel_spacing_source"], "none")}


def summarize(df: pd.DataFrame, annotations: Annotations, left_out_ids: Iterable[str] = ()) -> dict[str, Any]:
    """Dataset statistics from a ``scan_dataset`` table (JSON-serialisable, no file paths).

    ``left_out_ids``: ids of files left out as failures (their rows do not count as orphans).
    ``mask_area_mm2`` is None (and ``mask_area_unit`` "px") unless every positive has a spacing.
    """
    annotated = df[df["n_rle_rows"] > 0]
    orphans = sorted(set(annotations) - set(df["image_id"]) - set(left_out_ids))
    by_view = {str(view): {"images": len(g), "positive": int(g["has_pneumothorax"].sum()),
                           "positive_rate": round(float(g["has_pneumothorax"].mean()), 4)}
               for view, g in df.assign(view_position=df["view_position"].replace("", "unknown"))
               .groupby("view_position")}
    ages = pd.to_numeric(df["patient_age"], errors="coerce")
    return {
        **_label_stats(df, "n_annotations"),
        "n_patients": int(df["patient_id"].replace("", np.nan).nunique()),
        "n_without_annotation_row": int((df["n_rle_rows"] < 0).sum()),
        "n_matched_by_stem": int((df["matched_by"] == "stem").sum()),
        "n_annotation_ids_without_image": len(orphans),
        "n_annotation_rows": int(annotated["n_rle_rows"].sum()),
        "annotation_rows_per_image": {str(k): int(v) for k, v in
                                      annotated["n_rle_rows"].value_counts().sort_index().items()},
        "sex": _counts(df["patient_sex"]),
        "view_position": _counts(df["view_position"]),
        "modality": _counts(df["modality"]),
        "transfer_syntax": _counts(df["transfer_syntax_name"]),
        "age": {**_stats(ages), "missing": int(ages.isna().sum()), "over_100": int((ages > 100).sum())},
        **_area_summary(df),
        "by_view_position": by_view,
        "by_label": _by_label(df),
    }


def summarize_png(df: pd.DataFrame, n_masks_without_image: int = 0) -> dict[str, Any]:
    """Label statistics of a ``scan_png`` table: no DICOM metadata, so no patients, ages, views or mm²."""
    return {**_label_stats(df, "n_regions"), "dicom_metadata": False,
            "n_without_mask": int((df["mask_file"] == "").sum()),
            "n_masks_without_image": n_masks_without_image,
            "mask_area_unit": "px", "mask_area_mm2": None}


#: Summary keys (both layouts) that only a labelled set has: None in an unlabelled set's summary.
_LABEL_COUNTS = ("n_positive", "n_negative", "positive_rate", "mask_area_px", "mask_area_fraction_mean",
                 "mask_area_unit", "mask_area_mm2", "n_positive_without_spacing", "n_without_annotation_row",
                 "n_annotation_rows", "n_annotation_ids_without_image", "n_without_mask", "n_masks_without_image")
#: Metadata columns that only a labelled set has: left empty in an unlabelled set's metadata.csv.
_LABEL_COLUMNS = ("has_pneumothorax", "n_annotations", "n_rle_rows", "n_regions", "mask_area_px", "mask_area_mm2")


def _unlabelled(summary: dict[str, Any], df: pd.DataFrame) -> pd.DataFrame:
    """Drop the label statistics of an unlabelled set from ``summary`` (in place) and ``df``'s label columns.

    Unlabelled is not negative: zeros here would read as "every image without pneumothorax".
    """
    for key in _LABEL_COUNTS:
        if key in summary:
            summary[key] = None
    for key in ("regions_per_positive", "annotation_rows_per_image", "by_label"):
        if key in summary:
            summary[key] = {}
    if "by_view_position" in summary:
        summary["by_view_position"] = {v: {"images": d["images"]} for v, d in summary["by_view_position"].items()}
    return df.assign(**{c: "" for c in _LABEL_COLUMNS if c in df.columns})


def _tile(pixels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """uint8 (H, W) image + optional bool mask -> downsized RGB uint8 with the mask in red."""
    height, width = pixels.shape
    scale = min(1.0, _THUMB / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX), dtype=np.float64)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask is not None and mask.any():
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        rgb[small] = 0.55 * rgb[small] + 0.45 * _RED
    return rgb.astype(np.uint8)


def _area_label(row: pd.Series) -> str:
    """A tile's area caption: "1234 px", "1234 px, 35 mm²" or "no pneumothorax"."""
    area = int(row["mask_area_px"])
    if not area:
        return "no pneumothorax"
    mm2 = pd.to_numeric(row.get("mask_area_mm2"), errors="coerce")
    return f"{area} px" + ("" if pd.isna(mm2) else f", {mm2:.0f} mm²")


# (row of the table) -> (uint8 (H, W) pixels, bool (H, W) mask or None); raises PneumosegError
_Loader = Callable[[pd.Series], tuple[np.ndarray, np.ndarray | None]]


def _plot_grid(df: pd.DataFrame, load: _Loader, path: Path, n_samples: int, labelled: bool = True) -> dict[str, str]:
    """Write a grid of up to ``n_samples`` images (positives first); image_id -> failure of tiles that fail.

    ``labelled`` False: no area captions and an "unlabelled" title (no tile says "no pneumothorax")."""
    chosen = pd.concat([df[df["has_pneumothorax"] == 1], df[df["has_pneumothorax"] == 0]]).head(n_samples)
    n_cols = max(1, math.ceil(math.sqrt(len(chosen))))
    n_rows = max(1, math.ceil(len(chosen) / n_cols))
    fig = Figure(figsize=(2.6 * n_cols, 2.9 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    problems: dict[str, str] = {}
    for ax, (_, row) in zip(axes, chosen.iterrows(), strict=False):
        ax.set_title(f"{short_id(row['image_id'])}\n{_area_label(row) if labelled else ''}", fontsize=8)
        try:
            pixels, mask = load(row)
        except PneumosegError as exc:
            problems[row["image_id"]] = one_line(str(exc))
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.imshow(_tile(pixels, mask), interpolation="nearest")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Samples (positives first; pneumothorax in red)" if labelled else "Samples (unlabelled)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return problems


def _dicom_loader(annotations: Annotations, root: Path) -> _Loader:
    def load(row: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
        pixels = read_dicom(root / row["file"]).pixels
        return pixels, annotations.mask(row["image_id"], *pixels.shape) if row["mask_area_px"] else None
    return load


def _png_loader(root: Path) -> _Loader:
    def load(row: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
        return read_image(root / row["file"]), read_mask(root / row["mask_file"]) if row["mask_file"] else None
    return load


def plot_samples(df: pd.DataFrame, annotations: Annotations, root: Path, path: Path, n_samples: int) -> list[str]:
    """Write a grid of up to ``n_samples`` DICOM images (positives first, RLE masks in red) to ``path``.

    Returns the failure lines of the chosen images that do not decode (their tiles say so).
    """
    return list(_plot_grid(df, _dicom_loader(annotations, root), path, n_samples).values())


def _bars(ax: Axes, counts: dict[str, int], title: str, color: str = "tab:blue") -> None:
    ax.bar(list(counts), list(counts.values()), color=color)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _area_tick(value: float, _pos: int | None = None) -> str:
    """A log-axis tick as a plain number: 50, 200, 1k, 20k, 1.5M."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:g}{unit}"
    return f"{value:g}"


def _by_label(df: pd.DataFrame) -> dict[str, Any]:
    """Sex, view position and age, each for images with and without pneumothorax."""
    out: dict[str, Any] = {}
    for label, part in (("pneumothorax", df[df["has_pneumothorax"] == 1]),
                        ("no pneumothorax", df[df["has_pneumothorax"] != 1])):
        ages = pd.to_numeric(part["patient_age"], errors="coerce")
        out[label] = {"images": len(part), "sex": _counts(part["patient_sex"]),
                      "view_position": _counts(part["view_position"]),
                      "age": {**_stats(ages), "missing": int(ages.isna().sum())}}
    return out


def _area_panel(ax: Axes, df: pd.DataFrame, summary: dict[str, Any]) -> None:
    """Log-scale histogram of the positives' mask areas, in mm² when ``summary["mask_area_unit"]`` says so."""
    pos = df[df["has_pneumothorax"] == 1]
    in_mm2 = summary["mask_area_unit"] == "mm2"
    areas = pd.to_numeric(pos["mask_area_mm2" if in_mm2 else "mask_area_px"], errors="coerce").dropna()
    areas = areas[areas > 0]
    if len(areas):
        low = float(areas.min())
        bins = np.geomspace(low, max(2 * low, float(areas.max())), 20).tolist()  # all equal: still increasing
        ax.hist(areas, bins=bins, color="tab:red", edgecolor="white")
        ax.set_xscale("log")
        # Plain numbers (100, 1k, 10k) at 1-2-5 steps, not 10^2 exponents.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_area_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no positive images", ha="center", va="center", transform=ax.transAxes)
    if in_mm2:
        unit = "mm²"
    elif summary.get("dicom_metadata", True) and summary.get("n_positive_without_spacing"):
        unit = f"pixels: {summary['n_positive_without_spacing']} of {len(pos)} without pixel spacing"
    else:
        unit = "pixels" if summary.get("dicom_metadata", True) else "pixels: no pixel spacing in PNG"
    ax.set_title(f"Mask area of positives ({unit}; log scale)", fontsize=10)


def _suptitle(fig: Figure, summary: dict[str, Any]) -> None:
    fig.suptitle(f"{summary['n_images']} images, {summary['n_positive']} positive "
                 f"({summary['positive_rate']:.1%})", fontsize=12)


def _age_panel(ax: Axes, df: pd.DataFrame, summary: dict[str, Any]) -> None:
    ages = pd.to_numeric(df["patient_age"], errors="coerce").dropna()
    ax.hist(ages.clip(upper=100), bins=range(0, 105, 5), color="tab:blue", edgecolor="white")
    ax.set_title(f"Age in years ({summary['age']['missing']} missing, {summary['age']['over_100']} over 100 "
                 "counted at 100)", fontsize=10)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_unlabelled(df: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    """Only what an unlabelled set has: age, sex, view position (DICOM) and image sizes; no label panel."""
    dicom = summary.get("layout") != "png"
    n_panels = 4 if dicom else 1
    fig = Figure(figsize=(4.2 * n_panels + 0.5, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, n_panels)).ravel()
    if dicom:
        _age_panel(axes[0], df, summary)
        _bars(axes[1], summary["sex"], "Sex")
        _bars(axes[2], summary["view_position"], "View position")
    _bars(axes[-1], summary["image_size"], "Image size (rows x columns)")
    fig.suptitle(f"{summary['n_images']} images, unlabelled ({'no annotation CSV' if dicom else 'no masks/ folder'})",
                 fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def plot_distributions(df: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    """Write a 2x3 figure (age, sex, view, regions per positive, mask area, rate by view) to ``path``
    (unlabelled: age, sex, view and image size only)."""
    if not summary.get("labelled", True):
        _plot_unlabelled(df, summary, path)
        return
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax_age, ax_sex, ax_view), (ax_regions, ax_area, ax_rate) = fig.subplots(2, 3)
    _age_panel(ax_age, df, summary)
    _bars(ax_sex, summary["sex"], "Sex")
    views = summary["by_view_position"]
    labels = list(views)
    positives = [views[v]["positive"] for v in labels]
    negatives = [views[v]["images"] - views[v]["positive"] for v in labels]
    ax_view.bar(labels, negatives, label="no pneumothorax", color="tab:gray")
    ax_view.bar(labels, positives, bottom=negatives, label="pneumothorax", color="tab:red")
    ax_view.set_title("View position", fontsize=10)
    ax_view.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_view.legend(fontsize=8)
    _bars(ax_regions, summary["regions_per_positive"], "Annotated regions per positive image", "tab:red")
    _area_panel(ax_area, df, summary)
    ax_rate.bar(labels, [100 * views[v]["positive_rate"] for v in labels], color="tab:red")
    ax_rate.set_title("Positive rate by view position (%)", fontsize=10)
    _suptitle(fig, summary)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _plot_png_distributions(df: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    """A 2x2 figure for the PNG layout: labels, regions per positive, mask area (px), image sizes
    (unlabelled: image sizes only)."""
    if not summary.get("labelled", True):
        _plot_unlabelled(df, summary, path)
        return
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax_labels, ax_regions), (ax_area, ax_size) = fig.subplots(2, 2)
    ax_labels.bar(["pneumothorax", "no pneumothorax"], [summary["n_positive"], summary["n_negative"]],
                  color=["tab:red", "tab:gray"])
    ax_labels.set_title(f"Labels ({summary['n_without_mask']} image(s) without a mask counted as no "
                        "pneumothorax)", fontsize=10)
    ax_labels.set_ylabel("images")
    ax_labels.yaxis.set_major_locator(MaxNLocator(integer=True))
    _bars(ax_regions, summary["regions_per_positive"], "Mask regions (8-connected) per positive image", "tab:red")
    _area_panel(ax_area, df, summary)
    _bars(ax_size, summary["image_size"], "Image size (rows x columns; no DICOM metadata in PNG)")
    _suptitle(fig, summary)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _failures_warning(failures: list[str]) -> list[str]:
    return [f"{len(failures)} file(s) could not be used and were left out of every statistic (listed above)"] \
        if failures else []


def _warnings(summary: dict[str, Any], failures: list[str], annotation_warnings: list[str],
              labelled: bool = True) -> list[str]:
    out = list(annotation_warnings)
    if not labelled:
        out.append("no annotation CSV (--rle): unlabelled; header statistics only, no label statistics")
    elif summary["n_without_annotation_row"]:
        out.append(f"{summary['n_without_annotation_row']} image(s) have no row in the annotation CSV; "
                   "counted as no pneumothorax")
    if summary["n_annotation_ids_without_image"]:
        out.append(f"{summary['n_annotation_ids_without_image']} ImageId(s) in the annotation CSV have no "
                   "DICOM file; ignored")
    if summary["n_matched_by_stem"]:
        out.append(f"{summary['n_matched_by_stem']} image(s) matched to their annotation rows by file name, not "
                   "by the SOPInstanceUID in the header (metadata.csv: matched_by=stem)")
    if summary["n_positive_without_spacing"]:
        out.append(f"{summary['n_positive_without_spacing']} of {summary['n_positive']} positive image(s) have no "
                   "pixel spacing (PixelSpacing or ImagerPixelSpacing): mask areas are given in px, not mm²")
    return out + _failures_warning(failures)


def _png_warnings(summary: dict[str, Any], failures: list[str]) -> list[str]:
    out = ["PNG layout: no DICOM metadata (patient, age, sex, view position, modality, pixel spacing): "
           "label statistics and image sizes only, mask areas in px"]
    if not summary["labelled"]:
        out.append("no masks/ folder: unlabelled; image sizes only, no label statistics")
    elif summary["n_without_mask"]:
        out.append(f"{summary['n_without_mask']} image(s) have no mask in masks/; counted as no pneumothorax")
    if summary["n_masks_without_image"]:
        out.append(f"{summary['n_masks_without_image']} mask(s) in masks/ have no image in images/; ignored")
    return out + _failures_warning(failures)


def _output_paths(out: Path, n_samples: int) -> dict[str, Path]:
    paths = {"summary": out / "summary.json", "metadata": out / "metadata.csv",
             "distributions": out / "distributions.png"}
    if n_samples > 0:
        paths["samples"] = out / "samples.png"
    return paths


def _samples_left_out(df: pd.DataFrame, load: _Loader, paths: dict[str, Path], n_samples: int,
                      failures: list[str], what: str, labelled: bool = True) -> pd.DataFrame:
    """Draw the sample grid; a sample that does not decode is a bad item too: listed and left out."""
    if "samples" not in paths:
        return df
    bad = _plot_grid(df, load, paths["samples"], n_samples, labelled)
    failures += list(bad.values())
    df = df[~df["image_id"].isin(bad)].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{what} could be used; first: {failures[0]}")
    return df


def _write(summary: dict[str, Any], df: pd.DataFrame, paths: dict[str, Path],
           plot: Callable[[pd.DataFrame, dict[str, Any], Path], None]) -> dict[str, Any]:
    """Write metadata.csv, the distributions figure and summary.json (last); returns ``summary``."""
    with atomic_path(paths["metadata"]) as tmp:
        safe_frame(df).to_csv(tmp, index=False)
    plot(df, summary, paths["distributions"])
    summary["n_failed"] = len(summary["failures"])
    summary["files"] = {name: str(p) for name, p in paths.items()}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    return summary


def _png_layout_hint(root: Path) -> str:
    """" (use --png-dir)" when ``root`` looks like the PNG layout (images/ holding images), else ""."""
    images = root / "images"
    if images.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
        return f"; {images} holds images: for the PNG layout (images/ + masks/) use --png-dir {root}"
    return ""


def explore(dicom_dir: str | os.PathLike[str], rle_csv: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
            n_samples: int = 16, progress: bool = True) -> dict[str, Any]:
    """Scan ``dicom_dir`` with the annotations ``rle_csv``, write the four outputs, return the summary.

    The summary holds the statistics of ``summarize`` (over the usable files only) plus
    ``first_image`` (DicomMeta.as_dict of the first usable file), ``first_file`` (its path relative to
    ``dicom_dir``), ``by_label`` (sex / view / age per label), ``warnings``, ``file_warnings``
    (``"<file>: warning: <text>"``), ``failures`` (one line per file left out) and ``files``
    (output paths). The output folder is checked first (it must not overlap the inputs and must
    be writable). Raises DataError for a missing/empty folder, a bad ``out_dir`` or when no file
    is usable, RLEError for an unreadable CSV.
    """
    root = Path(dicom_dir)
    out = check_output_dir(out_dir, [root] if rle_csv is None else [root, rle_csv], create=False)
    try:
        files = find_dicoms(root)
    except DataError as exc:
        raise DataError(f"{exc}{_png_layout_hint(root) if root.is_dir() else ''}") from None
    annotations = Annotations("<no annotation CSV>") if rle_csv is None else read_annotations(rle_csv)
    check_output_dir(out_dir)
    scan = scan_dataset(files, annotations, root, progress=progress)
    df, failures, left_out = scan.table, scan.failures, set(scan.left_out_ids)
    none_usable = f"{root}: none of the {len(files)} .dcm files"
    if df.empty:
        raise DataError(f"{none_usable} could be used; first: {failures[0]}")
    paths = _output_paths(out, n_samples)
    kept = _samples_left_out(df, _dicom_loader(annotations, root), paths, n_samples, failures, none_usable,
                             rle_csv is not None)
    left_out |= set(df["image_id"]) - set(kept["image_id"])
    df = kept
    summary: dict[str, Any] = {"dicom_dir": str(root), "layout": "dicom",
                               "rle_csv": None if rle_csv is None else str(rle_csv),
                               "labelled": rle_csv is not None, **summarize(df, annotations, left_out)}
    # Through JSON and back: the summary returned equals the summary.json written (tuples -> lists).
    summary["first_image"] = json.loads(json.dumps(read_dicom_meta(root / df["file"].iloc[0]).as_dict()))
    summary["first_file"] = str(df["file"].iloc[0])  # relative to dicom_dir
    summary["warnings"] = _warnings(summary, failures, [one_line(w) for w in annotations.warnings()], rle_csv is not None)
    summary["file_warnings"] = scan.file_warnings
    summary["failures"] = failures
    if rle_csv is None:
        df = _unlabelled(summary, df)
    return _write(summary, df, paths, plot_distributions)


# --- the PNG layout (prepare --png-dir) -------------------------------------------------------------


def scan_png(images: dict[str, Path], masks: dict[str, Path], root: Path, progress: bool = True) -> Scan:
    """Decode every image and mask (``PNG_COLUMNS``; paths relative to ``root``); failures as in ``Scan``.

    A mask whose size differs from its image's is a failure naming both files.
    """
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    with progress_bar(progress, transient=True) as bar:
        for image_id, path in bar.track(sorted(images.items()), description="reading images"):
            mask_path = masks.get(image_id)
            try:
                image = read_image(path)
                mask = read_layout_mask(mask_path, image.shape, path) if mask_path else np.zeros(image.shape, bool)
            except PneumosegError as exc:
                failures.append(one_line(str(exc)))
                continue
            area = int(np.count_nonzero(mask))
            n_regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if area else 0
            records.append({"image_id": image_id, "rows": image.shape[0], "columns": image.shape[1],
                            "has_pneumothorax": int(area > 0), "n_regions": int(n_regions), "mask_area_px": area,
                            "file": path.relative_to(root).as_posix(),
                            "mask_file": mask_path.relative_to(root).as_posix() if mask_path else ""})
    return Scan(pd.DataFrame.from_records(records, columns=PNG_COLUMNS), failures)


def explore_png(png_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], n_samples: int = 16,
                progress: bool = True) -> dict[str, Any]:
    """Explore the PNG layout (see the module docstring): the four outputs, and the summary returned.

    The summary holds ``summarize_png`` (over the usable images only), ``png_dir``, ``layout``
    ("png"), ``labelled`` (a masks/ folder exists), ``first_file``, ``warnings`` (the first says
    that there is no DICOM metadata), ``failures``, ``n_failed`` and ``files``. Raises DataError
    for a missing folder or images/, a bad ``out_dir`` or when no image is usable.
    """
    root = Path(png_dir)
    out = check_output_dir(out_dir, [root], create=False)
    pairs = find_png_pairs(root)
    images, masks, orphans, failures = pairs.images, pairs.masks, pairs.orphans, list(pairs.failures)
    check_output_dir(out_dir)
    scan = scan_png(images, masks, root, progress=progress)
    failures += scan.failures
    none_usable = f"{root / 'images'}: none of the images"
    if scan.table.empty:
        raise DataError(f"{none_usable} could be used; first: {failures[0]}")
    paths = _output_paths(out, n_samples)
    labelled = (root / "masks").is_dir()
    df = _samples_left_out(scan.table, _png_loader(root), paths, n_samples, failures, none_usable, labelled)
    summary: dict[str, Any] = {"png_dir": str(root), "layout": "png", "labelled": labelled,
                               **summarize_png(df, len(orphans)), "first_file": str(df["file"].iloc[0])}
    summary["warnings"] = _png_warnings(summary, failures)
    summary["file_warnings"] = []
    summary["failures"] = failures
    if not labelled:
        df = _unlabelled(summary, df)
    return _write(summary, df, paths, _plot_png_distributions)
