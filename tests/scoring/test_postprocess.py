"""Post-processing rules on hand-made maps, JSON round trip, invalid values."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.scoring.postprocess import PostProcess, remove_small_components


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
