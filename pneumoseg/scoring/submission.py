"""A local Kaggle-style scorer: a submission CSV against a truth CSV (``train-rle.csv`` form).

Both files are read with :func:`pneumoseg.io.rle.read_annotations` (header or not, BOM, CRLF,
``" -1"``). Every row of an ImageId is a region: an image's mask is the **union** of its rows,
in the submission as in the truth. RLE flavours (per file):

* ``relative``: the challenge's ``train-rle.csv`` form (0-based starts relative to the end of
  the previous run, column-major);
* ``absolute``: the standard Kaggle form other tools write (1-based absolute starts,
  column-major);
* ``auto``: the flavour in which every string of the file decodes (starts increasing, runs
  inside the image). Real multi-run masks decode in only one of them; when every string decodes
  both ways (e.g. only single-run masks) ``relative`` is taken and a note says so.

The score is the challenge's: per-image Dice, empty truth + empty prediction = 1, averaged over
the truth's images (``dice_kaggle``), with a stratified bootstrap CI (``pneumoseg.scoring.stats``).

ImageIds in the truth but not in the submission ("missing"): Kaggle refused such a submission
outright (its scorer's "Evaluation Exception: The submitted ids must contain all solution ids",
e.g. as reported in matterport/Mask_RCNN#1250). Locally they are listed and, by default, scored
as an empty prediction (exactly what a ``-1`` row would score), so a partial submission still
gets a number; ``strict=True`` refuses like Kaggle. ImageIds in the submission but not in the
truth ("extra") are listed and ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pneumoseg.util.atomic import atomic_path
from pneumoseg.errors import DataError, RLEError
from pneumoseg.scoring.metrics import detection_metrics, dice_from_counts
from pneumoseg.io.rle import EMPTY_RLE, Annotations, read_annotations, rle_decode, rle_decode_absolute
from pneumoseg.scoring.stats import CI, PerImage, bootstrap_ci, metric_statistic, predict_nothing_dice

__all__ = ["PER_IMAGE_COLUMNS", "RLE_FORMATS", "ScoreResult", "decode_mask", "resolve_format",
           "score_submission", "write_per_image"]

RLE_FORMATS = ("auto", "relative", "absolute")
RleFormat = Literal["auto", "relative", "absolute"]
PER_IMAGE_COLUMNS = ["image_id", "status", "has_truth", "truth_area_px", "pred_area_px", "intersection_px",
                     "dice"]


def _decoder(fmt: str) -> Callable[..., np.ndarray]:
    if fmt == "relative":
        return rle_decode
    if fmt == "absolute":
        return lambda rle, h, w, where="": rle_decode_absolute(rle, h, w, order="F", where=where)
    raise RLEError(f"RLE format {fmt!r} is not valid; choose one of {', '.join(RLE_FORMATS)}")


def _is_empty(rle: str) -> bool:
    return rle.strip() in ("", EMPTY_RLE)


def _decode_or_none(ann: Annotations, image_id: str, fmt: str, height: int, width: int) -> np.ndarray | None:
    """Union of the non-empty rows of ``image_id`` as bool (height, width); None when every row is empty."""
    decode = _decoder(fmt)
    out: np.ndarray | None = None
    for rle, row in zip(ann[image_id], ann.rows[image_id], strict=True):
        if _is_empty(rle):
            continue
        mask = decode(rle, height, width, where=f"{ann.source} row {row} ImageId {image_id}: ")
        out = mask if out is None else out | mask
    return out


def decode_mask(ann: Annotations, image_id: str, fmt: str, height: int, width: int) -> np.ndarray:
    """Union of the masks of every row of ``image_id`` decoded as ``fmt``: bool (height, width).

    RLEError names the file, row and ImageId of a string that does not decode.
    """
    mask = _decode_or_none(ann, image_id, fmt, height, width)
    return np.zeros((height, width), dtype=bool) if mask is None else mask


def resolve_format(ann: Annotations, fmt: str, height: int, width: int) -> tuple[str, str]:
    """(flavour, reason) for ``fmt`` = auto | relative | absolute; RLEError if no flavour fits.

    ``auto`` decodes the file's non-empty strings in both flavours until one flavour fails on a
    string and the other does not: the other is taken (a later string that does not decode in
    it fails when scored, naming its row). When no string tells them apart, ``relative`` is
    taken and ``reason`` says so. The reason is "" when ``fmt`` is given.
    """
    if fmt not in RLE_FORMATS:
        raise RLEError(f"RLE format {fmt!r} is not valid; choose one of {', '.join(RLE_FORMATS)}")
    if fmt != "auto":
        return fmt, ""
    for image_id, rles in ann.items():
        for rle, row in zip(rles, ann.rows[image_id], strict=True):
            if _is_empty(rle):
                continue
            errors = {}
            for flavour in ("relative", "absolute"):
                try:
                    _decoder(flavour)(rle, height, width, where=f"row {row} ImageId {image_id}: ")
                except RLEError as exc:
                    errors[flavour] = str(exc)
            if len(errors) == 2:
                raise RLEError(f"{ann.source}: decodes neither as relative RLE ({errors['relative']}) nor as "
                               f"absolute RLE ({errors['absolute']}) at {height}x{width}; check --height/--width")
            if errors:
                bad = next(iter(errors))
                good = "absolute" if bad == "relative" else "relative"
                return good, f"{ann.source}: read as {good} RLE (row {row} ImageId {image_id} is not valid {bad} RLE)"
    return "relative", (f"{ann.source}: every mask decodes as relative and as absolute RLE; took relative "
                        "(pass the format explicitly if it is absolute)")


@dataclass
class ScoreResult:
    """What :func:`score_submission` found; ``per_image`` has :data:`PER_IMAGE_COLUMNS`, truth order."""

    per_image: pd.DataFrame
    missing: list[str]
    extra: list[str]
    metrics: dict[str, float | int]
    dice_kaggle: CI
    dice_positive: CI
    submission_format: str
    truth_format: str
    notes: list[str] = field(default_factory=list)  #: how each ``auto`` flavour was decided


def score_submission(submission: str | os.PathLike[str], truth: str | os.PathLike[str],
                     rle_format: RleFormat = "auto", truth_format: RleFormat = "auto", height: int = 1024,
                     width: int = 1024, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     strict: bool = False) -> ScoreResult:
    """Score ``submission`` against ``truth`` (see the module docstring for the rules).

    ``metrics``: ``dice_kaggle``, ``dice_positive``, the image-level detection metrics of
    ``pneumoseg.scoring.metrics.detection_metrics`` (AUC scored by predicted area: a submission has no
    probabilities), ``predict_nothing`` (dice_kaggle of an all-empty submission), ``n_images``,
    ``n_positive``, ``n_missing``, ``n_extra``.
    """
    if height < 1 or width < 1:
        raise DataError(f"image size {height}x{width} is not valid: height and width must be >= 1")
    sub_ann, truth_ann = read_annotations(submission), read_annotations(truth)
    if not truth_ann:
        raise DataError(f"{truth}: no ImageIds in the truth file")
    sub_fmt, sub_note = resolve_format(sub_ann, rle_format, height, width)
    truth_fmt, truth_note = resolve_format(truth_ann, truth_format, height, width)
    ids = list(truth_ann)
    missing = [i for i in ids if i not in sub_ann]
    extra = [i for i in sub_ann if i not in truth_ann]
    if strict and missing:
        raise DataError(f"{submission}: {len(missing)} ImageIds of {truth} have no row (first: {missing[0]}); "
                        "Kaggle refused such submissions (drop --strict to score them as empty)")
    n = len(ids)
    inter, pred_area, truth_area = (np.zeros(n, np.int64) for _ in range(3))
    for k, image_id in enumerate(ids):
        try:
            t = _decode_or_none(truth_ann, image_id, truth_fmt, height, width)
        except RLEError as exc:
            raise RLEError(f"{exc}; {truth_note}" if truth_note else str(exc)) from None
        try:
            p = _decode_or_none(sub_ann, image_id, sub_fmt, height, width) if image_id in sub_ann else None
        except RLEError as exc:
            raise RLEError(f"{exc}; {sub_note}" if sub_note else str(exc)) from None
        truth_area[k] = np.count_nonzero(t) if t is not None else 0
        pred_area[k] = np.count_nonzero(p) if p is not None else 0
        inter[k] = np.count_nonzero(p & t) if p is not None and t is not None else 0
    dice = dice_from_counts(inter, pred_area, truth_area)
    has_truth = truth_area > 0
    per_image = pd.DataFrame({
        "image_id": ids, "status": ["missing" if i not in sub_ann else "scored" for i in ids],
        "has_truth": has_truth.astype(int), "truth_area_px": truth_area, "pred_area_px": pred_area,
        "intersection_px": inter, "dice": dice.round(6),
    }, columns=PER_IMAGE_COLUMNS)
    per = PerImage.from_arrays(dice, has_truth, pred_area > 0, pred_area)
    ci = {name: bootstrap_ci(metric_statistic(name, per), has_truth, n_boot, seed, level, n=n)
          for name in ("dice_kaggle", "dice_positive")}
    metrics: dict[str, float | int] = {
        "dice_kaggle": ci["dice_kaggle"].value, "dice_positive": ci["dice_positive"].value,
        **detection_metrics(pred_area, has_truth, pred_area > 0),
        "predict_nothing": predict_nothing_dice(has_truth),
        "n_images": n, "n_positive": int(has_truth.sum()), "n_missing": len(missing), "n_extra": len(extra),
    }
    notes = [x for x in (sub_note, truth_note) if x]
    return ScoreResult(per_image, missing, extra, metrics, ci["dice_kaggle"], ci["dice_positive"], sub_fmt,
                       truth_fmt, notes)


def write_per_image(result: ScoreResult, path: str | os.PathLike[str]) -> Path:
    """Write ``result.per_image`` as CSV (atomically) and return the path."""
    out = Path(path)
    with atomic_path(out) as tmp:
        result.per_image.to_csv(tmp, index=False)
    return out
