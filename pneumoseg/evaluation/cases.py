"""Case figures of an evaluation: the best and worst images, false positives and false negatives.

``case_order`` picks the cases from ``per_image.csv``'s table; ``save_cases`` writes ``best.png`` /
``worst.png`` (grids) and ``cases/<category>/<image_id>.png`` thumbnails with an index in
``cases.csv``. A ``CaseLoader`` gives each case's image (uint8 (S, S), the model size) and truth (bool
(H, W), the source size): ``cache_loader`` from a prepared cache, ``pneumoseg.evaluation.external``'s
loaders from an external set or an existing evaluation folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoseg.util.atomic import atomic_path
from pneumoseg.data.cache import read_truth
from pneumoseg.io.images import read_image, read_mask, resize_image
from pneumoseg.io.overlay import overlay, write_rgb_png
from pneumoseg.util.paths import short_id


__all__ = [
    "CASE_CATEGORIES",
    "CaseLoader",
    "cache_loader",
    "case_order",
    "plot_cases",
    "save_cases",
    "write_case_figures",
]


CASE_CATEGORIES = ("best", "worst", "false_positive", "false_negative")

CaseLoader = Callable[[str], tuple[np.ndarray, np.ndarray]]
"""``image_id -> (uint8 (S, S) image at the model size, bool (H, W) truth at the source size)``."""



@dataclass(frozen=True)
class _Case:
    image_id: str
    image: np.ndarray  # uint8 (S, S)
    pred: np.ndarray   # bool (H, W)
    truth: np.ndarray  # bool (H, W)
    dice: float


def _view(case: _Case, size: int) -> np.ndarray:
    """RGB uint8 overlay (prediction red, truth blue) with longest side ``size``; masks shrunk with
    the any-pixel rule so thin regions stay visible."""
    h, w = case.truth.shape
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(case.image, shape, interpolation=cv2.INTER_AREA if case.image.shape[0] > shape[1]
                       else cv2.INTER_LINEAR)
    pred, truth = (cv2.resize(m.astype(np.float32), shape, interpolation=cv2.INTER_AREA) > 0
                   for m in (case.pred, case.truth))
    return overlay(image, pred, truth)


def plot_cases(cases: Sequence[_Case], title: str, path: str | os.PathLike[str], ncols: int = 4) -> None:
    """Grid of overlays (prediction red, truth blue) with each image's Dice in its title."""
    nrows = max(1, math.ceil(len(cases) / ncols))
    fig = Figure(figsize=(3 * ncols, 3.2 * nrows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.axis("off")
        if k < len(cases):
            ax.imshow(_view(cases[k], 512))
            ax.set_title(f"{short_id(cases[k].image_id)}\nDice {cases[k].dice:.3f}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def case_order(per_image: pd.DataFrame, n_cases: int) -> dict[str, np.ndarray]:
    """Row positions of ``per_image`` (evaluate's columns) shown for each category, at most ``n_cases``.

    best: highest Dice among images with truth or prediction (Dice > 0); worst: lowest Dice
    (< 1), larger truth first, never one already shown as best; false_positive: empty truth,
    non-empty prediction, highest score first; false_negative: pneumothorax, empty prediction,
    largest truth first.
    """
    dice = per_image["dice"].to_numpy()
    truth = per_image["truth_area_px"].to_numpy()
    pred = per_image["pred_area_px"].to_numpy()
    prob = per_image["score" if "score" in per_image else "probability"].to_numpy()
    visible = np.flatnonzero(((truth > 0) | (pred > 0)) & (dice > 0))
    best = visible[np.argsort(-dice[visible], kind="stable")][:n_cases]
    worst = np.lexsort((-truth, dice))
    worst = worst[(dice[worst] < 1) & ~np.isin(worst, best)]
    fp = np.flatnonzero((truth == 0) & (pred > 0))
    fn = np.flatnonzero((truth > 0) & (pred == 0))
    return {
        "best": best,
        "worst": worst[:n_cases],
        "false_positive": fp[np.argsort(-prob[fp], kind="stable")][:n_cases],
        "false_negative": fn[np.argsort(-truth[fn], kind="stable")][:n_cases],
    }


def _case(load_case: Callable[[str], tuple[np.ndarray, np.ndarray]], out: Path, row: pd.Series) -> _Case:
    image_id = str(row["image_id"])
    image, truth = load_case(image_id)
    return _Case(image_id, image, read_mask(out / "pred_masks" / f"{image_id}.png"), truth, float(row["dice"]))


def save_cases(load_case: Callable[[str], tuple[np.ndarray, np.ndarray]], per_image: pd.DataFrame,
               out_dir: str | os.PathLike[str], n_cases: int = 8, size: int = 256) -> pd.DataFrame:
    """Overlay thumbnails ``OUT/cases/<category>/<image_id>.png`` (longest side ``size``) + ``OUT/cases.csv``.

    ``per_image`` is evaluate's table; predicted masks are read back from ``OUT/pred_masks``, images and
    truth through ``load_case`` (``CaseLoader``). Returns the cases table: category, image_id, dice,
    truth_area_px, pred_area_px, probability, score, file
    (relative to OUT). Thumbnails left over from an earlier evaluation are removed.
    """
    out = Path(out_dir)
    rows = []
    for category, order in case_order(per_image, n_cases).items():
        folder = out / "cases" / category
        keep = set()
        for i in order:
            row = per_image.iloc[i]
            case = _case(load_case, out, row)
            rel = f"cases/{category}/{case.image_id}.png"
            write_rgb_png(out / rel, _view(case, size))
            keep.add(f"{case.image_id}.png")
            rows.append({"category": category, "image_id": case.image_id, "dice": row["dice"],
                         "truth_area_px": int(row["truth_area_px"]), "pred_area_px": int(row["pred_area_px"]),
                         "probability": row["probability"], "score": row.get("score", math.nan), "file": rel})
        if folder.is_dir():
            for old in folder.glob("*.png"):
                if old.name not in keep:
                    old.unlink()
    columns = ["category", "image_id", "dice", "truth_area_px", "pred_area_px", "probability", "score", "file"]
    cases = pd.DataFrame(rows, columns=columns)
    with atomic_path(out / "cases.csv") as tmp:
        cases.to_csv(tmp, index=False)
    return cases


def cache_loader(cache: Path, size: int) -> CaseLoader:
    """The ``CaseLoader`` of a prepared cache: ``images/<id>.png`` at ``size`` and the full-resolution truth."""
    def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(cache / "images" / f"{image_id}.png")
        return (image if image.shape == (size, size) else resize_image(image, size)), read_truth(cache, image_id)

    return load


def write_case_figures(load_case: CaseLoader, per_image: pd.DataFrame, out: Path, name: str, n_cases: int) -> None:
    """``out/best.png`` and ``out/worst.png`` (grids of ``n_cases``) and the thumbnails of ``save_cases``."""
    order = case_order(per_image, n_cases)
    for category in ("best", "worst"):
        cases = [_case(load_case, out, per_image.iloc[i]) for i in order[category]]
        plot_cases(cases, f"{name}: {category} cases (prediction red, truth blue)", out / f"{category}.png")
    save_cases(load_case, per_image, out, n_cases)
