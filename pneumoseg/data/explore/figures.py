"""The figures explore writes: the sample grid (samples.png) and the distributions (distributions.png).

Matplotlib's object API only (``Figure`` + Agg canvas: no pyplot state), saved atomically. Inputs
are a ``scan`` table and the summary dict of ``summary``; images come in through a loader
(table row -> uint8 (H, W) pixels in display orientation, bool (H, W) mask or None) and are
drawn as tiles of at most 256 px with the mask in red. Mask areas are drawn on a log axis, in mm²
when ``summary["mask_area_unit"]`` is "mm2", else px.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image

from pneumoseg.errors import PneumosegError
from pneumoseg.io.dicom.read import read_dicom
from pneumoseg.io.images import read_image, read_mask
from pneumoseg.io.rle import Annotations
from pneumoseg.util.atomic import atomic_path
from pneumoseg.util.paths import one_line, short_id

__all__ = ["plot_distributions", "plot_samples"]

_THUMB = 256  # longest side of a sample-grid tile, pixels
_RED = np.array([255.0, 0.0, 0.0])


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
