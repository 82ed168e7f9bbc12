"""The search for a post-processing rule: grids of ``PostProcess`` rules and their scores.

``GridScorer`` scores every combination of a grid, one image at a time (native-resolution
probability maps of a whole split never sit in memory together), with the challenge metric
(``dice_kaggle``); ``grid_search`` is the same on arrays; ``default_grid`` is what ``pneumoseg tune``
searches. Areas are in pixels of the maps scored: the source resolution (``AREA_UNIT``).

``GridDice`` (``pneumoseg.scoring.streaming``) is the same search in torch, during training: every
validation epoch scores the triplet-family grid of ``validation_grid`` (the winner's way) on the
device with ``grid_counts``, in one pass over the batches, with no connected components. Its
areas are in pixels of the **training size** (``VALIDATION_AREA_UNIT``), not the source's: it
ranks checkpoints; ``pneumoseg tune`` then searches at the source resolution.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from pneumoseg.errors import ConfigError
from pneumoseg.scoring.metrics import dice_from_counts
from pneumoseg.scoring.postprocess import PostProcess, check_prob_map

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GridScorer",
    "GridSpec",
    "default_grid",
    "grid_counts",
    "grid_search",
    "validation_grid",
]


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


GridSpec = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]]


def _parse_grid(grid: GridSpec) -> list[dict[str, Any]]:
    """Every rule of the grid(s), in grid order, as ``PostProcess`` keyword dicts."""
    grids = [grid] if isinstance(grid, Mapping) else list(grid)
    rules: list[dict[str, Any]] = []
    for g in grids:
        keys = set(g)
        areas = [int(a) for a in g.get("min_area", [0])]
        if "top_threshold" in keys:
            if not keys <= {"top_threshold", "min_area", "bottom_threshold"}:
                raise ConfigError(f"triplet grid has unknown keys {sorted(keys)}")
            bottoms = [float(b) for b in g.get("bottom_threshold", [0.5])]
            rules += [{"threshold": b, "min_area": a, "top_threshold": float(t), "bottom_threshold": b}
                      for t, a, b in itertools.product(g["top_threshold"], areas, bottoms)]
        elif keys <= {"threshold", "min_area"}:
            rules += [{"threshold": float(t), "min_area": a, "top_threshold": None, "bottom_threshold": None}
                      for t in g.get("threshold", [0.5]) for a in areas]
        else:
            raise ConfigError(
                f"grid keys {sorted(keys)} unknown: use threshold/min_area or top_threshold/min_area/bottom_threshold"
            )
    if not rules:
        raise ConfigError("grid_search: the grid is empty")
    return rules


class GridScorer:
    """Scores every post-processing rule of a grid, one image at a time.

    ``add(prob, truth)`` takes one float (H, W) probability map in [0, 1] and its bool (H, W)
    truth at the resolution the rule will be applied at (the source's); only per-rule counts are
    kept (intersection, predicted area), so a split of native 1024 x 1024 maps streams through in
    constant memory. Components are labelled once per threshold (8-connectivity) and every
    ``min_area`` is scored from their statistics. ``result()`` ranks rules by ``dice_kaggle``
    (per-image Dice, empty-vs-empty = 1; ties keep grid order).
    """

    def __init__(self, grid: GridSpec) -> None:
        self.rules = _parse_grid(grid)
        self._plain_thresholds = sorted({r["threshold"] for r in self.rules if r["top_threshold"] is None})
        self._tops = sorted({r["top_threshold"] for r in self.rules if r["top_threshold"] is not None})
        self._bottoms = sorted({r["bottom_threshold"] for r in self.rules if r["top_threshold"] is not None})
        self._inter: list[np.ndarray] = []
        self._pred: list[np.ndarray] = []
        self._true: list[int] = []

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        p = check_prob_map(prob)
        t = np.asarray(truth) != 0
        if t.shape != p.shape:
            raise ValueError(f"GridScorer.add: probability {p.shape} and truth {t.shape} differ in shape")
        components = {}
        for thr in self._plain_thresholds:
            mask = p > thr
            if not mask.any():
                components[thr] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
                continue
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
            inter = np.bincount(labels[t], minlength=n)
            components[thr] = (stats[1:, cv2.CC_STAT_AREA].astype(np.int64), inter[1:].astype(np.int64))
        top_counts = {top: int(np.count_nonzero(p > top)) for top in self._tops}
        bottoms = {}
        for b in self._bottoms:
            m = p > b
            bottoms[b] = (int(np.count_nonzero(m & t)), int(np.count_nonzero(m)))
        inter_v = np.zeros(len(self.rules), np.int64)
        pred_v = np.zeros(len(self.rules), np.int64)
        for k, r in enumerate(self.rules):
            if r["top_threshold"] is None:
                areas, inters = components[r["threshold"]]
                keep = areas >= r["min_area"]
                inter_v[k], pred_v[k] = inters[keep].sum(), areas[keep].sum()
            elif top_counts[r["top_threshold"]] >= r["min_area"]:
                inter_v[k], pred_v[k] = bottoms[r["bottom_threshold"]]
        self._inter.append(inter_v)
        self._pred.append(pred_v)
        self._true.append(int(t.sum()))

    def __len__(self) -> int:
        return len(self._true)

    def result(self) -> tuple[PostProcess, pd.DataFrame]:
        """The best rule and a table (mode, threshold, min_area, top_threshold, bottom_threshold,
        dice_kaggle, dice_positive; ``min_area`` in source pixels), best first."""
        import pandas as pd  # imported when a grid is scored, not by every user of the rule

        if not self._true:
            raise ValueError("GridScorer: no image added")
        inter, pred = np.stack(self._inter, 1), np.stack(self._pred, 1)  # (R, N)
        true = np.asarray(self._true)
        pos = true > 0
        rows = []
        for k, r in enumerate(self.rules):
            dice = dice_from_counts(inter[k], pred[k], true)
            rows.append({**r, "mode": "plain" if r["top_threshold"] is None else "triplet",
                         "dice_kaggle": float(dice.mean()),
                         "dice_positive": float(dice[pos].mean()) if pos.any() else math.nan})
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


def grid_search(probs: Any, truths: Any, grid: GridSpec | None = None) -> tuple[PostProcess, pd.DataFrame]:
    """``GridScorer`` over (N, H, W) probabilities and bool (N, H, W) truths; None = ``default_grid(W)``."""
    p = np.asarray(probs, dtype=np.float32)
    t = np.asarray(truths) != 0
    if p.ndim == 4 and p.shape[1] == 1:
        p, t = p[:, 0], t.reshape(p.shape)[:, 0]
    if p.ndim != 3 or p.shape != t.shape or len(p) == 0:
        raise ValueError(
            f"grid_search: expected equal non-empty (N, H, W) probs and truths, got {p.shape}, {t.shape}"
        )
    scorer = GridScorer(default_grid(p.shape[-1]) if grid is None else grid)
    for prob, truth in zip(p, t, strict=True):
        scorer.add(prob, truth)
    return scorer.result()


def validation_grid(size: int) -> list[dict[str, Any]]:
    """The rules ``GridDice`` scores each validation epoch, for (size x size) probability maps.

    The triplet family of ``PostProcess`` (top threshold, min area, bottom threshold with top >=
    bottom); ``min_area = 0`` and ``top == bottom`` is the plain threshold, so the untuned default
    (0.5, 0) is in it. Areas: the winner's pixel counts at 1024 px scaled by (size / 1024)^2.
    Ordered loosest first, so ties keep the simpler rule.
    """
    scale = (size / 1024) ** 2
    areas = sorted({round(a * scale) for a in (0, 500, 1000, 2000, 3000, 4000)})
    rules = [{"threshold": b, "min_area": a, "top_threshold": t, "bottom_threshold": b}
             for a in areas for b in (0.3, 0.4, 0.5) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9) if t >= b]
    # the plain rules (area 0, top == bottom) first: equal scores keep them
    return sorted(rules, key=lambda r: (r["min_area"] > 0 or r["top_threshold"] != r["bottom_threshold"]))


def grid_counts(probs: torch.Tensor, truth: torch.Tensor,
                rules: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The triplet rule (see the module docstring) of every rule at once, in torch, on the device.

    ``probs`` float (N, 1, H, W) or (N, H, W) in [0, 1]; ``truth`` the same shape, nonzero =
    positive; ``rules`` dicts with ``top_threshold``, ``min_area`` (pixels of these maps) and
    ``bottom_threshold``. Returns ``(inter, pred_area, true_area)``: int64 (R, N), (R, N), (N,).
    """
    p = probs.detach().float().reshape(probs.shape[0], -1)
    t = (truth != 0).reshape(p.shape)
    tops = sorted({float(r["top_threshold"]) for r in rules})
    bottoms = sorted({float(r["bottom_threshold"]) for r in rules})
    top_t = torch.tensor(tops, device=p.device).view(-1, 1, 1)
    bottom_t = torch.tensor(bottoms, device=p.device).view(-1, 1, 1)
    n_top = (p[None] > top_t).sum(-1)  # (T, N)
    above = p[None] > bottom_t  # (B, N, HW)
    inter_b, pred_b = (above & t[None]).sum(-1), above.sum(-1)  # (B, N)
    ti = torch.tensor([tops.index(float(r["top_threshold"])) for r in rules], device=p.device)
    bi = torch.tensor([bottoms.index(float(r["bottom_threshold"])) for r in rules], device=p.device)
    area = torch.tensor([int(r["min_area"]) for r in rules], device=p.device).view(-1, 1)
    keep = n_top[ti] >= area  # (R, N)
    return inter_b[bi] * keep, pred_b[bi] * keep, t.sum(-1)
