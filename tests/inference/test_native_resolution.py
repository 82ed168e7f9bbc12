"""Scoring happens at the source resolution: a model that is perfect at the training size scores ~1 at 1024.

The prediction is the ground truth downsampled to the model size (as the cache stores it), then
sent through the real path: ``Predictor.native_prob`` (bilinear upsampling of probabilities) and
``PostProcess`` at the source size. The "any" rule of the first round is kept as the reference
that fails: its masks grow, and the old path (threshold at model size, enlarge the binary mask)
is what the issue measured at ~0.97.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pneumoseg.data.phantom import make_phantom
from pneumoseg.io.images import read_mask, resize_mask
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.inference.predictor import Predictor
from tests.shared_data import SIIM, require_siim


def _as_prob(low: np.ndarray) -> np.ndarray:
    return low.astype(np.float32) / 255.0 if low.dtype == np.uint8 else low.astype(np.float32)


def _native_dice(masks: list[np.ndarray], size: int, rule: str) -> np.ndarray:
    """Per-image Dice at the source size of a 'perfect' model-size prediction sent through the real path."""
    rule_pp = PostProcess(threshold=0.5)
    out = []
    for mask in masks:
        low = resize_mask(mask, size, rule=rule)  # type: ignore[arg-type]
        native = Predictor.native_prob(_as_prob(low), mask.shape)
        out.append(dice_per_image(rule_pp(native)[None], mask[None])[0])
    return np.array(out)


@functools.cache
def _phantom_masks(n: int, size: int = 1024) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    masks = []
    while len(masks) < n:
        _, regions = make_phantom(rng, size, positive=True)
        masks.append(np.any(regions, axis=0))
    return masks


def test_perfect_model_size_prediction_scores_at_least_0_99_on_phantoms() -> None:
    """With soft targets (the cache's default): the covered fraction keeps the sub-pixel boundary.
    The binary fraction rule loses it (~0.97 on the thin phantom crescents), hence soft by default."""
    masks = _phantom_masks(6)
    soft, fraction = _native_dice(masks, 512, "soft"), _native_dice(masks, 512, "fraction")
    assert soft.mean() >= 0.99 and soft.min() >= 0.98, soft
    assert soft.mean() > fraction.mean(), (soft, fraction)


@require_siim
@pytest.mark.parametrize("rule", ["fraction", "soft"])
def test_perfect_model_size_prediction_scores_at_least_0_99_on_real_masks(rule: str) -> None:
    masks = [read_mask(p) for p in sorted((SIIM / "png" / "masks").glob("*.png"))[:12]]
    assert masks and all(m.shape == (1024, 1024) and m.any() for m in masks)
    dice = _native_dice(masks, 512, rule)
    assert dice.mean() >= 0.99, dice


def test_the_old_any_rule_path_loses_dice_that_the_native_path_keeps() -> None:
    """The first round's path (any-rule masks, threshold at model size, enlarge the binary mask) scores
    visibly lower on the same phantoms: the test that would have caught it."""
    masks = _phantom_masks(6)
    old = []
    for mask in masks:
        low = resize_mask(mask, 512, rule="any").astype(np.float32)
        binary_up = Predictor.native_prob(low, mask.shape) > 0.5  # the old enlarge-the-mask step
        old.append(dice_per_image(binary_up[None], mask[None])[0])
    new = _native_dice(masks, 512, "soft")
    assert np.mean(old) < np.mean(new) - 0.02, (np.mean(old), np.mean(new))


def test_min_area_counts_source_pixels() -> None:
    """A 40 x 40 blob at 1024 (1,600 source px) predicted at 256 (100 model px) survives min_area=1000."""
    mask = np.zeros((1024, 1024), bool)
    mask[500:540, 500:540] = True
    low = _as_prob(resize_mask(mask, 256, rule="soft"))
    native = Predictor.native_prob(low, mask.shape)
    assert PostProcess(threshold=0.5, min_area=1000)(native).sum() == pytest.approx(1600, rel=0.05)
    assert not PostProcess(threshold=0.5, min_area=2000)(native).any()
