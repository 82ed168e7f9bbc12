"""Evaluate a run on a split of its cache: the challenge metric and what it hides.

Scores are computed at the run's training size (``data.size``) against the cache's masks
resized to that size, i.e. on exactly what the model sees. ``metrics.json`` holds
``dice_kaggle`` (per-image Dice, empty-vs-empty = 1: the challenge metric), ``dice_positive``
(the same over images with a pneumothorax), and image-level detection (``image_auc`` with the
largest pixel probability as score, ``sensitivity``, ``specificity``, ``fpr_empty``).

For people (and ``pneumoseg report``) it also saves overlay thumbnails (prediction red, truth
blue) of four kinds of case under ``eval/cases/<category>/<image_id>.png`` with an index in
``eval/cases.csv``: ``best`` and ``worst`` Dice, ``false_positive`` (empty truth, non-empty
prediction) and ``false_negative`` (pneumothorax, empty prediction).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoseg.atomic import atomic_path, atomic_write_text
from pneumoseg.data.dataset import SegmentationDataset, split_ids
from pneumoseg.errors import DataError
from pneumoseg.metrics import dice_per_image, summarize
from pneumoseg.overlay import overlay, write_rgb_png
from pneumoseg.postprocess import PostProcess
from pneumoseg.predict import Predictor
from pneumoseg.progress import progress_bar

__all__ = [
    "CASE_CATEGORIES",
    "SplitPredictions",
    "case_order",
    "evaluate_run",
    "plot_cases",
    "predict_split",
    "save_cases",
]

CASE_CATEGORIES = ("best", "worst", "false_positive", "false_negative")


@dataclass
class SplitPredictions:
    """A split predicted at the model size: ids, uint8 images, float16 probs, bool truths (N, S, S)."""

    image_ids: list[str]
    images: np.ndarray
    probs: np.ndarray
    truths: np.ndarray


def predict_split(predictor: Predictor, split: str = "test", progress: bool = True) -> SplitPredictions:
    """Probabilities for every image of ``split`` of the predictor's (first) run's cache.

    Probabilities are kept as float16 to halve memory (N x S x S x 2 bytes).
    """
    cfg = predictor.cfg
    if not cfg.data.cache:
        raise DataError("the run's config has no data.cache: cannot find the images to evaluate")
    ids = split_ids(cfg.data.cache, split, cfg.data.fold)
    if not ids:
        raise DataError(f"split {split!r} of {cfg.data.cache} is empty")
    dataset = SegmentationDataset(cfg.data.cache, ids, size=predictor.size)
    s = predictor.size
    images = np.zeros((len(ids), s, s), np.uint8)
    truths = np.zeros((len(ids), s, s), bool)
    probs = np.zeros((len(ids), s, s), np.float16)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"predict {split}", total=len(ids))
        for start in range(0, len(ids), predictor.batch_size):
            stop = min(start + predictor.batch_size, len(ids))
            for i in range(start, stop):
                images[i], truths[i] = dataset.load(i)
            probs[start:stop] = predictor.probs_at_model_size(list(images[start:stop]))
            bar.advance(task, stop - start)
    return SplitPredictions(ids, images, probs, truths)


def plot_cases(preds: SplitPredictions, masks: np.ndarray, dice: np.ndarray, order: Sequence[int] | np.ndarray,
               title: str, path: str | os.PathLike[str], ncols: int = 4) -> None:
    """Grid of overlays (prediction red, truth blue) with each image's Dice in its title."""
    order = list(order)
    nrows = max(1, math.ceil(len(order) / ncols))
    fig = Figure(figsize=(3 * ncols, 3.2 * nrows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.axis("off")
        if k < len(order):
            i = order[k]
            ax.imshow(overlay(preds.images[i], masks[i], preds.truths[i]))
            ax.set_title(f"{preds.image_ids[i][-14:]}\nDice {dice[i]:.3f}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _thumbnail(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) overlay; the image is resized first so outlines stay thin."""
    h, w = image.shape
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return overlay(cv2.resize(image, shape, interpolation=interp), pred, truth)


def case_order(per_image: pd.DataFrame, n_cases: int) -> dict[str, np.ndarray]:
    """Row positions of ``per_image`` (evaluate's columns) shown for each category, at most ``n_cases``.

    best: highest Dice among images with truth or prediction (Dice > 0); worst: lowest Dice
    (< 1), larger truth first; false_positive: empty truth, non-empty prediction, most confident
    first; false_negative: pneumothorax, empty prediction, largest truth first.
    """
    dice = per_image["dice"].to_numpy()
    truth = per_image["truth_area_px"].to_numpy()
    pred = per_image["pred_area_px"].to_numpy()
    prob = per_image["probability"].to_numpy()
    visible = np.flatnonzero(((truth > 0) | (pred > 0)) & (dice > 0))
    worst = np.lexsort((-truth, dice))
    fp = np.flatnonzero((truth == 0) & (pred > 0))
    fn = np.flatnonzero((truth > 0) & (pred == 0))
    return {
        "best": visible[np.argsort(-dice[visible], kind="stable")][:n_cases],
        "worst": worst[dice[worst] < 1][:n_cases],
        "false_positive": fp[np.argsort(-prob[fp], kind="stable")][:n_cases],
        "false_negative": fn[np.argsort(-truth[fn], kind="stable")][:n_cases],
    }


def save_cases(preds: SplitPredictions, masks: np.ndarray, per_image: pd.DataFrame,
               out_dir: str | os.PathLike[str], n_cases: int = 8, size: int = 256) -> pd.DataFrame:
    """Overlay thumbnails ``OUT/cases/<category>/<image_id>.png`` (longest side ``size``) + ``OUT/cases.csv``.

    ``per_image`` is evaluate's table (row i = ``preds.image_ids[i]``). Returns the cases table:
    category, image_id, dice, truth_area_px, pred_area_px, probability, file (relative to OUT).
    Thumbnails left over from an earlier evaluation are removed.
    """
    out = Path(out_dir)
    rows = []
    for category, order in case_order(per_image, n_cases).items():
        folder = out / "cases" / category
        keep = set()
        for i in order:
            image_id = preds.image_ids[i]
            rel = f"cases/{category}/{image_id}.png"
            write_rgb_png(out / rel, _thumbnail(preds.images[i], masks[i], preds.truths[i], size))
            keep.add(f"{image_id}.png")
            row = per_image.iloc[i]
            rows.append({"category": category, "image_id": image_id, "dice": row["dice"],
                         "truth_area_px": int(row["truth_area_px"]), "pred_area_px": int(row["pred_area_px"]),
                         "probability": row["probability"], "file": rel})
        if folder.is_dir():
            for old in folder.glob("*.png"):
                if old.name not in keep:
                    old.unlink()
    columns = ["category", "image_id", "dice", "truth_area_px", "pred_area_px", "probability", "file"]
    cases = pd.DataFrame(rows, columns=columns)
    with atomic_path(out / "cases.csv") as tmp:
        cases.to_csv(tmp, index=False)
    return cases


def evaluate_run(predictor: Predictor, run_dir: str | os.PathLike[str], split: str = "test",
                 postprocess: PostProcess | None = None, n_cases: int = 8, progress: bool = True,
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, float | int | str]:
    """Write ``RUN/eval/{metrics.json, per_image.csv, best.png, worst.png, cases.csv, cases/}``; return the metrics.

    ``n_cases``: images per grid and per thumbnail category (see :func:`save_cases`).
    """
    preds = predict_split(predictor, split, progress)
    pp = postprocess or predictor.postprocess
    masks = pp.apply_batch(preds.probs.astype(np.float32))
    metrics: dict[str, float | int | str] = dict(summarize(masks, preds.truths, preds.probs.reshape(len(masks), -1).max(1)))
    dice = dice_per_image(masks, preds.truths)
    out = Path(out_dir) if out_dir else Path(run_dir) / "eval"
    per_image = pd.DataFrame({
        "image_id": preds.image_ids,
        "has_truth": preds.truths.reshape(len(masks), -1).any(1).astype(int),
        "truth_area_px": preds.truths.reshape(len(masks), -1).sum(1),
        "pred_area_px": masks.reshape(len(masks), -1).sum(1),
        "probability": preds.probs.reshape(len(masks), -1).max(1).astype(np.float32).round(5),
        "dice": dice.round(5),
    })
    with atomic_path(out / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    # Best among images with something to see; worst among all (ties: larger truth first).
    visible = np.flatnonzero(per_image["has_truth"].to_numpy() | (per_image["pred_area_px"].to_numpy() > 0))
    best = visible[np.argsort(-dice[visible], kind="stable")][:n_cases]
    worst = np.lexsort((-per_image["truth_area_px"].to_numpy(), dice))[:n_cases]
    plot_cases(preds, masks, dice, best, f"{split}: best cases (prediction red, truth blue)", out / "best.png")
    plot_cases(preds, masks, dice, worst, f"{split}: worst cases (prediction red, truth blue)", out / "worst.png")
    save_cases(preds, masks, per_image, out, n_cases)
    metrics.update(split=split, size=predictor.size, tta=int(predictor.tta), model=predictor.model_name,
                   postprocess=json.dumps(pp.to_dict()))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    return metrics
