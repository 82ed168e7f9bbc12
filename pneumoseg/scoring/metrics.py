"""Challenge metrics. Inputs are binary masks (thresholding is ``pneumoseg.scoring.postprocess``'s job).

Masks: (N, H, W) or (N, 1, H, W), numpy bool/uint8 or torch tensors, nonzero = positive. A
single (H, W) mask is taken as N = 1.

The empty-mask rule (the challenge's): Dice is computed per image,
``2 |A & B| / (|A| + |B|)``; an image with an empty truth scores 1 if the prediction is empty
too and 0 if any pixel is predicted. ``dice_kaggle`` is the mean of the per-image Dice over all
images; ``dice_positive`` the mean over images whose truth is not empty.

Why the seed's number misled. The seed pooled every pixel of a batch into one Dice,
``2 sum|A & B| / (sum|A| + sum|B|)``, and scored an all-empty batch (union 0) as 1. In that
sum a large pneumothorax of 20,000 pixels outweighs everything else: a 300-pixel false
positive on an empty image adds 300 to a denominator of ~40,000 and costs under 1%, while the
challenge scores that image 0 instead of 1; a missed small pneumothorax barely moves it either.
Its value therefore tracks how well the big masks overlap and says nothing about the empty
images. The challenge metric is the opposite: about 78% of the images are empty, so a model
that predicts nothing at all scores ~0.78 on ``dice_kaggle`` (and one that fires a single
pixel on every image scores ~0), and a "0.78" can mean no segmentation skill at all. Report
``dice_positive`` (segmentation quality where there is something to find) and the image-level
``detection_metrics`` (does it fire on empty images: ``fpr_empty``) next to ``dice_kaggle``.
"""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
import torch

__all__ = [
    "SUMMARY_KEYS",
    "detection_metrics",
    "dice_from_counts",
    "dice_kaggle",
    "dice_per_image",
    "dice_positive",
    "summarize",
]

SUMMARY_KEYS = (
    "dice_kaggle",
    "dice_positive",
    "image_auc",
    "sensitivity",
    "specificity",
    "fpr_empty",
    "n_images",
    "n_positive",
)


def _as_flat_bool(masks: Any, what: str) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"{what}: expected (N, 1, H, W), got {arr.shape}")
        arr = arr[:, 0]
    elif arr.ndim != 3:
        raise ValueError(f"{what}: expected (N, H, W) or (N, 1, H, W) masks, got shape {arr.shape}")
    return arr.reshape(arr.shape[0], -1) != 0


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_flat_bool(pred, "pred")
    t = _as_flat_bool(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true masks differ in shape: {p.shape} vs {t.shape} (N, H*W)")
    return p, t


@overload
def dice_from_counts(inter: torch.Tensor, pred_area: torch.Tensor,
                     true_area: torch.Tensor) -> torch.Tensor: ...
@overload
def dice_from_counts(inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray: ...
def dice_from_counts(inter: Any, pred_area: Any, true_area: Any) -> Any:
    """Per-image Dice from (N,) pixel counts; 1 where both masks are empty (the one place of this rule).

    numpy counts give float64 numpy; torch counts give a torch tensor on their device (float64,
    float32 on MPS), computed there without a host sync.
    """
    if isinstance(inter, torch.Tensor):
        dtype = torch.float32 if inter.device.type == "mps" else torch.float64
        total = (pred_area + true_area).to(dtype)
        ones = torch.ones_like(total)
        return torch.where(total == 0, ones, 2.0 * inter.to(dtype) / torch.where(total == 0, ones, total))
    total = pred_area + true_area
    safe = np.where(total == 0, 1, total)
    return np.where(total == 0, 1.0, 2.0 * inter / safe)


def dice_per_image(pred: Any, true: Any) -> np.ndarray:
    """Dice of each image, float64 (N,); empty/empty = 1, empty truth with any predicted pixel = 0."""
    p, t = _pair(pred, true)
    inter = np.count_nonzero(p & t, axis=1)
    return dice_from_counts(inter, np.count_nonzero(p, axis=1), np.count_nonzero(t, axis=1))


def dice_kaggle(pred_masks: Any, true_masks: Any) -> float:
    """The challenge metric: mean per-image Dice over all images (NaN for no images)."""
    d = dice_per_image(pred_masks, true_masks)
    return float(d.mean()) if d.size else math.nan


def dice_positive(pred: Any, true: Any) -> float:
    """Mean per-image Dice over the images whose truth is not empty (NaN if there are none)."""
    p, t = _pair(pred, true)
    true_area = np.count_nonzero(t, axis=1)
    keep = true_area > 0
    if not keep.any():
        return math.nan
    dice = dice_from_counts(np.count_nonzero(p & t, axis=1), np.count_nonzero(p, axis=1), true_area)
    return float(dice[keep].mean())


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def detection_metrics(scores: Any, has_truth: Any, pred_positive: Any) -> dict[str, float]:
    """Image-level detection: is there a pneumothorax?

    Args:
        scores: (N,) float, higher = more likely positive (max probability or predicted area).
        has_truth: (N,) bool, the truth mask is not empty.
        pred_positive: (N,) bool, the post-processed prediction is not empty.

    Returns ``image_auc`` (ROC AUC of ``scores``; NaN if only one class is present),
    ``sensitivity`` (positives found / positives), ``specificity`` (empty images predicted empty
    / empty images) and ``fpr_empty`` (1 - specificity: empty images with a false mask). Rates
    with a zero denominator are NaN.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(has_truth).reshape(-1).astype(bool)
    yhat = np.asarray(pred_positive).reshape(-1).astype(bool)
    if not (s.shape == y.shape == yhat.shape):
        raise ValueError(
            f"scores, has_truth, pred_positive differ in length: {s.shape}, {y.shape}, {yhat.shape}"
        )
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    from sklearn.metrics import roc_auc_score  # scikit-learn (~0.5 s): imported when a score is computed

    auc = float(roc_auc_score(y, s)) if n_pos and n_neg else math.nan
    tn = int((~y & ~yhat).sum())
    return {
        "image_auc": auc,
        "sensitivity": _ratio(int((y & yhat).sum()), n_pos),
        "specificity": _ratio(tn, n_neg),
        "fpr_empty": _ratio(int((~y & yhat).sum()), n_neg),
    }


def summarize(pred_masks: Any, true_masks: Any, scores: Any | None = None) -> dict[str, float]:
    """All metrics at once, keys ``SUMMARY_KEYS``.

    ``scores`` (N,) are the image-level scores for the AUC (e.g. each image's maximum
    probability); by default the predicted area is used.
    """
    p, t = _pair(pred_masks, true_masks)
    inter = np.count_nonzero(p & t, axis=1)
    pred_area = np.count_nonzero(p, axis=1)
    true_area = np.count_nonzero(t, axis=1)
    dice = dice_from_counts(inter, pred_area, true_area)
    has_truth = true_area > 0
    det = detection_metrics(pred_area if scores is None else scores, has_truth, pred_area > 0)
    return {
        "dice_kaggle": float(dice.mean()) if dice.size else math.nan,
        "dice_positive": float(dice[has_truth].mean()) if has_truth.any() else math.nan,
        **det,
        "n_images": int(dice.size),
        "n_positive": int(has_truth.sum()),
    }
