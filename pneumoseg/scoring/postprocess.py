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
before thresholding), so stored rules say ``"area_unit": "source_px"``.

``GridDice`` is the same search in torch, during training: every validation epoch scores the
triplet-family grid of ``validation_grid`` (the winner's way) on the device, in one pass over the
batches, with no connected components. Its areas are in pixels of the **training size**
(``VALIDATION_AREA_UNIT``), not the source's: it ranks checkpoints; ``pneumoseg tune`` then searches
at the source resolution.

``GridScorer`` scores every combination of a grid, one image at a time (native-resolution
probability maps of a whole split never sit in memory together), with the challenge metric
(``dice_kaggle``); ``grid_search`` is the same on arrays. ``TunedRule`` records which weights
(SHA-256 of each checkpoint) and TTA setting a rule was tuned for, so ``predict`` uses a rule only
for the ensemble it was tuned on, wherever its run folders are copied or moved.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.digest import file_sha256
from pneumoseg.errors import ConfigError
from pneumoseg.scoring.metrics import dice_from_counts

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AREA_UNIT",
    "TUNED_NAME",
    "TUNE_ENSEMBLES",
    "TUNE_TABLE",
    "VALIDATION_AREA_UNIT",
    "GridScorer",
    "PostProcess",
    "TunedRule",
    "checkpoint_digests",
    "default_grid",
    "find_tuned",
    "grid_counts",
    "grid_search",
    "remove_small_components",
    "save_tuned",
    "validation_grid",
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
        data = _read_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read post-processing file {os.fspath(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"post-processing file {os.fspath(path)!r} holds no JSON object")
    return data


TUNED_NAME = "postprocess.json"  #: where ``pneumoseg tune`` stores its rules in each run folder


@dataclass(frozen=True)
class TunedRule:
    """A rule found by ``pneumoseg tune`` and what it was tuned for.

    The key is the content: ``weights``, the SHA-256 of each member's weight file (sorted; one
    entry per member, so a run folder copied or moved anywhere keeps its rule), and ``tta``.
    ``predict`` uses the rule only for the same weights and TTA. ``runs`` (the folders as tuned,
    resolved) and ``checkpoint`` (its name there) are for people. ``split``: ``val`` etc., or
    ``oof`` (each fold's model on its own validation fold, pooled). ``dice_kaggle`` of the rule and
    ``default_dice_kaggle`` of the untuned default on the same images. ``table``: the file, in each
    run folder, with every rule scored (``tune.csv`` for one run, ``tune-ensembles/<id>.csv`` for
    an ensemble, so an ensemble's sweep never replaces a run's own). Records written before
    content keys (no ``weights``) still match by their resolved run paths, checkpoint and TTA.
    """

    rule: PostProcess
    runs: tuple[str, ...]
    checkpoint: str
    tta: bool
    split: str
    n_images: int
    dice_kaggle: float
    default_dice_kaggle: float
    weights: tuple[str, ...] = ()
    table: str = ""

    @staticmethod
    def content_key(weights: Sequence[str], tta: bool) -> tuple[Any, ...]:
        """The key of an ensemble: its members' weight digests (sorted) and TTA."""
        return ("sha256", tuple(sorted(weights)), bool(tta))

    @staticmethod
    def key_of(runs: Sequence[str | os.PathLike[str]], checkpoint: str, tta: bool) -> tuple[Any, ...]:
        """The key of a record without ``weights`` (written before content keys): resolved, sorted
        run folders (``key_of(...)[0]``, what ``runs`` holds), checkpoint name and TTA."""
        return (tuple(sorted(str(Path(r).resolve()) for r in runs)), checkpoint, bool(tta))

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.content_key(self.weights, self.tta) if self.weights
                else (self.runs, self.checkpoint, self.tta))

    @property
    def ensemble(self) -> bool:
        return len(self.weights or self.runs) > 1

    def table_name(self) -> str:
        """``tune.csv`` for one run, else ``tune-ensembles/<16 hex of the key>.csv``."""
        if not self.ensemble:
            return TUNE_TABLE
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        return f"{TUNE_ENSEMBLES}/{digest}.csv"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "weights": list(self.weights), "tta": self.tta, "runs": list(self.runs),
                "checkpoint": self.checkpoint, "split": self.split, "n_images": self.n_images,
                "dice_kaggle": self.dice_kaggle, "default_dice_kaggle": self.default_dice_kaggle,
                "table": self.table}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TunedRule:
        try:
            return cls(PostProcess.from_dict(data["rule"]), tuple(data["runs"]), str(data["checkpoint"]),
                       bool(data["tta"]), str(data["split"]), int(data["n_images"]), float(data["dice_kaggle"]),
                       float(data["default_dice_kaggle"]), tuple(str(w) for w in data.get("weights", ())),
                       str(data.get("table", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tuned rule record is malformed ({exc})") from None


TUNE_TABLE = "tune.csv"  #: every rule scored by a single run's tuning (the report's threshold sweep)
TUNE_ENSEMBLES = "tune-ensembles"  #: ensembles' tables, one per key: never a member's own tune.csv


def _read_tuned(run_dir: str | os.PathLike[str]) -> list[TunedRule]:
    """The records of ``RUN/postprocess.json``; [] when absent or written by an older pneumoseg.

    Older files (a bare rule, tuned at the model's size: areas in model pixels) are ignored: their
    ``min_area`` means something else now, so using them would be wrong.
    """
    path = Path(run_dir) / TUNED_NAME
    if not path.is_file():
        return []
    data = _read_json(path)
    if "tuned" not in data:
        return []
    try:
        return [TunedRule.from_dict(d) for d in data["tuned"]]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def checkpoint_digests(runs: Sequence[str | os.PathLike[str]], checkpoint: str) -> list[str]:
    """Hex SHA-256 of each run's weights, in order: ``checkpoint`` itself when it is a ``.ckpt``
    file, else ``RUN/checkpoints/<checkpoint>.ckpt``; [] when a run has no such file."""
    files = [Path(checkpoint) if checkpoint.endswith(".ckpt") and Path(checkpoint).is_file()
             else Path(r) / "checkpoints" / f"{checkpoint}.ckpt" for r in runs]
    try:
        return [file_sha256(f) for f in files]
    except OSError:
        return []


def save_tuned(record: TunedRule, run_dirs: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Store ``record`` in ``postprocess.json`` of every run folder (default ``record.runs``),
    replacing one with the same key (and a path-keyed one of the same runs, checkpoint and TTA)."""
    written = []
    legacy = (record.runs, record.checkpoint, record.tta)
    for run in record.runs if run_dirs is None else run_dirs:
        kept = [r for r in _read_tuned(run) if r.key not in (record.key, legacy)]
        path = Path(run) / TUNED_NAME
        payload = {"tuned": [r.to_dict() for r in (*kept, record)]}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        written.append(path)
    return written


def find_tuned(runs: Sequence[str | os.PathLike[str]], checkpoint: str, tta: bool,
               weights: Sequence[str] | None = None) -> TunedRule | None:
    """The rule tuned for exactly these weights and TTA setting, or None.

    ``weights``: the SHA-256 of each member's weight file (default: ``checkpoint_digests(runs,
    checkpoint)``). Looked up in the first run folder's ``postprocess.json``, wherever the folder
    lies now. A record from before content keys matches when it names these runs (resolved),
    ``checkpoint`` and ``tta``.
    """
    if not runs:
        return None
    digests = checkpoint_digests(runs, checkpoint) if weights is None else list(weights)
    keys = [TunedRule.key_of(runs, checkpoint, tta)]
    if digests:
        keys.append(TunedRule.content_key(digests, tta))
    return next((r for r in reversed(_read_tuned(runs[0])) if r.key in keys), None)


def legacy_rule_present(run_dir: str | os.PathLike[str]) -> bool:
    """True when ``RUN/postprocess.json`` is an older single rule (model-size areas), now ignored."""
    path = Path(run_dir) / TUNED_NAME
    return path.is_file() and "tuned" not in _read_json(path)


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
        p = _check_prob(prob)
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


VALIDATION_AREA_UNIT = "train_px"  #: ``GridDice``'s ``min_area``: pixels at the training size


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
