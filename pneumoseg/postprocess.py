"""Post-processing: the only place where probabilities become masks.

``PostProcess`` maps a probability map (H, W) float in [0, 1] to a bool mask (H, W) by one
of two rules:

* plain (``top_threshold`` is None): ``mask = prob > threshold``, then connected components
  (8-connectivity) with fewer than ``min_area`` pixels are removed;
* triplet (``top_threshold`` set; the winning solution's rule): the image is positive only if
  at least ``min_area`` pixels have ``prob > top_threshold``; a positive image's mask is
  ``prob > bottom_threshold`` (``threshold`` when ``bottom_threshold`` is None), any other
  image's mask is empty.

``min_area`` is in pixels at the resolution of the probability map. ``grid_search`` scores
every combination of a grid on validation probabilities with the challenge metric
(``dice_kaggle``) and returns the best rule and a table of all results.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pneumoseg.atomic import atomic_write_text
from pneumoseg.config import ExperimentConfig
from pneumoseg.errors import ConfigError
from pneumoseg.metrics import dice_from_counts

__all__ = [
    "TUNED_NAME",
    "PostProcess",
    "default_grid",
    "grid_search",
    "load_tuned",
    "remove_small_components",
    "run_postprocess",
]


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components of a bool (H, W) mask with fewer than ``min_area`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_area <= 1 or not mask.any():
        return mask.copy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def _check_prob(prob: Any) -> np.ndarray:
    arr = np.asarray(prob)
    if arr.ndim != 2:
        raise ValueError(f"PostProcess: expected a (H, W) probability map, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class PostProcess:
    """Probability map (H, W) in [0, 1] -> bool mask (H, W); see the module docstring for the rules."""

    threshold: float = 0.5
    min_area: int = 0
    top_threshold: float | None = None
    bottom_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "top_threshold", "bottom_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"PostProcess.{name} must be in [0, 1], got {value}")
        if int(self.min_area) != self.min_area or self.min_area < 0:
            raise ConfigError(f"PostProcess.min_area must be an integer >= 0, got {self.min_area}")
        object.__setattr__(self, "min_area", int(self.min_area))

    @property
    def mode(self) -> str:
        """``"triplet"`` when ``top_threshold`` is set, else ``"plain"``."""
        return "plain" if self.top_threshold is None else "triplet"

    @property
    def mask_threshold(self) -> float:
        """The threshold that draws the mask (``bottom_threshold`` in triplet mode, if set)."""
        if self.top_threshold is not None and self.bottom_threshold is not None:
            return self.bottom_threshold
        return self.threshold

    def __call__(self, prob: Any) -> np.ndarray:
        p = _check_prob(prob)
        if self.top_threshold is None:
            return remove_small_components(p > self.threshold, self.min_area)
        if np.count_nonzero(p > self.top_threshold) < self.min_area:
            return np.zeros(p.shape, dtype=bool)
        return p > self.mask_threshold

    def apply_batch(self, probs: Any) -> np.ndarray:
        """(N, H, W) or (N, 1, H, W) probabilities -> bool (N, H, W) masks."""
        arr = np.asarray(probs)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise ValueError(f"PostProcess.apply_batch: expected (N, H, W) probabilities, got {arr.shape}")
        if self.top_threshold is not None:
            positive = np.count_nonzero(arr > self.top_threshold, axis=(1, 2)) >= self.min_area
            return (arr > self.mask_threshold) & positive[:, None, None]
        return np.stack([self(p) for p in arr]) if len(arr) else np.zeros(arr.shape, bool)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostProcess:
        """Build from ``to_dict`` output; unknown keys raise ConfigError naming the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"PostProcess: unknown keys {unknown}; valid: {', '.join(valid)}")
        return cls(**dict(data))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PostProcess:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read post-processing file {os.fspath(path)!r}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"post-processing file {os.fspath(path)!r} holds no JSON object")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{os.fspath(path)}: {exc}") from None


TUNED_NAME = "postprocess.json"  #: where ``pneumoseg tune`` stores the best rule in a run folder


def load_tuned(run_dir: str | os.PathLike[str]) -> PostProcess | None:
    """The rule ``pneumoseg tune`` stored in ``RUN/postprocess.json``, or None if it never ran."""
    path = Path(run_dir) / TUNED_NAME
    return PostProcess.load(path) if path.is_file() else None


def run_postprocess(run_dir: str | os.PathLike[str], cfg: ExperimentConfig) -> PostProcess:
    """A run's post-processing: the tuned rule when there is one, else the config's threshold."""
    return load_tuned(run_dir) or PostProcess(threshold=cfg.postprocess.threshold, min_area=cfg.postprocess.min_area)


def default_grid(size: int = 1024) -> list[dict[str, list[Any]]]:
    """The default grids (plain, then triplet) for probability maps of ``size`` x ``size``.

    Areas are the winning solution's pixel counts at 1024 px, scaled by (size / 1024)^2.
    """
    scale = (size / 1024) ** 2
    areas = sorted({round(a * scale) for a in (0, 500, 1000, 2000, 3000, 4000)})
    return [
        {"threshold": [0.3, 0.4, 0.5, 0.6, 0.7], "min_area": areas},
        {
            "top_threshold": [0.5, 0.6, 0.7, 0.75, 0.8, 0.9],
            "min_area": areas,
            "bottom_threshold": [0.3, 0.4, 0.5],
        },
    ]


def _plain_rows(
    probs: np.ndarray, truths: np.ndarray, thresholds: Iterable[float], areas: Sequence[int]
) -> list[dict[str, Any]]:
    """Per threshold: label components once, then score every min_area from component stats."""
    true_area = truths.reshape(len(truths), -1).sum(1)
    rows = []
    for thr in thresholds:
        comp: list[tuple[np.ndarray, np.ndarray]] = []  # (areas, intersections) per image
        binary = probs > thr
        for mask, truth in zip(binary, truths, strict=True):
            if not mask.any():
                comp.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
                continue
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
            inter = np.bincount(labels[truth], minlength=n)
            comp.append((stats[1:, cv2.CC_STAT_AREA].astype(np.int64), inter[1:].astype(np.int64)))
        for area in areas:
            pred_area = np.array([a[a >= area].sum() for a, _ in comp])
            inter = np.array([i[a >= area].sum() for a, i in comp])
            rows.append(_row(dice_from_counts(inter, pred_area, true_area), true_area, threshold=thr, min_area=area))
    return rows


def _triplet_rows(
    probs: np.ndarray,
    truths: np.ndarray,
    tops: Sequence[float],
    areas: Sequence[int],
    bottoms: Sequence[float],
) -> list[dict[str, Any]]:
    flat = probs.reshape(len(probs), -1)
    tflat = truths.reshape(len(truths), -1)
    true_area = tflat.sum(1)
    top_counts = {t: np.count_nonzero(flat > t, axis=1) for t in tops}
    bottom_stats = {}
    for b in bottoms:
        m = flat > b
        bottom_stats[b] = (np.count_nonzero(m & tflat, axis=1), np.count_nonzero(m, axis=1))
    rows = []
    for top, area, bottom in itertools.product(tops, areas, bottoms):
        positive = top_counts[top] >= area
        inter, pred_area = bottom_stats[bottom]
        dice = dice_from_counts(np.where(positive, inter, 0), np.where(positive, pred_area, 0), true_area)
        rows.append(
            _row(dice, true_area, threshold=bottom, min_area=area, top_threshold=top, bottom_threshold=bottom)
        )
    return rows


def _row(dice: np.ndarray, true_area: np.ndarray, **params: Any) -> dict[str, Any]:
    pos = true_area > 0
    row = {"threshold": None, "min_area": 0, "top_threshold": None, "bottom_threshold": None, **params}
    row["mode"] = "plain" if row["top_threshold"] is None else "triplet"
    row["dice_kaggle"] = float(dice.mean())
    row["dice_positive"] = float(dice[pos].mean()) if pos.any() else math.nan
    return row


def grid_search(
    probs: Any,
    truths: Any,
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
) -> tuple[PostProcess, pd.DataFrame]:
    """Score every rule of ``grid`` on (N, H, W) probabilities against bool (N, H, W) truths.

    ``grid`` is one mapping or a list of mappings, each either plain
    ``{"threshold": [...], "min_area": [...]}`` or triplet
    ``{"top_threshold": [...], "min_area": [...], "bottom_threshold": [...]}``; None uses
    ``default_grid(W)``. Returns the best ``PostProcess`` and a DataFrame with one row per
    rule (columns mode, threshold, min_area, top_threshold, bottom_threshold, dice_kaggle,
    dice_positive) sorted by dice_kaggle, best first (ties keep grid order).
    """
    p = np.asarray(probs, dtype=np.float32)
    t = np.asarray(truths) != 0
    if p.ndim == 4 and p.shape[1] == 1:
        p, t = p[:, 0], t.reshape(p.shape)[:, 0]
    if p.ndim != 3 or p.shape != t.shape or len(p) == 0:
        raise ValueError(
            f"grid_search: expected equal non-empty (N, H, W) probs and truths, got {p.shape}, {t.shape}"
        )
    grids = default_grid(p.shape[-1]) if grid is None else [grid] if isinstance(grid, Mapping) else list(grid)
    rows: list[dict[str, Any]] = []
    for g in grids:
        keys = set(g)
        areas = [int(a) for a in g.get("min_area", [0])]
        if "top_threshold" in keys:
            if not keys <= {"top_threshold", "min_area", "bottom_threshold"}:
                raise ConfigError(f"triplet grid has unknown keys {sorted(keys)}")
            bottoms = list(g.get("bottom_threshold", g.get("threshold", [0.5])))
            rows += _triplet_rows(p, t, list(g["top_threshold"]), areas, bottoms)
        elif keys <= {"threshold", "min_area"}:
            rows += _plain_rows(p, t, list(g.get("threshold", [0.5])), areas)
        else:
            raise ConfigError(
                f"grid keys {sorted(keys)} unknown: use threshold/min_area or top_threshold/min_area/bottom_threshold"
            )
    if not rows:
        raise ConfigError("grid_search: the grid is empty")
    table = pd.DataFrame(rows)
    table = table.sort_values("dice_kaggle", ascending=False, kind="stable").reset_index(drop=True)
    best = table.iloc[0]
    pp = PostProcess(
        threshold=float(best["threshold"]),
        min_area=int(best["min_area"]),
        top_threshold=None if pd.isna(best["top_threshold"]) else float(best["top_threshold"]),
        bottom_threshold=None if pd.isna(best["bottom_threshold"]) else float(best["bottom_threshold"]),
    )
    return pp, table
