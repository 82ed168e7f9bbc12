"""Statistics of a scanned table and the summary's warning lines (what summary.json holds).

``summarize`` (DICOM) and ``summarize_png`` take a ``scan`` table (one row per usable file) and
return JSON-serialisable dicts with no file paths: counts, rates, ``_stats`` dicts (count, min,
median, mean, max; None when empty), value -> count dicts (descending; empty values under
"unknown"). Areas are px at the source resolution, or mm² when every positive has a pixel
spacing (``mask_area_unit``). ``_unlabelled`` blanks the label statistics of an unlabelled set
(unlabelled is not negative); ``_warnings`` / ``_png_warnings`` are the summary's warning lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from pneumoseg.io.rle import Annotations

__all__ = ["summarize", "summarize_png"]


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
