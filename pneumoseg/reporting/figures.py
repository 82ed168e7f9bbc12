"""The pictures on the pages, as PNG bytes: matplotlib figures and case thumbnails.

The report's 2 x 2 detection figure (ROC and precision-recall of the image score, per-image Dice histogram
with whole-number counts, Dice against pneumothorax size on a log axis with plain-number ticks that never
crowd) and tune's threshold sweep; the comparison's learning curves of several runs and its case
thumbnails (the image with the run's prediction red and the truth blue, purple where both). Figures are drawn
on matplotlib's Agg canvas without pyplot (no global figure state; matplotlib is imported only when a
figure is drawn) and returned as PNG bytes, ready for ``render.data_url``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pneumoseg.errors import DataError
from pneumoseg.evaluation.cases import CaseLoader
from pneumoseg.evaluation.external import eval_case_loader
from pneumoseg.io.images import read_mask, resize_image, resize_mask
from pneumoseg.io.overlay import encode_rgb_png, overlay
from pneumoseg.reporting.gather import ReportData, RunEval, image_score
from pneumoseg.reporting.render import fmt
from pneumoseg.runs import truth_areas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["THUMBNAIL", "case_loader", "curve_points", "detection_figure", "history_png", "log_ticks",
           "new_figure", "png", "sweep_png", "thumbnail"]

THUMBNAIL = 200  # px, longest side of a case thumbnail


def new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    """A matplotlib figure on its own Agg canvas (figsize in inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curve_points(score: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (``fpr``, ``tpr``) and precision-recall (``recall``, ``precision``) points of an image score.

    One point per distinct score, thresholds from high to low (an image is called positive when
    its score is >= the threshold); ROC starts at (0, 0), PR at recall 0 with precision 1.
    """
    order = np.argsort(-score, kind="stable")
    s, y = score[order], positive[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    precision = tp / np.maximum(1, tp + fp)
    return {"fpr": np.r_[0.0, fp / n_neg], "tpr": np.r_[0.0, tp / n_pos],
            "recall": np.r_[0.0, tp / n_pos], "precision": np.r_[1.0, precision]}


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Tick positions for a log axis over [``lo``, ``hi``] (> 0): the densest of the 1-2-3-5, 1-2-5, 1-3
    and 1 (decades) sequences with at most ``max_ticks`` inside, else every k-th decade. Labelled as
    plain numbers, no minor labels: the labels never crowd (matplotlib's own minor labels such as
    3x10^2 and 4x10^2 overlapped on a range under a decade and a half)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**e for e in range(first, last + 1) for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) <= max_ticks:
            return ticks
    decades = [10.0**e for e in range(first, last + 1) if lo <= 10.0**e <= hi]
    return decades[::math.ceil(len(decades) / max_ticks)]


def _tick_text(value: float, _pos: int | None = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _size_axes(ax: Any, area: np.ndarray, dice: np.ndarray, unit: str) -> None:
    """Dice against truth area (positive images) on a log x axis with uncrowded plain-number ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set(title="Dice vs pneumothorax size (positive images)", xlabel=f"truth area ({unit}, log)",
           ylabel="Dice", ylim=(-0.03, 1.03))
    keep = area > 0
    area, dice = area[keep], dice[keep]
    if not area.size:
        return
    ax.scatter(area, dice, s=12, alpha=0.7, color="#286eff")
    ax.set_xscale("log")
    lo, hi = float(area.min()) / 1.4, float(area.max()) * 1.4
    ax.set_xlim(lo, hi)
    ticks = log_ticks(lo, hi)
    if len(ticks) < 2:  # under one 1-2-3-5 step: the data's ends
        ticks = sorted({float(f"{area.min():.2g}"), float(f"{area.max():.2g}")})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.xaxis.set_minor_formatter(NullFormatter())


def detection_figure(d: ReportData) -> Figure:
    """ROC, precision-recall, per-image Dice histogram and Dice vs truth area, in one 2 x 2 figure."""
    from matplotlib.ticker import MaxNLocator

    df = d.per_image
    score, col = image_score(df)
    positive = df["truth_area_px"].to_numpy() > 0
    dice = df["dice"].to_numpy(float)
    fig = new_figure((10, 7.6), 90)
    (roc, pr), (hist, size) = fig.subplots(2, 2)
    if positive.any() and (~positive).any():
        pts = curve_points(score, positive)
        roc.plot(pts["fpr"], pts["tpr"], drawstyle="steps-post")
        pr.plot(pts["recall"], pts["precision"], drawstyle="steps-post")
        pr.axhline(positive.mean(), color="grey", ls=":", lw=1, label=f"prevalence {positive.mean():.2f}")
        pr.legend(loc="lower left", fontsize=8)
    else:
        for ax in (roc, pr):
            ax.text(0.5, 0.5, "needs positive and empty images", ha="center", va="center", transform=ax.transAxes)
    roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    roc.set(title=f"ROC (image score: {col}; AUC {fmt(d.metrics.get('image_auc'), 3)})",
            xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(title="Precision-recall (image level)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    bins = np.linspace(0, 1, 21)
    hist.hist([dice[positive], dice[~positive]], bins=bins, stacked=True, label=["pneumothorax", "empty truth"],
              color=["#286eff", "#9aa5af"])
    hist.set(title="Per-image Dice", xlabel="Dice", ylabel="images")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 images
    hist.legend(fontsize=8)
    area, unit = (d.area, d.area_unit) if d.area is not None else truth_areas(df)
    _size_axes(size, np.asarray(area, float)[positive], dice[positive], unit)
    fig.tight_layout()
    return fig


def sweep_png(tune: pd.DataFrame) -> bytes | None:
    """dice_kaggle against the threshold (best min_area at each) for tune.csv's plain-threshold rules."""
    if not {"threshold", "dice_kaggle"} <= set(tune.columns):
        return None
    plain = tune[tune["mode"] == "plain"] if "mode" in tune else tune
    plain = plain.dropna(subset=["threshold"])
    if plain.empty:
        return None
    best = plain.groupby("threshold")["dice_kaggle"].max().sort_index()
    fig = new_figure((5.5, 3.4), 90)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(best.index, best.to_numpy(), marker="o", ms=3)
    if "dice_positive" in plain:
        ax.plot(best.index, plain.groupby("threshold")["dice_positive"].max().sort_index().to_numpy(), "--",
                marker=".", ms=3, label="dice_positive")
        ax.legend(["dice_kaggle (best min_area)", "dice_positive"], fontsize=8)
    ax.set(title="Threshold sweep (tune.csv, plain rules)", xlabel="threshold", ylabel="score on the tuning split")
    fig.tight_layout()
    return png(fig)


def history_png(runs: Sequence[RunEval]) -> bytes | None:
    """The runs' learning curves (validation Dice, losses) side by side, one line per run; None without any."""
    panels = [("val_dice_kaggle", "validation dice_kaggle"), ("val_dice_positive", "validation dice_positive"),
              ("val_loss", "validation loss"), ("train_loss", "training loss")]
    panels = [p for p in panels if any(r.history is not None and p[0] in r.history for r in runs)]
    if not panels:
        return None
    fig = new_figure((4.2 * len(panels), 3.6), 100)
    for k, (col, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for r in runs:
            if r.history is not None and col in r.history:
                ax.plot(r.history["epoch"], r.history[col], "-o", ms=3, label=r.name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _mask_or_empty(path: Path, shape: tuple[int, int], area: float) -> np.ndarray | None:
    if path.is_file():
        return read_mask(path)
    return np.zeros(shape, bool) if area == 0 else None


def case_loader(run: RunEval) -> CaseLoader:
    """How the cases of ``run``'s evaluation are read back: the cache of a split, the recorded files and
    labels of an external set (``pneumoseg.evaluation.external.eval_case_loader``); PneumosegError: why not."""
    cache = run.config.data.cache if run.config is not None else None
    if run.config is None and run.metrics.get("source") != "external":
        raise DataError(f"{run.run / 'config.yaml'} not found: the run's cache (the split's images) is unknown")
    return eval_case_loader(run.eval_dir, run.metrics, cache, THUMBNAIL)


def thumbnail(run: RunEval, image_id: str, load: CaseLoader, size: int = THUMBNAIL) -> bytes:
    """PNG of the image with the run's prediction (red) and the truth (blue); PneumosegError saying why not."""
    image, truth = load(image_id)
    pred_path = run.eval_dir / "pred_masks" / f"{image_id}.png"
    pred = _mask_or_empty(pred_path, truth.shape, float(run.per_image.loc[image_id, "pred_area_px"]))
    if pred is None:
        raise DataError(f"{pred_path} not found")
    h, w = truth.shape
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    rgb = overlay(resize_image(image, shape), resize_mask(pred, shape), resize_mask(truth, shape))
    return encode_rgb_png(rgb)
