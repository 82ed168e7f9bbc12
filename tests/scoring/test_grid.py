"""pneumoseg.scoring.grid: the search finds a planted optimum, its table agrees with the rules, it is fast."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.scoring.grid import default_grid, grid_search
from pneumoseg.scoring.metrics import dice_kaggle
from pneumoseg.scoring.postprocess import PostProcess


def _planted_plain(rng: np.random.Generator, n: int = 20, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Positives: a 6x6 mask at 0.6. Empties: a 20 px blob at 0.4 and a 3 px speck at 0.9."""
    probs = rng.random((n, size, size)).astype(np.float32) * 0.2
    truths = np.zeros((n, size, size), bool)
    for i in range(n):
        if i % 2 == 0:
            truths[i, 10:16, 10:16] = True
            probs[i, 10:16, 10:16] = 0.6
        else:
            probs[i, 2:6, 2:7] = 0.4
            probs[i, 20, 20:23] = 0.9
    return probs, truths


def test_grid_search_finds_planted_plain_optimum() -> None:
    probs, truths = _planted_plain(np.random.default_rng(1))
    best, table = grid_search(probs, truths, {"threshold": [0.3, 0.5, 0.7], "min_area": [0, 10]})
    assert best == PostProcess(threshold=0.5, min_area=10)
    assert len(table) == 6 and table["dice_kaggle"].iloc[0] == 1.0 and table["dice_kaggle"].iloc[1] < 1.0
    assert table["dice_kaggle"].is_monotonic_decreasing


def test_grid_search_finds_planted_triplet_optimum() -> None:
    """Positives: 36 px core at 0.95 within a 0.5 rim (truth = 100 px). Empties: a 120 px blob at 0.85.

    No plain rule separates them (the false blob is larger than the masks and the rim is faint).
    """
    rng = np.random.default_rng(2)
    probs = rng.random((20, 32, 32)).astype(np.float32) * 0.2
    truths = np.zeros(probs.shape, bool)
    for i in range(20):
        if i % 2 == 0:
            truths[i, 8:18, 8:18] = True
            probs[i, 8:18, 8:18] = 0.5
            probs[i, 10:16, 10:16] = 0.95
        else:
            probs[i, 18:28, 18:30] = 0.85
    g = {"top_threshold": [0.8, 0.9], "min_area": [10, 50], "bottom_threshold": [0.4, 0.6]}
    best, table = grid_search(probs, truths, [g, {"threshold": [0.4, 0.9], "min_area": [0, 30, 110]}])
    assert best == PostProcess(threshold=0.4, min_area=10, top_threshold=0.9, bottom_threshold=0.4)
    assert (table["dice_kaggle"] == 1.0).sum() == 1
    assert set(table["mode"]) == {"plain", "triplet"}


def test_grid_table_agrees_with_rules() -> None:
    probs, truths = _planted_plain(np.random.default_rng(3))
    probs = np.clip(probs + np.random.default_rng(4).normal(0, 0.15, probs.shape), 0, 1).astype(np.float32)
    _, table = grid_search(probs, truths, default_grid(256))
    for row in table.itertuples():
        rule = PostProcess(
            threshold=row.threshold,
            min_area=row.min_area,
            top_threshold=None if np.isnan(row.top_threshold) else row.top_threshold,
            bottom_threshold=None if np.isnan(row.bottom_threshold) else row.bottom_threshold,
        )
        assert dice_kaggle(rule.apply_batch(probs), truths) == pytest.approx(row.dice_kaggle, abs=1e-12)


def test_grid_search_is_fast() -> None:
    rng = np.random.default_rng(5)
    probs = rng.random((100, 256, 256), dtype=np.float32) ** 4
    truths = probs > 0.9
    start = time.monotonic()
    best, table = grid_search(probs, truths)  # default grids: plain + triplet
    assert len(table) >= 100
    assert time.monotonic() - start < 15  # ~1 s on an idle 2-core machine
    assert isinstance(best, PostProcess)


def test_grid_errors() -> None:
    with pytest.raises(ConfigError, match="grid keys"):
        grid_search(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool), {"thresh": [0.5]})
    with pytest.raises(ValueError, match="equal non-empty"):
        grid_search(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))
