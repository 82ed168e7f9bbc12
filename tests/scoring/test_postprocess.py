"""Post-processing rules on hand-made maps, JSON round trip, grid search finds a planted optimum."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.scoring.metrics import dice_kaggle
from pneumoseg.scoring.postprocess import PostProcess, default_grid, grid_search, remove_small_components


def grid(*rows: str) -> np.ndarray:
    """A (H, W) probability map from digit rows: '7' -> 0.7, '.' -> 0."""
    return np.array([[0.0 if c == "." else int(c) / 10 for c in row] for row in rows], dtype=np.float32)


def bools(*rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_plain_threshold_is_strict() -> None:
    prob = grid("59.", "4..", "..6")
    assert PostProcess(threshold=0.5)(prob).tolist() == bools(".#.", "...", "..#").tolist()
    out = PostProcess()(prob)
    assert out.dtype == bool and out.shape == prob.shape


def test_min_area_removes_small_components_8_connected() -> None:
    prob = grid(
        "9...9",
        ".9..9",
        "....9",
        "9....",
    )
    # components: the diagonal pair (2 px, joined by 8-connectivity), the column (3 px), a single pixel
    assert PostProcess(min_area=2)(prob).tolist() == bools("#...#", ".#..#", "....#", ".....").tolist()
    assert PostProcess(min_area=3)(prob).tolist() == bools("....#", "....#", "....#", ".....").tolist()
    assert not PostProcess(min_area=4)(prob).any()
    assert PostProcess(min_area=0)(prob).sum() == 6
    assert remove_small_components(prob > 0.5, 1).sum() == 6


def test_triplet_rule() -> None:
    prob = grid("95.", "43.", "...")
    rule = PostProcess(top_threshold=0.8, min_area=2, bottom_threshold=0.3)
    assert rule.mode == "triplet"
    assert not rule(prob).any()  # only one pixel above 0.8: the image is negative
    prob2 = grid("99.", "43.", "...")
    assert rule(prob2).tolist() == bools("##.", "#..", "...").tolist()  # > 0.3, 0.3 itself excluded
    # without a bottom threshold the mask is drawn at `threshold`
    assert (
        PostProcess(threshold=0.5, top_threshold=0.8, min_area=2)(prob2).tolist()
        == bools("##.", "...", "...").tolist()
    )
    # the triplet rule keeps small components of a positive image
    prob3 = grid("99..", "....", "...4")
    assert PostProcess(top_threshold=0.8, min_area=2, bottom_threshold=0.3)(prob3).sum() == 3


def test_apply_batch_matches_per_image() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((5, 16, 16)).astype(np.float32)
    for rule in (PostProcess(0.7, 3), PostProcess(top_threshold=0.95, min_area=5, bottom_threshold=0.6)):
        batch = rule.apply_batch(probs)
        assert batch.shape == probs.shape and batch.dtype == bool
        assert all((batch[i] == rule(probs[i])).all() for i in range(5))
        assert (rule.apply_batch(probs[:, None]) == batch).all()


def test_dict_and_json_round_trip(tmp_path) -> None:
    rule = PostProcess(threshold=0.4, min_area=120, top_threshold=0.75, bottom_threshold=0.35)
    assert PostProcess.from_dict(rule.to_dict()) == rule
    path = tmp_path / "postprocess.json"
    rule.save(path)
    assert PostProcess.load(path) == rule
    with pytest.raises(ConfigError, match="unknown keys \\['thresh'\\]"):
        PostProcess.from_dict({"thresh": 0.5})
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="no JSON object"):
        PostProcess.load(path)


def test_invalid_values() -> None:
    with pytest.raises(ConfigError, match="threshold must be in"):
        PostProcess(threshold=1.5)
    with pytest.raises(ConfigError, match="min_area"):
        PostProcess(min_area=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        PostProcess()(np.zeros((1, 4, 4)))


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
