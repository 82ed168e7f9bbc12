"""Metrics: hand cases, the empty-mask rule, MONAI and a pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pneumoseg.scoring.streaming import DiceKaggle
from pneumoseg.scoring.metrics import (
    SUMMARY_KEYS,
    detection_metrics,
    dice_from_counts,
    dice_kaggle,
    dice_per_image,
    dice_positive,
    summarize,
)


def masks(*rows: str) -> np.ndarray:
    """One (H, W) bool mask per string, rows separated by '/', '#' = positive."""
    return np.stack([np.array([[c == "#" for c in r] for r in m.split("/")]) for m in rows])


def reference_dice(pred: np.ndarray, true: np.ndarray) -> list[float]:
    """Straightforward pure-Python per-image Dice with the challenge's empty rule."""
    out = []
    for p, t in zip(pred.tolist(), true.tolist(), strict=True):
        fp = [bool(v) for row in p for v in row]
        ft = [bool(v) for row in t for v in row]
        a, b = sum(fp), sum(ft)
        inter = sum(1 for x, y in zip(fp, ft, strict=True) if x and y)
        out.append(1.0 if a + b == 0 else 2 * inter / (a + b))
    return out


HAND = [
    ("empty / empty", "../..", "../..", 1.0),
    ("false positive on an empty image", "#./..", "../..", 0.0),
    ("missed mask", "../..", "##/..", 0.0),
    ("perfect", "##/.#", "##/.#", 1.0),
    ("partial: |A|=2, |B|=3, |A&B|=1", "#./#.", "##/.#", 2 * 1 / (2 + 3)),
    ("partial: |A|=3, |B|=1, |A&B|=1", "##/#.", "#./..", 2 * 1 / (3 + 1)),
]


@pytest.mark.parametrize(("label", "pred", "true", "expected"), HAND, ids=[h[0] for h in HAND])
def test_hand_cases(label: str, pred: str, true: str, expected: float) -> None:
    assert dice_per_image(masks(pred), masks(true)).tolist() == pytest.approx([expected])


def test_input_forms_agree() -> None:
    pred, true = masks("#./#.", "../..", "##/.."), masks("##/.#", "../..", "../..")
    expected = [0.4, 1.0, 0.0]
    assert dice_per_image(pred, true).tolist() == pytest.approx(expected)
    assert dice_per_image(pred[:, None].astype(np.uint8) * 255, true[:, None]).tolist() == pytest.approx(
        expected
    )
    assert dice_per_image(
        torch.from_numpy(pred)[:, None], torch.from_numpy(true)[:, None]
    ).tolist() == pytest.approx(expected)
    assert dice_per_image(pred[0], true[0]).tolist() == pytest.approx([0.4])  # a single (H, W) mask
    assert dice_kaggle(pred, true) == pytest.approx(np.mean(expected))
    assert dice_positive(pred, true) == pytest.approx(0.4)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_image(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        dice_per_image(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))


def test_dice_positive_nan_without_positives() -> None:
    assert math.isnan(dice_positive(masks("#./.."), masks("../..")))


def _random_masks(rng: np.random.Generator, n: int = 24, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    pred = rng.random((n, size, size)) < rng.random((n, 1, 1)) * 0.5
    true = rng.random((n, size, size)) < rng.random((n, 1, 1)) * 0.5
    pred[:6] = False  # empty predictions
    true[3:9] = False  # empty truths: 3..5 empty/empty, 6..8 false positives
    pred[6:9, 0, 0] = True
    return pred, true


def test_matches_pure_python_reference() -> None:
    pred, true = _random_masks(np.random.default_rng(1))
    assert dice_per_image(pred, true).tolist() == pytest.approx(reference_dice(pred, true))


def test_matches_monai_per_image() -> None:
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, true = _random_masks(np.random.default_rng(2))
    metric = monai_metrics.DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    per_image = metric(torch.from_numpy(pred)[:, None].float(), torch.from_numpy(true)[:, None].float())
    monai = per_image.reshape(-1).numpy()
    # MONAI with ignore_empty=False: empty/empty -> 1, empty truth with a prediction -> 0, as here.
    assert monai[3:6].tolist() == [1.0, 1.0, 1.0]
    assert monai[6:9].tolist() == [0.0, 0.0, 0.0]
    assert dice_per_image(pred, true) == pytest.approx(monai, abs=1e-6)
    assert dice_kaggle(pred, true) == pytest.approx(float(metric.aggregate()), abs=1e-6)


def test_all_empty_prediction_scores_the_empty_share() -> None:
    # 78 empty images out of 100: predicting nothing gives dice_kaggle 0.78 and dice_positive 0.
    true = np.zeros((100, 4, 4), bool)
    true[:22, 1:3, 1:3] = True
    pred = np.zeros_like(true)
    assert dice_kaggle(pred, true) == pytest.approx(0.78)
    assert dice_positive(pred, true) == 0.0


def test_detection_metrics() -> None:
    has_truth = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    pred_positive = np.array([1, 1, 0, 1, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4])
    det = detection_metrics(scores, has_truth, pred_positive)
    assert det["sensitivity"] == pytest.approx(2 / 3)
    assert det["specificity"] == pytest.approx(3 / 4)
    assert det["fpr_empty"] == pytest.approx(1 / 4)
    # AUC: pairs (pos, neg) ranked right: 0.9, 0.8 beat all 4; 0.3 beats 0.2, 0.1 -> (4+4+2)/12
    assert det["image_auc"] == pytest.approx(10 / 12)
    one_class = detection_metrics([0.1, 0.2], [True, True], [True, False])
    assert math.isnan(one_class["image_auc"]) and math.isnan(one_class["specificity"])


def test_summarize_keys_and_values() -> None:
    pred = masks("#./#.", "../..", "##/..", "../..")
    true = masks("##/.#", "../..", "../..", "#./..")
    s = summarize(pred, true)
    assert tuple(s) == SUMMARY_KEYS
    assert s["dice_kaggle"] == pytest.approx((0.4 + 1 + 0 + 0) / 4)
    assert s["dice_positive"] == pytest.approx(0.2)
    assert s["n_images"] == 4 and s["n_positive"] == 2
    assert s["sensitivity"] == 0.5 and s["fpr_empty"] == 0.5
    s2 = summarize(pred, true, scores=[0.9, 0.1, 0.2, 0.8])
    assert s2["image_auc"] == 1.0


def test_streaming_accumulator_matches_function() -> None:
    pred, true = _random_masks(np.random.default_rng(3))
    acc = DiceKaggle()
    for start in range(0, len(pred), 5):
        p, t = torch.from_numpy(pred[start : start + 5]), torch.from_numpy(true[start : start + 5])
        acc.update(p[:, None].float(), t[:, None].to(torch.uint8))
    values = acc.compute()
    assert float(values["dice_kaggle"]) == pytest.approx(dice_kaggle(pred, true), abs=1e-12)
    assert float(values["dice_positive"]) == pytest.approx(dice_positive(pred, true), abs=1e-12)
    assert int(values["n_images"]) == len(pred)
    assert int(values["n_positive"]) == int(true.reshape(len(true), -1).any(1).sum())
    acc.update(pred[:2], true[:2])  # numpy works too
    assert int(acc.compute()["n_images"]) == len(pred) + 2
    only = DiceKaggle(result="dice_positive")
    only.update(pred, true)
    assert float(only.compute()) == pytest.approx(dice_positive(pred, true), abs=1e-12)
    acc.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(acc.compute()["dice_kaggle"]))
    with pytest.raises(ValueError, match="unknown result"):
        DiceKaggle(result="iou")


def test_dice_from_counts_torch_equals_numpy() -> None:
    inter, pa, ta = np.array([0, 3, 0, 5]), np.array([0, 4, 2, 5]), np.array([0, 6, 0, 9])
    ref = dice_from_counts(inter, pa, ta)
    got = dice_from_counts(*(torch.from_numpy(x) for x in (inter, pa, ta)))
    assert isinstance(got, torch.Tensor) and np.allclose(got.numpy(), ref) and ref.tolist()[0] == 1.0
