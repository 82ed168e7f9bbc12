"""Evaluate a run on a split of its cache at the source resolution: the challenge metric and what it hides.

Scoring follows ``pneumoseg.inference.predictor``'s one inference path: the cache image (the training size)
goes through the predictor, probabilities are upsampled to the source image's size (``orig_height``
x ``orig_width`` in ``index.csv``: 1024 x 1024 for the challenge) and post-processed there, and the
mask is compared with the cache's full-resolution truth (``CACHE/truth/<id>.png``). ``metrics.json``
says ``"resolution": "native"``. It holds ``dice_kaggle`` (per-image Dice, empty-vs-empty = 1: the
challenge metric), ``dice_empty_baseline`` (what predicting nothing would score: the share of
images without pneumothorax, the "0.78 trap"), ``dice_positive`` (images with a pneumothorax) and
image-level detection (``image_auc`` with the image score: the mean of the top 0.1 % pixel
probabilities, column ``score`` of ``per_image.csv``; ``probability``, the largest pixel
probability, is kept but saturates near 1; ``sensitivity``, ``specificity``, ``fpr_empty``).

External validation (``pneumoseg.evaluation.external.evaluate_external``): any labelled DICOM / PNG
folder with an RLE CSV or a folder of masks, predicted at its native resolution through
``Predictor.predict_batch``, scored the same way (``evaluate_items``) into ``RUN/eval/<data name>/``.

Everything goes to ``RUN/eval/<split>/`` (one folder per split; none overwrites another):
``metrics.json``, ``per_image.csv``, ``pred_masks/<id>.png`` (0/255 at the source size),
``images.csv`` (``pneumoseg.runs.EVAL_IMAGES_FILE``: each image's source file and pixel spacing in mm,
so compare can read an external set's cases back and give sizes in mm²),
``best.png`` / ``worst.png`` and overlay thumbnails (``pneumoseg.evaluation.cases``) of four kinds of case under
``cases/<category>/<image_id>.png`` with an index in ``cases.csv``: ``best`` and ``worst`` Dice,
``false_positive`` (empty truth, non-empty prediction) and ``false_negative`` (pneumothorax, empty
prediction). Nothing holds a whole split of native maps: images stream through one batch at a time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.data.dataset import split_ids
from pneumoseg.data.cache import read_truth
from pneumoseg.errors import DataError
from pneumoseg.io.images import read_image, resize_image, write_png
from pneumoseg.scoring.metrics import dice_from_counts, detection_metrics
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.evaluation.cases import CaseLoader, cache_loader, write_case_figures
from pneumoseg.inference.outputs import image_score
from pneumoseg.inference.predictor import Predictor
from pneumoseg.util.progress import progress_bar
from pneumoseg.data.split import read_index, small_set_warning
from pneumoseg.runs import EVAL_IMAGES_FILE, eval_dir
from pneumoseg.scoring.stats import (
    METRIC_NAMES,
    PerImage,
    bootstrap_distributions,
    metric_note,
    metric_statistic,
    predict_nothing_dice,
)


__all__ = [
    "SCORE_TEXT",
    "SplitItem",
    "evaluate_items",
    "evaluate_run",
    "iter_split",
    "summarize_per_image",
]


SCORE_TEXT = "mean of the top 0.1 % pixel probabilities (pneumoseg.inference.outputs.image_score)"


@dataclass(frozen=True)
class SplitItem:
    """One evaluated image: uint8 (S, S) cache image, float32 (H, W) probabilities and bool (H, W) truth
    at the source resolution (H, W)."""

    image_id: str
    image: np.ndarray
    prob: np.ndarray
    truth: np.ndarray
    source: str = ""                       #: the file the image was read from (the cache's source for a split)
    pixel_spacing_mm: float | None = None  #: mm per source pixel (areas in mm²); None when unknown


def _cache_sources(cache: Path) -> dict[str, tuple[str, float | None]]:
    """image_id -> (source file, pixel spacing in mm or None) from ``CACHE/index.csv`` (empty when absent)."""
    if not (cache / "index.csv").is_file():
        return {}
    index = read_index(cache)
    sources = index["source"].astype(str) if "source" in index else pd.Series("", index=index.index)
    spacing = (pd.to_numeric(index["pixel_spacing_mm"], errors="coerce") if "pixel_spacing_mm" in index
               else pd.Series(math.nan, index=index.index))
    return {i: (s, None if math.isnan(v) else float(v))
            for i, s, v in zip(index["image_id"], sources, spacing, strict=True)}


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
    sources = _cache_sources(cache)
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
                source, spacing = sources.get(image_id, ("", None))
                yield SplitItem(image_id, image, predictor.native_prob(prob, truth.shape), truth, source, spacing)
            bar.advance(task, len(chunk))


def summarize_per_image(per_image: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, object]:
    """The headline metrics from evaluate's per-image table (see the module docstring), and ``ci95``:
    each metric's 95 % percentile bootstrap interval over images (resampled within positives and
    within negatives; ``pneumoseg.scoring.stats``). ``image_auc`` ranks images by ``score`` (``probability``
    for tables written before it existed).

    Small samples: a metric with too few images behind it (``stats.metric_note``: fewer than 20
    images, or fewer than 5 positives / empty images) gets ``[NaN, NaN]`` in ``ci95`` and its reason
    in ``ci95_notes`` ("n too small: 12 images"); a set of fewer than 20 images or without a positive
    adds one line to ``warnings`` (``split.small_set_warning``)."""
    dice = per_image["dice"].to_numpy(float)
    has_truth = per_image["has_truth"].to_numpy().astype(bool)
    pred_positive = per_image["pred_area_px"].to_numpy() > 0
    score = per_image["score" if "score" in per_image else "probability"].to_numpy(float)
    det = detection_metrics(score, has_truth, pred_positive)
    n = len(dice)
    per = PerImage.from_arrays(dice, has_truth, pred_positive, score)
    dists = bootstrap_distributions({m: metric_statistic(m, per) for m in METRIC_NAMES}, n, has_truth, n_boot, seed)
    ci = {m: d.ci(note=metric_note(m, per)) for m, d in dists.items()}
    warning = small_set_warning("evaluated on", [("", n, int(has_truth.sum()))])
    return {
        "dice_kaggle": float(dice.mean()) if n else math.nan,
        "dice_empty_baseline": predict_nothing_dice(has_truth),
        "dice_positive": float(dice[has_truth].mean()) if has_truth.any() else math.nan,
        **det,
        "n_images": n,
        "n_positive": int(has_truth.sum()),
        "ci95": {m: [c.low, c.high] for m, c in ci.items()},
        "ci95_notes": {m: c.note for m, c in ci.items() if c.note},
        "warnings": [warning] if warning else [],
    }


def _record(item: SplitItem, mask: np.ndarray) -> dict[str, object]:
    """One ``per_image.csv`` row: areas at the source resolution, Dice, the max probability and the score."""
    inter, pred_area, true_area = int(np.count_nonzero(mask & item.truth)), int(mask.sum()), int(item.truth.sum())
    return {
        "image_id": item.image_id, "has_truth": int(true_area > 0), "truth_area_px": true_area,
        "pred_area_px": pred_area, "probability": round(float(item.prob.max()), 5),
        "score": round(image_score(item.prob), 5),
        "dice": round(float(dice_from_counts(np.array([inter]), np.array([pred_area]), np.array([true_area]))[0]), 5),
        "height": item.truth.shape[0], "width": item.truth.shape[1],
    }


def evaluate_items(predictor: Predictor, items: Iterable[SplitItem], out_dir: str | os.PathLike[str], name: str,
                   load_case: CaseLoader, postprocess: PostProcess | None = None, n_cases: int = 8,
                   extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Score streamed ``items`` with ``postprocess`` (default: the predictor's rule); write ``out_dir``.

    The one scoring loop of splits, out-of-fold pools and external sets: ``metrics.json`` (``split``
    = ``name``, plus ``extra``), ``per_image.csv``, ``images.csv`` (image_id, source, pixel_spacing_mm
    of each item), ``pred_masks/``, ``best.png`` / ``worst.png``,
    ``cases.csv`` + ``cases/``. ``load_case`` reads a case back for the thumbnails. Returns the metrics.
    """
    pp = postprocess or predictor.postprocess
    out = Path(out_dir)
    records, sources = [], []
    started = time.perf_counter()
    for item in items:
        mask = pp(item.prob)
        write_png(out / "pred_masks" / f"{item.image_id}.png", mask.astype(np.uint8) * 255)
        records.append(_record(item, mask))
        sources.append({"image_id": item.image_id, "source": item.source, "pixel_spacing_mm": item.pixel_spacing_mm})
    seconds = time.perf_counter() - started
    if not records:
        raise DataError(f"{name}: no image could be evaluated")
    per_image = pd.DataFrame(records)
    with atomic_path(out / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    with atomic_path(out / EVAL_IMAGES_FILE) as tmp:
        pd.DataFrame(sources, columns=["image_id", "source", "pixel_spacing_mm"]).to_csv(tmp, index=False)
    write_case_figures(load_case, per_image, out, name, n_cases)
    metrics: dict[str, object] = dict(summarize_per_image(per_image))
    heights, widths = sorted(set(per_image["height"])), sorted(set(per_image["width"]))
    metrics.update(split=name, resolution="native",
                   source_size=f"{heights[0]}x{widths[0]}" if len(heights) == len(widths) == 1 else "mixed",
                   model_size=predictor.size, tta=bool(predictor.tta), model=predictor.model_name,
                   n_params=predictor.n_params, predict_seconds=round(seconds, 3),
                   latency_ms_per_image=round(1000 * seconds / max(1, len(per_image)), 2),
                   image_score=SCORE_TEXT, postprocess=pp.to_dict(), postprocess_text=pp.describe(),
                   postprocess_source="given" if postprocess else predictor.postprocess_source, **(extra or {}))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    return metrics


def evaluate_run(predictor: Predictor, run_dir: str | os.PathLike[str], split: str = "test",
                 postprocess: PostProcess | None = None, n_cases: int = 8, progress: bool = True,
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Score ``split`` of the run's cache at the source resolution; write ``RUN/eval/<split>/``.

    ``postprocess``: the rule to apply (default: the predictor's, i.e. the one tuned for its runs
    and flags, else the config default). Returns the metrics written to ``metrics.json``.
    """
    cache = Path(predictor.cfg.data.cache or "")
    return evaluate_items(predictor, iter_split(predictor, split, progress), out_dir or eval_dir(run_dir, split),
                          split, cache_loader(cache, predictor.size), postprocess, n_cases)
