"""``explore`` and ``explore_png``: check the folders, scan, summarise, draw and write OUT/ atomically.

The outputs (summary.json, metadata.csv, samples.png, distributions.png) and the failure rules are
described in the package docstring (``pneumoseg.data.explore``). summary.json is written last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pneumoseg.data.explore.figures import (
    _dicom_loader,
    _Loader,
    _plot_grid,
    _plot_png_distributions,
    _png_loader,
    plot_distributions,
)
from pneumoseg.data.explore.scan import scan_dataset, scan_png
from pneumoseg.data.explore.summary import _png_warnings, _unlabelled, _warnings, summarize, summarize_png
from pneumoseg.errors import DataError
from pneumoseg.io.dicom.read import read_dicom_meta
from pneumoseg.io.images import IMAGE_SUFFIXES
from pneumoseg.io.layouts import find_dicoms, find_png_pairs
from pneumoseg.io.rle import Annotations, read_annotations
from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.util.csvsafe import safe_frame
from pneumoseg.util.paths import check_output_dir, one_line

__all__ = ["explore", "explore_png"]


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


def explore_png(png_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], n_samples: int = 16,
                progress: bool = True) -> dict[str, Any]:
    """Explore the PNG layout (see the package docstring): the four outputs, and the summary returned.

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
