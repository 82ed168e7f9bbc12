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

External validation (``evaluate_external``): any labelled DICOM / PNG folder with an RLE CSV or a
folder of masks, predicted at its native resolution through ``Predictor.predict_batch``, scored
the same way into ``RUN/eval/<data name>/``.

Everything goes to ``RUN/eval/<split>/`` (one folder per split; none overwrites another):
``metrics.json``, ``per_image.csv``, ``pred_masks/<id>.png`` (0/255 at the source size),
``images.csv`` (``pneumoseg.runs.EVAL_IMAGES_FILE``: each image's source file and pixel spacing in mm,
so compare can read an external set's cases back and give sizes in mm²),
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.data.dataset import SPLITS, split_ids
from pneumoseg.data.cache import read_truth
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.io.images import read_image, read_mask, resize_image, write_png
from pneumoseg.io.layouts import match_label, read_layout_mask
from pneumoseg.scoring.metrics import dice_from_counts, detection_metrics
from pneumoseg.io.overlay import overlay, write_rgb_png
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.io.rle import Annotations, read_annotations
from pneumoseg.util.paths import safe_name, short_id
from pneumoseg.inference.inputs import InputImage, find_inputs, load_input
from pneumoseg.inference.outputs import image_score
from pneumoseg.inference.predictor import Predictor
from pneumoseg.util.progress import progress_bar
from pneumoseg.data.split import read_index, small_set_warning
from pneumoseg.runs import EVAL_IMAGES_FILE, eval_dir, read_eval_images
from pneumoseg.scoring.stats import (
    METRIC_NAMES,
    PerImage,
    bootstrap_distributions,
    metric_note,
    metric_statistic,
    predict_nothing_dice,
)

__all__ = [
    "CASE_CATEGORIES",
    "SCORE_TEXT",
    "CaseLoader",
    "ExternalResult",
    "LabelledSet",
    "SplitItem",
    "cache_loader",
    "case_order",
    "eval_case_loader",
    "evaluate_external",
    "evaluate_items",
    "evaluate_run",
    "external_name",
    "iter_labelled",
    "iter_split",
    "labelled_loader",
    "plot_cases",
    "read_labelled_set",
    "save_cases",
    "summarize_per_image",
]

CASE_CATEGORIES = ("best", "worst", "false_positive", "false_negative")
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


CaseLoader = Callable[[str], tuple[np.ndarray, np.ndarray]]
"""``image_id -> (uint8 (S, S) image at the model size, bool (H, W) truth at the source size)``."""


def cache_loader(cache: Path, size: int) -> CaseLoader:
    """The ``CaseLoader`` of a prepared cache: ``images/<id>.png`` at ``size`` and the full-resolution truth."""
    def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(cache / "images" / f"{image_id}.png")
        return (image if image.shape == (size, size) else resize_image(image, size)), read_truth(cache, image_id)

    return load


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
    order = case_order(per_image, n_cases)
    for category in ("best", "worst"):
        cases = [_case(load_case, out, per_image.iloc[i]) for i in order[category]]
        plot_cases(cases, f"{name}: {category} cases (prediction red, truth blue)", out / f"{category}.png")
    save_cases(load_case, per_image, out, n_cases)
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


# ---------------------------------------------------------------- external labelled sets


@dataclass
class LabelledSet:
    """Images of a folder (DICOM / PNG / JPEG) and their labels: an RLE CSV or a folder of masks.

    ``ids``: the ImageIds that have a label; ``truth(image_id, shape)`` -> bool (H, W). ``failures``:
    one line per file that could not be scored; ``matched_by``: how labels were found (uid | stem).
    """

    data: Path
    labels: Path
    files: list[Path]
    ids: set[str]
    annotations: Annotations | None = None
    failures: list[str] = field(default_factory=list)
    matched_by: dict[str, int] = field(default_factory=lambda: {"uid": 0, "stem": 0})
    sources: dict[str, Path] = field(default_factory=dict)

    def truth(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """bool (H, W) truth of ``image_id`` for an image of ``shape``; DataError on a size mismatch."""
        if self.annotations is not None:
            return np.ascontiguousarray(self.annotations.mask(image_id, *shape))
        return read_layout_mask(self.labels / f"{image_id}.png", shape, self.sources.get(image_id))

    def load(self, path: Path, count: bool = True) -> InputImage:
        """The input with its label's ImageId (SOPInstanceUID, else the file stem); DataError when unlabelled.

        ``count``: add the match to ``matched_by``."""
        image = load_input(path)
        key, how = match_label(path.stem, self.ids, image.image_id if image.meta is not None else None)
        if how != "none":
            self.matched_by[how] += count
            return image if key == image.image_id else replace(image, image_id=safe_name(key, path, "file stem"))
        looked = "SOPInstanceUID and file stem" if image.meta is not None else "file stem"
        raise DataError(f"{path}: no label for ImageId {image.image_id} in {self.labels} (looked up the {looked})")


def read_labelled_set(data: str | os.PathLike[str], rle: str | os.PathLike[str] | None = None,
                      png_dir: str | os.PathLike[str] | None = None, find: bool = True) -> LabelledSet:
    """The inputs under ``data`` (``pneumoseg.inference.inputs.find_inputs``; none when ``find`` is
    False: the labels only) and exactly one label source: ``rle`` (challenge CSV, relative RLE, masks at
    each image's size) or ``png_dir`` (``<ImageId>.png`` masks, 0/255, at each image's size)."""
    if (rle is None) == (png_dir is None):
        raise DataError("external evaluation needs exactly one label source: --rle CSV or --png-dir DIR")
    files = find_inputs(data) if find else []
    if rle is not None:
        annotations = read_annotations(rle)
        return LabelledSet(Path(data), Path(rle), files, set(annotations), annotations)
    folder = Path(png_dir or "")
    if not folder.is_dir():
        raise DataError(f"--png-dir {folder}: no such folder (expected <ImageId>.png masks)")
    return LabelledSet(Path(data), folder, files, {p.stem for p in folder.glob("*.png")})


def iter_labelled(predictor: Predictor, labelled: LabelledSet, progress: bool = True) -> Iterator[SplitItem]:
    """Every labelled input at its own resolution (``Predictor.predict_batch``, the one inference path).

    A file that cannot be read, has an unsafe / invalid id, no label, a duplicate id or a mask of
    another size is skipped with one line in ``labelled.failures``.
    """
    files = labelled.files
    with progress_bar(progress) as bar:
        task = bar.add_task(f"predict {labelled.data.name}", total=len(files))
        for start in range(0, len(files), predictor.batch_size):
            batch: list[tuple[InputImage, np.ndarray]] = []
            for path in files[start:start + predictor.batch_size]:
                try:
                    image = labelled.load(path)
                    if image.image_id in labelled.sources:
                        raise DataError(f"{path}: ImageId {image.image_id} already evaluated from "
                                        f"{labelled.sources[image.image_id]}")
                    batch.append((image, labelled.truth(image.image_id, image.pixels.shape)))
                    labelled.sources[image.image_id] = path
                except PneumosegError as exc:
                    labelled.failures.append(str(exc))
            preds = predictor.predict_batch([im for im, _ in batch]) if batch else []
            for (image, truth), pred in zip(batch, preds, strict=True):
                spacing = image.meta.pixel_spacing_mm if image.meta is not None else None
                yield SplitItem(image.image_id, resize_image(image.pixels, predictor.size), pred.prob, truth,
                                str(image.path), spacing)
            bar.advance(task, len(files[start:start + predictor.batch_size]))


def labelled_loader(labelled: LabelledSet, size: int) -> CaseLoader:
    """The ``CaseLoader`` of an external set: the file ``labelled.sources[image_id]`` read again (image at
    ``size``) and its label; DataError naming the file when it is unknown or gone."""
    def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = labelled.sources.get(image_id)
        if path is None:
            raise DataError(f"ImageId {image_id}: no source file recorded for it in {labelled.data}")
        if not path.is_file():
            raise DataError(f"{path} (ImageId {image_id}) not found: moved or deleted since the evaluation")
        image = labelled.load(path, count=False)
        return resize_image(image.pixels, size), labelled.truth(image.image_id, image.pixels.shape)

    return load


def eval_case_loader(ev: str | os.PathLike[str], metrics: Mapping[str, object], cache: str | None,
                     size: int) -> CaseLoader:
    """The ``CaseLoader`` of an existing evaluation folder ``ev`` (images at ``size``, truth at the source size).

    An external set (``metrics["source"] == "external"``) is read again from the files ``ev/images.csv``
    recorded, with the labels ``metrics["labels"]`` names (an RLE CSV or a folder of PNG masks); a split
    from the run's ``cache``. DataError (one line: why the cases have no image) when they are not
    reachable from here; the loader itself raises DataError naming a file that has gone.
    """
    ev = Path(ev)
    if metrics.get("source") != "external":
        if not cache:
            raise DataError("the run's config names no data.cache: the split's images cannot be found")
        if not Path(cache).is_dir():
            raise DataError(f"cache {cache} (the run's data.cache) not found from here")
        return cache_loader(Path(cache), size)
    data, labels = Path(str(metrics.get("data", ""))), Path(str(metrics.get("labels", "")))
    if not labels.exists():
        raise DataError(f"labels {labels} (recorded in {ev / 'metrics.json'}) not found from here")
    images = read_eval_images(ev)
    if images is None:
        raise DataError(f"{ev / EVAL_IMAGES_FILE} not found (evaluated by an older pneumoseg): re-run "
                        f"`pneumoseg evaluate RUN --data {data} ...` to record where each image came from")
    labelled = read_labelled_set(data, rle=None if labels.is_dir() else labels,
                                 png_dir=labels if labels.is_dir() else None, find=False)
    labelled.sources = {i: Path(s) for i, s in zip(images["image_id"], images["source"], strict=True) if s}
    return labelled_loader(labelled, size)


@dataclass(frozen=True)
class ExternalResult:
    """What ``evaluate_external`` wrote (``out_dir``), its metrics and the files it skipped (one line each)."""

    out_dir: Path
    metrics: dict[str, object]
    failures: list[str]


def external_name(data: str | os.PathLike[str], name: str | None = None) -> str:
    """The eval folder name of an external set: ``name`` or the data folder's name (never a split name)."""
    chosen = name or Path(data).resolve().name
    safe_name(chosen, data, "data set name")
    if chosen in SPLITS:
        raise DataError(f"data set name {chosen!r} would overwrite the evaluation of split {chosen!r}: "
                        "choose another with --name")
    return chosen


def evaluate_external(predictor: Predictor, run_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                      rle: str | os.PathLike[str] | None = None, png_dir: str | os.PathLike[str] | None = None,
                      name: str | None = None, postprocess: PostProcess | None = None, n_cases: int = 8,
                      progress: bool = True) -> ExternalResult:
    """External validation: score every labelled image under ``data`` at its native resolution.

    Writes ``RUN/eval/<name>/`` (default name: the data folder's) with the same files as a split.
    Labels are matched by SOPInstanceUID, else by file stem (``metrics.json`` ``matched_by`` counts
    both). Files that cannot be scored are listed in ``failures`` (and ``metrics.json``); the rest
    are scored.
    """
    chosen = external_name(data, name)
    labelled = read_labelled_set(data, rle, png_dir)
    load_case = labelled_loader(labelled, predictor.size)
    out = eval_dir(run_dir, chosen)
    extra = {"source": "external", "data": str(labelled.data), "labels": str(labelled.labels),
             "matched_by": labelled.matched_by, "failures": labelled.failures}
    items = iter_labelled(predictor, labelled, progress)
    try:
        metrics = evaluate_items(predictor, items, out, chosen, load_case, postprocess, n_cases, extra)
    except DataError:
        if labelled.failures:
            raise DataError(f"{chosen}: no image could be evaluated; first problem: {labelled.failures[0]}") from None
        raise
    n_unused = len(labelled.ids - set(labelled.sources))
    if n_unused:
        metrics["labels_without_image"] = n_unused
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    return ExternalResult(out, metrics, labelled.failures)
