"""Evaluate a run on a split of its cache at the source resolution: the challenge metric and what it hides.

Scoring follows ``pneumoseg.predict``'s one inference path: the cache image (the training size)
goes through the predictor, probabilities are upsampled to the source image's size (``orig_height``
x ``orig_width`` in ``index.csv``: 1024 x 1024 for the challenge) and post-processed there, and the
mask is compared with the cache's full-resolution truth (``CACHE/truth/<id>.png``). ``metrics.json``
says ``"resolution": "native"``. It holds ``dice_kaggle`` (per-image Dice, empty-vs-empty = 1: the
challenge metric), ``dice_empty_baseline`` (what predicting nothing would score: the share of
images without pneumothorax, the "0.78 trap"), ``dice_positive`` (images with a pneumothorax) and
image-level detection (``image_auc`` with the largest pixel probability as score, ``sensitivity``,
``specificity``, ``fpr_empty``).

Everything goes to ``RUN/eval/<split>/`` (one folder per split; none overwrites another):
``metrics.json``, ``per_image.csv``, ``pred_masks/<id>.png`` (0/255 at the source size),
``best.png`` / ``worst.png`` and overlay thumbnails of four kinds of case under
``cases/<category>/<image_id>.png`` with an index in ``cases.csv``: ``best`` and ``worst`` Dice,
``false_positive`` (empty truth, non-empty prediction) and ``false_negative`` (pneumothorax, empty
prediction). Nothing holds a whole split of native maps: images stream through one batch at a time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoseg.atomic import atomic_path, atomic_write_text
from pneumoseg.data.dataset import split_ids
from pneumoseg.data.prepare import read_truth
from pneumoseg.errors import DataError
from pneumoseg.images import read_image, read_mask, resize_image, write_png
from pneumoseg.metrics import dice_from_counts, detection_metrics
from pneumoseg.overlay import overlay, write_rgb_png
from pneumoseg.postprocess import PostProcess
from pneumoseg.predict import Predictor
from pneumoseg.progress import progress_bar
from pneumoseg.stats import METRIC_NAMES, PerImage, bootstrap_distributions, metric_statistic, predict_nothing_dice

__all__ = [
    "CASE_CATEGORIES",
    "SplitItem",
    "case_order",
    "eval_dir",
    "evaluate_run",
    "iter_split",
    "plot_cases",
    "save_cases",
    "summarize_per_image",
]

CASE_CATEGORIES = ("best", "worst", "false_positive", "false_negative")


@dataclass(frozen=True)
class SplitItem:
    """One evaluated image: uint8 (S, S) cache image, float32 (H, W) probabilities and bool (H, W) truth
    at the source resolution (H, W)."""

    image_id: str
    image: np.ndarray
    prob: np.ndarray
    truth: np.ndarray


def eval_dir(run_dir: str | os.PathLike[str], split: str) -> Path:
    """``RUN/eval/<split>``: where ``evaluate`` writes a split's results."""
    return Path(run_dir) / "eval" / split


def iter_split(predictor: Predictor, split: str = "test", progress: bool = True,
               image_ids: Sequence[str] | None = None) -> Iterator[SplitItem]:
    """Every image of ``split`` (of the predictor's first run's cache and fold) at the source resolution.

    Probabilities come from ``Predictor.probs_at_model_size`` and ``Predictor.native_prob``: the
    same path ``pneumoseg predict`` takes from a DICOM (the cache image is that DICOM resized to the
    training size with the same area filter).
    """
    cfg = predictor.cfg
    if not cfg.data.cache:
        raise DataError("the run's config has no data.cache: cannot find the images to evaluate")
    cache = Path(cfg.data.cache)
    ids = list(image_ids) if image_ids is not None else split_ids(cache, split, cfg.data.fold)
    if not ids:
        raise DataError(f"split {split!r} of {cache} is empty")
    with progress_bar(progress) as bar:
        task = bar.add_task(f"predict {split}", total=len(ids))
        for start in range(0, len(ids), predictor.batch_size):
            chunk = ids[start:start + predictor.batch_size]
            images = [read_image(cache / "images" / f"{i}.png") for i in chunk]
            images = [im if im.shape == (predictor.size, predictor.size) else resize_image(im, predictor.size)
                      for im in images]
            probs = predictor.probs_at_model_size(images)
            for image_id, image, prob in zip(chunk, images, probs, strict=True):
                truth = read_truth(cache, image_id)
                yield SplitItem(image_id, image, predictor.native_prob(prob, truth.shape), truth)
            bar.advance(task, len(chunk))


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
            ax.set_title(f"{cases[k].image_id[-14:]}\nDice {cases[k].dice:.3f}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def case_order(per_image: pd.DataFrame, n_cases: int) -> dict[str, np.ndarray]:
    """Row positions of ``per_image`` (evaluate's columns) shown for each category, at most ``n_cases``.

    best: highest Dice among images with truth or prediction (Dice > 0); worst: lowest Dice
    (< 1), larger truth first, never one already shown as best; false_positive: empty truth,
    non-empty prediction, most confident first; false_negative: pneumothorax, empty prediction,
    largest truth first.
    """
    dice = per_image["dice"].to_numpy()
    truth = per_image["truth_area_px"].to_numpy()
    pred = per_image["pred_area_px"].to_numpy()
    prob = per_image["probability"].to_numpy()
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


def _load_case(cache: Path, out: Path, row: pd.Series, size: int) -> _Case:
    image_id = str(row["image_id"])
    image = read_image(cache / "images" / f"{image_id}.png")
    if image.shape != (size, size):
        image = resize_image(image, size)
    return _Case(image_id, image, read_mask(out / "pred_masks" / f"{image_id}.png"), read_truth(cache, image_id),
                 float(row["dice"]))


def save_cases(cache: Path, per_image: pd.DataFrame, out_dir: str | os.PathLike[str], n_cases: int = 8,
               size: int = 256, model_size: int = 256) -> pd.DataFrame:
    """Overlay thumbnails ``OUT/cases/<category>/<image_id>.png`` (longest side ``size``) + ``OUT/cases.csv``.

    ``per_image`` is evaluate's table; predicted masks are read back from ``OUT/pred_masks``. Returns
    the cases table: category, image_id, dice, truth_area_px, pred_area_px, probability, file
    (relative to OUT). Thumbnails left over from an earlier evaluation are removed.
    """
    out = Path(out_dir)
    rows = []
    for category, order in case_order(per_image, n_cases).items():
        folder = out / "cases" / category
        keep = set()
        for i in order:
            row = per_image.iloc[i]
            case = _load_case(cache, out, row, model_size)
            rel = f"cases/{category}/{case.image_id}.png"
            write_rgb_png(out / rel, _view(case, size))
            keep.add(f"{case.image_id}.png")
            rows.append({"category": category, "image_id": case.image_id, "dice": row["dice"],
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


def summarize_per_image(per_image: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, object]:
    """The headline metrics from evaluate's per-image table (see the module docstring), and ``ci95``:
    each metric's 95 % percentile bootstrap interval over images (resampled within positives and
    within negatives; ``pneumoseg.stats``)."""
    dice = per_image["dice"].to_numpy(float)
    has_truth = per_image["has_truth"].to_numpy().astype(bool)
    pred_positive = per_image["pred_area_px"].to_numpy() > 0
    score = per_image["probability"].to_numpy(float)
    det = detection_metrics(score, has_truth, pred_positive)
    n = len(dice)
    per = PerImage.from_arrays(dice, has_truth, pred_positive, score)
    dists = bootstrap_distributions({m: metric_statistic(m, per) for m in METRIC_NAMES}, n, has_truth, n_boot, seed)
    ci = {m: d.ci() for m, d in dists.items()}
    return {
        "dice_kaggle": float(dice.mean()) if n else math.nan,
        "dice_empty_baseline": predict_nothing_dice(has_truth),
        "dice_positive": float(dice[has_truth].mean()) if has_truth.any() else math.nan,
        **det,
        "n_images": n,
        "n_positive": int(has_truth.sum()),
        "ci95": {m: [c.low, c.high] for m, c in ci.items()},
    }


def evaluate_run(predictor: Predictor, run_dir: str | os.PathLike[str], split: str = "test",
                 postprocess: PostProcess | None = None, n_cases: int = 8, progress: bool = True,
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Score ``split`` at the source resolution; write ``RUN/eval/<split>/`` (see module docstring).

    ``postprocess``: the rule to apply (default: the predictor's, i.e. the one tuned for its runs
    and flags, else the config default). Returns the metrics written to ``metrics.json``.
    """
    pp = postprocess or predictor.postprocess
    out = Path(out_dir) if out_dir else eval_dir(run_dir, split)
    records = []
    started = time.perf_counter()
    for item in iter_split(predictor, split, progress):
        mask = pp(item.prob)
        inter, pred_area, true_area = (int(np.count_nonzero(mask & item.truth)), int(mask.sum()),
                                       int(item.truth.sum()))
        write_png(out / "pred_masks" / f"{item.image_id}.png", mask.astype(np.uint8) * 255)
        records.append({
            "image_id": item.image_id, "has_truth": int(true_area > 0), "truth_area_px": true_area,
            "pred_area_px": pred_area, "probability": round(float(item.prob.max()), 5),
            "dice": round(float(dice_from_counts(np.array([inter]), np.array([pred_area]),
                                                  np.array([true_area]))[0]), 5),
            "height": item.truth.shape[0], "width": item.truth.shape[1],
        })
    seconds = time.perf_counter() - started
    per_image = pd.DataFrame(records)
    with atomic_path(out / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    cache = Path(predictor.cfg.data.cache or "")
    order = case_order(per_image, n_cases)
    for category in ("best", "worst"):
        cases = [_load_case(cache, out, per_image.iloc[i], predictor.size) for i in order[category]]
        plot_cases(cases, f"{split}: {category} cases (prediction red, truth blue)", out / f"{category}.png")
    save_cases(cache, per_image, out, n_cases, model_size=predictor.size)
    metrics: dict[str, object] = dict(summarize_per_image(per_image))
    heights, widths = sorted(set(per_image["height"])), sorted(set(per_image["width"]))
    metrics.update(split=split, resolution="native",
                   source_size=f"{heights[0]}x{widths[0]}" if len(heights) == len(widths) == 1 else "mixed",
                   model_size=predictor.size, tta=bool(predictor.tta), model=predictor.model_name,
                   n_params=predictor.n_params, predict_seconds=round(seconds, 3),
                   latency_ms_per_image=round(1000 * seconds / max(1, len(per_image)), 2),
                   postprocess=pp.to_dict(), postprocess_text=pp.describe(),
                   postprocess_source="given" if postprocess else predictor.postprocess_source)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    return metrics
