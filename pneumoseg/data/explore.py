"""Explore a DICOM + RLE dataset: statistics, a metadata table, a sample grid, distribution figures.

``explore(dicom_dir, rle_csv, out_dir)`` reads every DICOM header (``read_dicom_meta``: fast, no
decoding) and checks that pixel data is there, joins it with the annotation CSV by ImageId (the
same rule as prepare: the SOPInstanceUID, else the file stem; ``paths.dicom_image_id``; the
``matched_by`` column says which) and writes, atomically:

* ``OUT/summary.json``       the dictionary returned (counts, rates, distributions, warnings, failures);
* ``OUT/metadata.csv``       one row per usable DICOM: header fields + has_pneumothorax (0/1),
  n_annotations (non-empty RLE rows), n_rle_rows, mask_area_px (union mask at Rows x Columns),
  file, matched_by;
* ``OUT/samples.png``        up to ``n_samples`` images, positives first, masks overlaid in red;
* ``OUT/distributions.png``  age, sex, view position, regions per positive, mask area, rate by view.

Like prepare, a bad item (unreadable file, no pixel data, invalid SOPInstanceUID, undecodable RLE
row, an id already taken by another file, a sample image that does not decode) is listed in
``summary["failures"]`` (one line naming the file or CSV row) and left out of every statistic;
the CLI then exits 2. Images without an annotation row count as "no pneumothorax" (one warning
says how many); annotation ImageIds without a DICOM are counted and reported. Without an annotation
CSV (``rle_csv=None``: an unlabelled folder) the statistics cover the headers only and no image
is counted as positive; ``summary["labelled"]`` says which.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image

from pneumoseg.atomic import atomic_path, atomic_write_text
from pneumoseg.dicom import read_dicom, read_dicom_meta
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.paths import check_output_dir, dicom_image_id, one_line
from pneumoseg.progress import progress_bar
from pneumoseg.rle import Annotations, read_annotations

__all__ = [
    "METADATA_COLUMNS",
    "Scan",
    "explore",
    "find_dicoms",
    "plot_distributions",
    "plot_samples",
    "scan_dataset",
    "summarize",
]

METADATA_COLUMNS = [
    "image_id", "patient_id", "patient_age", "patient_sex", "modality", "body_part", "view_position",
    "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "transfer_syntax_name",
    "has_pneumothorax", "n_annotations", "n_rle_rows", "mask_area_px", "file", "matched_by",
]
_THUMB = 256  # longest side of a sample-grid tile, pixels
_RED = np.array([255.0, 0.0, 0.0])


def find_dicoms(dicom_dir: str | os.PathLike[str]) -> list[Path]:
    """All ``*.dcm`` files under ``dicom_dir`` (recursively, any case), sorted; DataError if none."""
    root = Path(dicom_dir)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found (or not a folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
    if not files:
        raise DataError(f"{root}: no .dcm files found (searched recursively)")
    return files


def _pixel_data_problem(path: Path) -> str | None:
    """Why ``path`` has no usable pixel data (missing, truncated), else None; pixels are not decoded.

    Reads the whole data set with large values deferred (about 1 ms); ``read_dicom_meta`` stops
    before the pixel data and so cannot tell.
    """
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, defer_size=4096)
        except Exception as exc:
            return f"unreadable DICOM data ({type(exc).__name__}: {exc})"
    if any("end of file" in str(w.message).lower() for w in caught):
        return "truncated DICOM file (pixel data cut short)"
    if "PixelData" not in ds:
        return "DICOM file has no pixel data"
    elem = ds.get_item("PixelData")
    length, start = getattr(elem, "length", 0), getattr(elem, "value_tell", None)
    if start is not None and length != 0xFFFFFFFF and start + length > path.stat().st_size:
        return f"truncated DICOM file (pixel data needs {length} bytes, the file ends before)"
    return None


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
                problem = _pixel_data_problem(path)
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
                            "file": path.relative_to(root).as_posix(), "matched_by": matched_by})
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


def summarize(df: pd.DataFrame, annotations: Annotations, left_out_ids: Iterable[str] = ()) -> dict[str, Any]:
    """Dataset statistics from a ``scan_dataset`` table (JSON-serialisable, no file paths).

    ``left_out_ids``: ids of files left out as failures (their rows do not count as orphans).
    """
    n_images = len(df)
    pos = df[df["has_pneumothorax"] == 1]
    annotated = df[df["n_rle_rows"] > 0]
    orphans = sorted(set(annotations) - set(df["image_id"]) - set(left_out_ids))
    by_view = {str(view): {"images": len(g), "positive": int(g["has_pneumothorax"].sum()),
                           "positive_rate": round(float(g["has_pneumothorax"].mean()), 4)}
               for view, g in df.assign(view_position=df["view_position"].replace("", "unknown"))
               .groupby("view_position")}
    ages = pd.to_numeric(df["patient_age"], errors="coerce")
    return {
        "n_images": n_images,
        "n_patients": int(df["patient_id"].replace("", np.nan).nunique()),
        "n_positive": len(pos),
        "n_negative": n_images - len(pos),
        "positive_rate": round(len(pos) / n_images, 4) if n_images else 0.0,
        "n_without_annotation_row": int((df["n_rle_rows"] < 0).sum()),
        "n_matched_by_stem": int((df["matched_by"] == "stem").sum()),
        "n_annotation_ids_without_image": len(orphans),
        "n_annotation_rows": int(annotated["n_rle_rows"].sum()),
        "annotation_rows_per_image": {str(k): int(v) for k, v in
                                      annotated["n_rle_rows"].value_counts().sort_index().items()},
        "regions_per_positive": {str(k): int(v) for k, v in
                                 pos["n_annotations"].value_counts().sort_index().items()},
        "sex": _counts(df["patient_sex"]),
        "view_position": _counts(df["view_position"]),
        "modality": _counts(df["modality"]),
        "image_size": _counts(df["rows"].astype(str) + "x" + df["columns"].astype(str)),
        "transfer_syntax": _counts(df["transfer_syntax_name"]),
        "age": {**_stats(ages), "missing": int(ages.isna().sum()), "over_100": int((ages > 100).sum())},
        "mask_area_px": _stats(pos["mask_area_px"]),
        "mask_area_fraction_mean": round(float((pos["mask_area_px"] / (pos["rows"] * pos["columns"])).mean()), 5)
        if len(pos) else None,
        "by_view_position": by_view,
        "by_label": _by_label(df),
    }


def _short_id(image_id: str) -> str:
    """The distinguishing tail of a UID (last three components), or the id itself."""
    parts = image_id.split(".")
    return ".".join(parts[-3:]) if len(parts) > 3 else image_id


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


def plot_samples(df: pd.DataFrame, annotations: Annotations, root: Path, path: Path, n_samples: int) -> list[str]:
    """Write a grid of up to ``n_samples`` images (positives first) to ``path``.

    Returns the failure lines of the chosen images that do not decode (their tiles say so).
    """
    chosen = pd.concat([df[df["has_pneumothorax"] == 1], df[df["has_pneumothorax"] == 0]]).head(n_samples)
    n_cols = max(1, math.ceil(math.sqrt(len(chosen))))
    n_rows = max(1, math.ceil(len(chosen) / n_cols))
    fig = Figure(figsize=(2.6 * n_cols, 2.9 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    problems: list[str] = []
    for ax, (_, row) in zip(axes, chosen.iterrows(), strict=False):
        area = int(row["mask_area_px"])
        ax.set_title(f"{_short_id(row['image_id'])}\n{f'{area} px' if area else 'no pneumothorax'}", fontsize=8)
        try:
            image = read_dicom(root / row["file"])
        except PneumosegError as exc:
            problems.append(one_line(str(exc)))
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
            continue
        mask = annotations.mask(row["image_id"], *image.pixels.shape) if area else None
        ax.imshow(_tile(image.pixels, mask), interpolation="nearest")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Samples (positives first; pneumothorax in red)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return problems


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


def plot_distributions(df: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    """Write a 2x3 figure (age, sex, view, regions per positive, mask area, rate by view) to ``path``."""
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax_age, ax_sex, ax_view), (ax_regions, ax_area, ax_rate) = fig.subplots(2, 3)
    ages = pd.to_numeric(df["patient_age"], errors="coerce").dropna()
    ax_age.hist(ages.clip(upper=100), bins=range(0, 105, 5), color="tab:blue", edgecolor="white")
    ax_age.set_title(f"Age in years ({summary['age']['missing']} missing, {summary['age']['over_100']} over 100 "
                     "counted at 100)", fontsize=10)
    ax_age.set_ylabel("images")
    ax_age.yaxis.set_major_locator(MaxNLocator(integer=True))
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
    areas = df.loc[df["has_pneumothorax"] == 1, "mask_area_px"]
    if len(areas):
        low = max(1, areas.min())
        bins = np.geomspace(low, max(2 * low, areas.max()), 20)  # all areas equal: still increasing
        ax_area.hist(areas, bins=bins, color="tab:red", edgecolor="white")
        ax_area.set_xscale("log")
        # Plain numbers (100, 1k, 10k) at 1-2-5 steps, not 10^2 exponents.
        ax_area.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_area.xaxis.set_major_formatter(FuncFormatter(_area_tick))
        ax_area.xaxis.set_minor_formatter(NullFormatter())
        ax_area.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax_area.text(0.5, 0.5, "no positive images", ha="center", va="center", transform=ax_area.transAxes)
    ax_area.set_title("Mask area of positives (pixels, log scale)", fontsize=10)
    ax_rate.bar(labels, [100 * views[v]["positive_rate"] for v in labels], color="tab:red")
    ax_rate.set_title("Positive rate by view position (%)", fontsize=10)
    fig.suptitle(f"{summary['n_images']} images, {summary['n_positive']} positive "
                 f"({summary['positive_rate']:.1%})", fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _warnings(summary: dict[str, Any], failures: list[str], annotation_warnings: list[str],
              labelled: bool = True) -> list[str]:
    out = list(annotation_warnings)
    if not labelled:
        out.append("no annotation CSV (--rle): header statistics only; every image is counted as "
                   "no pneumothorax")
    elif summary["n_without_annotation_row"]:
        out.append(f"{summary['n_without_annotation_row']} image(s) have no row in the annotation CSV; "
                   "counted as no pneumothorax")
    if summary["n_annotation_ids_without_image"]:
        out.append(f"{summary['n_annotation_ids_without_image']} ImageId(s) in the annotation CSV have no "
                   "DICOM file; ignored")
    if summary["n_matched_by_stem"]:
        out.append(f"{summary['n_matched_by_stem']} image(s) matched to their annotation rows by file name, not "
                   "by the SOPInstanceUID in the header (metadata.csv: matched_by=stem)")
    if failures:
        out.append(f"{len(failures)} file(s) could not be used and were left out of every statistic; "
                   f"first: {failures[0]}")
    return out


def _annotation_warnings(annotations: Annotations) -> list[str]:
    """The annotation file's own warnings (``Annotations.warnings()``: duplicate rows), if it has any."""
    found = getattr(annotations, "warnings", ())
    return [one_line(str(w)) for w in (found() if callable(found) else found)]


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
    files = find_dicoms(root)
    annotations = Annotations("<no annotation CSV>") if rle_csv is None else read_annotations(rle_csv)
    check_output_dir(out_dir)
    scan = scan_dataset(files, annotations, root, progress=progress)
    df, failures, left_out = scan.table, scan.failures, set(scan.left_out_ids)
    if df.empty:
        raise DataError(f"{root}: none of the {len(files)} .dcm files could be used; first: {failures[0]}")
    paths = {"summary": out / "summary.json", "metadata": out / "metadata.csv",
             "distributions": out / "distributions.png"}
    if n_samples > 0:
        paths["samples"] = out / "samples.png"
        bad = plot_samples(df, annotations, root, paths["samples"], n_samples)
        if bad:  # a sample that does not decode is a bad item too: left out like the others
            failures += bad
            keep = np.array([not any(line.startswith(str(root / f)) for line in bad) for f in df["file"]])
            left_out |= set(df.loc[~keep, "image_id"])
            df = df[keep].reset_index(drop=True)
            if df.empty:
                raise DataError(f"{root}: none of the {len(files)} .dcm files could be used; first: {failures[0]}")
    summary: dict[str, Any] = {"dicom_dir": str(root), "rle_csv": None if rle_csv is None else str(rle_csv),
                               "labelled": rle_csv is not None, **summarize(df, annotations, left_out)}
    # Through JSON and back: the summary returned equals the summary.json written (tuples -> lists).
    summary["first_image"] = json.loads(json.dumps(read_dicom_meta(root / df["file"].iloc[0]).as_dict()))
    summary["first_file"] = str(df["file"].iloc[0])  # relative to dicom_dir
    with atomic_path(paths["metadata"]) as tmp:
        df.to_csv(tmp, index=False)
    plot_distributions(df, summary, paths["distributions"])
    summary["warnings"] = _warnings(summary, failures, _annotation_warnings(annotations), rle_csv is not None)
    summary["file_warnings"] = scan.file_warnings
    summary["failures"] = failures
    summary["n_failed"] = len(failures)
    summary["files"] = {name: str(p) for name, p in paths.items()}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    return summary
