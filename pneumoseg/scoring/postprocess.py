"""Post-processing: the only place where probabilities become masks.

``PostProcess`` maps a probability map (H, W) float in [0, 1] to a bool mask (H, W) by one
of two rules:

* plain (``top_threshold`` is None): ``mask = prob > threshold``, then connected components
  (8-connectivity) with fewer than ``min_area`` pixels are removed;
* triplet (``top_threshold`` set; the winning solution's rule): the image is positive only if
  at least ``min_area`` pixels have ``prob > top_threshold``; a positive image's mask is
  ``prob > bottom_threshold`` (``threshold`` when ``bottom_threshold`` is None), any other
  image's mask is empty.

``min_area`` is in pixels of the probability map it is applied to. Every caller applies it at
the **source image's resolution** (``pneumoseg.inference.predictor.Predictor`` upsamples probabilities
before thresholding), so stored rules say ``"area_unit": "source_px"`` (``AREA_UNIT``). The rules
scored every validation epoch (``pneumoseg.scoring.grid.validation_grid``) count areas in pixels of
the **training size** (``VALIDATION_AREA_UNIT``) instead: they rank checkpoints; ``pneumoseg tune``
then searches at the source resolution.

The search for a rule lives in ``pneumoseg.scoring.grid`` (``GridScorer``, ``grid_search``, and the
torch form of the triplet rule, ``grid_counts``); the rules tuned for a run's weights are stored in
and read from its run folder by ``pneumoseg.scoring.tuned``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from pneumoseg.errors import ConfigError
from pneumoseg.util.atomic import atomic_write_text

__all__ = [
    "AREA_UNIT",
    "VALIDATION_AREA_UNIT",
    "PostProcess",
    "remove_small_components",
]

AREA_UNIT = "source_px"  #: ``min_area`` counts pixels at the source image's resolution


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components of a bool (H, W) mask with fewer than ``min_area`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_area <= 1 or not mask.any():
        return mask.copy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def check_prob_map(prob: Any) -> np.ndarray:
    """``prob`` as an array; ValueError unless it is one (H, W) map (the rule and the grid take one image)."""
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
        p = check_prob_map(prob)
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
        """The rule as JSON-able values, with ``area_unit`` (always ``"source_px"``)."""
        return {**asdict(self), "area_unit": AREA_UNIT}

    def describe(self) -> str:
        """The rule in words, e.g. ``prob > 0.5, components < 2000 source px removed``."""
        if self.top_threshold is None:
            text = f"prob > {self.threshold:g}"
            return text + (f", components under {self.min_area} source px removed" if self.min_area else "")
        return (f"positive when >= {self.min_area} source px have prob > {self.top_threshold:g}; "
                f"mask prob > {self.mask_threshold:g}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostProcess:
        """Build from ``to_dict`` output; unknown keys or another ``area_unit`` raise ConfigError."""
        values = dict(data)
        unit = values.pop("area_unit", AREA_UNIT)
        if unit != AREA_UNIT:
            raise ConfigError(f"PostProcess: area_unit {unit!r} unknown (valid: {AREA_UNIT})")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"PostProcess: unknown keys {unknown}; valid: {', '.join(valid)}, area_unit")
        return cls(**values)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PostProcess:
        data = read_rule_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def read_rule_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a post-processing file (``postprocess.json``, a tuned rule); ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read post-processing file {os.fspath(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"post-processing file {os.fspath(path)!r} holds no JSON object")
    return data


VALIDATION_AREA_UNIT = "train_px"  #: ``GridDice``'s ``min_area``: pixels at the training size
