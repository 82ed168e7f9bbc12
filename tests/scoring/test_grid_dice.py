"""The tuned validation score (``GridDice``) against a numpy reference of the same grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumoseg.scoring.grid import validation_grid
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.streaming import GridDice


def _reference(probs: np.ndarray, truths: np.ndarray, rules: list[dict]) -> np.ndarray:
    """Mean per-image Dice of every rule, written out in numpy (empty vs empty = 1)."""
    scores = []
    for r in rules:
        dice = []
        for p, t in zip(probs, truths, strict=True):
            pred = p > r["bottom_threshold"] if (p > r["top_threshold"]).sum() >= r["min_area"] else np.zeros_like(t)
            total = pred.sum() + t.sum()
            dice.append(1.0 if total == 0 else 2 * (pred & t).sum() / total)
        scores.append(np.mean(dice))
    return np.asarray(scores)


def _data(seed: int, n: int = 14, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truths = np.zeros((n, size, size), bool)
    probs = rng.random((n, size, size)).astype(np.float32) * 0.45  # background noise under 0.45
    for i in range(n):
        if i % 2 == 0:  # positives: a square lesion, probabilities high inside
            y, x, s = [*rng.integers(0, size - 20, 2).tolist(), int(rng.integers(6, 20))]
            truths[i, y:y + s, x:x + s] = True
            probs[i, y:y + s, x:x + s] = rng.uniform(0.3, 1.0)
        elif i % 3 == 0:  # some negatives get a false-positive blob
            probs[i, :5, :5] = rng.uniform(0.5, 1.0)
    return probs, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_dice_equals_numpy_reference(seed: int) -> None:
    probs, truths = _data(seed)
    rules = validation_grid(512)  # areas scaled for 512 px maps: 0, 125, 250, 500, 750, 1000
    metric = GridDice(rules)
    for lo in range(0, len(probs), 4):  # in batches, as validation does
        metric.update(torch.from_numpy(probs[lo:lo + 4])[:, None], torch.from_numpy(truths[lo:lo + 4])[:, None])
    out = metric.compute()
    ref = _reference(probs, truths, rules)
    best = int(np.argmax(ref))
    assert int(out["rule_index"]) == best
    assert float(out["dice_kaggle"]) == pytest.approx(ref[best], abs=1e-9)
    # the same rule through the numpy PostProcess gives the same masks
    r = metric.rule(best)
    pp = PostProcess(threshold=r["threshold"], min_area=r["min_area"], top_threshold=r["top_threshold"],
                     bottom_threshold=r["bottom_threshold"])
    masks = pp.apply_batch(probs)
    pos = truths.reshape(len(truths), -1).any(1)
    dice = [1.0 if (m.sum() + t.sum()) == 0 else 2 * (m & t).sum() / (m.sum() + t.sum()) for m, t in zip(masks, truths, strict=True)]
    assert float(out["dice_positive"]) == pytest.approx(np.mean(np.asarray(dice)[pos]), abs=1e-9)
    assert float(out["pred_positive"]) == pytest.approx(masks.reshape(len(masks), -1).any(1).mean())


def test_grid_contains_untuned_default_first_and_positives_found() -> None:
    rules = validation_grid(128)
    assert rules[0] == {"threshold": 0.3, "min_area": 0, "top_threshold": 0.3, "bottom_threshold": 0.3}
    assert {"threshold": 0.5, "min_area": 0, "top_threshold": 0.5, "bottom_threshold": 0.5} in rules
    assert all(r["top_threshold"] >= r["bottom_threshold"] for r in rules)
    # a model that predicts nothing anywhere: the best rule is any (all tie), nothing is found
    truths = np.zeros((4, 32, 32), bool)
    truths[0, 4:10, 4:10] = True
    metric = GridDice(rules)
    metric.update(torch.full((4, 1, 32, 32), 0.01), torch.from_numpy(truths)[:, None])
    out = metric.compute()
    assert float(out["positives_found"]) == 0.0
    assert float(out["dice_kaggle"]) == pytest.approx(0.75)  # the empty baseline: 3 of 4 images empty
    # a stray-pixel model: the tuned rule drops the false positives the untuned 0.5 keeps
    probs = torch.full((4, 1, 32, 32), 0.01)
    probs[0, 0, 4:10, 4:10] = 0.95
    probs[1, 0, 0, 0] = 0.6  # one stray pixel on a negative image
    metric = GridDice(rules)
    metric.update(probs, torch.from_numpy(truths)[:, None])
    out = metric.compute()
    assert float(out["dice_kaggle"]) == pytest.approx(1.0)
    assert float(out["positives_found"]) == 1.0
