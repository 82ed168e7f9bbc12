"""Bootstrap confidence intervals and paired tests for per-image metrics.

What is resampled. The unit is the **image**: a bootstrap sample draws, with replacement, as
many images as there are, **within each stratum separately** (by default the strata are
"pneumothorax" / "empty": ``has_truth``), so every resample keeps the split's exact numbers of
positive and empty images. A resample is represented by its **counts** (B, N): how often each
image was drawn; every statistic here is a count-weighted statistic of per-image arrays, and
the point estimate is the same statistic with all counts 1. The counts come from index
matrices drawn with ``rng.integers`` and ``np.bincount``, ``chunk`` resamples at a time.

The CI method is the **percentile** bootstrap: the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles (numpy's linear interpolation) of the resampled statistic. Resamples where the
statistic is undefined (NaN) are left out of the quantiles.

Paired comparisons (:func:`paired_bootstrap`, or :func:`bootstrap_distributions` for many
statistics and runs at once, then :meth:`Distribution.paired`) apply the **same** resampled
images to both runs and take quantiles of the difference ``stat(b) - stat(a)``; its two-sided
p-value is
``min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))`` (the smallest
level at which the percentile interval excludes 0, with the usual +1 so it is never 0). When
every per-image value agrees, every difference is 0, the interval is [0, 0] and p = 1.
:func:`wilcoxon_p` is the signed-rank test on per-image differences (scipy; p = 1 when all
differences are 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "CI",
    "METRIC_NAMES",
    "Distribution",
    "PairedResult",
    "PerImage",
    "bootstrap_ci",
    "bootstrap_counts",
    "bootstrap_distributions",
    "metric_statistic",
    "paired_bootstrap",
    "predict_nothing_dice",
    "weighted_auc",
    "wilcoxon_p",
]

#: Metrics with a bootstrap statistic (the per-image ones of ``pneumoseg.scoring.metrics.summarize``).
METRIC_NAMES = ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity", "fpr_empty")

#: A statistic: counts (B, N) float64 -> values (B,) float64 (NaN where undefined).
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CI:
    """A point estimate with its percentile bootstrap interval (``low``, ``high``) at ``level``."""

    value: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedResult:
    """``diff`` = statistic(b) - statistic(a) with its CI and two-sided paired bootstrap p-value."""

    diff: CI
    p_value: float


@dataclass(frozen=True)
class PerImage:
    """The per-image arrays the metrics are computed from, each (N,).

    ``dice``: float per-image Dice (empty/empty = 1); ``has_truth``: bool truth not empty;
    ``pred_positive``: bool prediction not empty; ``score``: float image-level score for the AUC
    (higher = more likely positive).
    """

    dice: np.ndarray
    has_truth: np.ndarray
    pred_positive: np.ndarray
    score: np.ndarray

    @classmethod
    def from_arrays(cls, dice: Any, has_truth: Any, pred_positive: Any, score: Any | None = None) -> PerImage:
        d = np.asarray(dice, dtype=np.float64).reshape(-1)
        t = np.asarray(has_truth).reshape(-1).astype(bool)
        p = np.asarray(pred_positive).reshape(-1).astype(bool)
        s = p.astype(np.float64) if score is None else np.asarray(score, dtype=np.float64).reshape(-1)
        if not (d.shape == t.shape == p.shape == s.shape):
            raise ValueError(f"per-image arrays differ in length: dice {d.shape}, has_truth {t.shape}, "
                             f"pred_positive {p.shape}, score {s.shape}")
        return cls(d, t, p, s)

    def __len__(self) -> int:
        return int(self.dice.size)


def _strata_groups(strata: Any | None, n: int) -> list[np.ndarray]:
    """Index arrays of the images of each stratum (one group of all images when ``strata`` is None)."""
    if strata is None:
        return [np.arange(n)] if n else []
    labels = np.asarray(strata).reshape(-1)
    if labels.size != n:
        raise ValueError(f"strata has {labels.size} labels for {n} images")
    _, inverse = np.unique(labels, return_inverse=True)
    return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)] if n else []


def bootstrap_counts(n: int, strata: Any | None = None, n_boot: int = 2000, seed: int = 0,
                     chunk: int = 500) -> Iterator[np.ndarray]:
    """Yield resample counts, float64 (b, n) chunks adding up to ``n_boot`` rows.

    Row r of a chunk counts how often each image is drawn when every stratum's images are drawn
    with replacement as many times as the stratum has images (each row sums to ``n``). The same
    ``(n, strata, n_boot, seed, chunk)`` always gives the same rows (``chunk`` changes the draws).
    """
    rng = np.random.default_rng(seed)
    groups = _strata_groups(strata, n)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = np.concatenate([g[rng.integers(0, g.size, size=(b, g.size))] for g in groups], axis=1) \
            if groups else np.zeros((b, 0), np.int64)
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _percentile_ci(point: float, boot: np.ndarray, level: float) -> CI:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = boot[~np.isnan(boot)]
    if math.isnan(point) or not finite.size:
        return CI(math.nan, math.nan, math.nan, level, int(boot.size))
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(point), float(low), float(high), level, int(boot.size))


@dataclass(frozen=True)
class Distribution:
    """A statistic on the data (``point``) and on each bootstrap resample (``boot``, (B,) float64)."""

    point: float
    boot: np.ndarray

    def ci(self, level: float = 0.95) -> CI:
        """The percentile interval at ``level``."""
        return _percentile_ci(self.point, self.boot, level)

    def paired(self, reference: Distribution, level: float = 0.95) -> PairedResult:
        """``self - reference`` on the same resamples: difference, CI and two-sided bootstrap p-value."""
        if self.boot.shape != reference.boot.shape:
            raise ValueError(f"paired distributions differ in resamples: {self.boot.shape} vs {reference.boot.shape}")
        point, boot = self.point - reference.point, self.boot - reference.boot
        ci = _percentile_ci(point, boot, level)
        finite = boot[~np.isnan(boot)]
        if not finite.size or math.isnan(point):
            return PairedResult(ci, math.nan)
        tail = min(np.count_nonzero(finite <= 0), np.count_nonzero(finite >= 0))
        p = min(1.0, 2.0 * (1 + tail) / (finite.size + 1))  # all differences 0: tail = B, p = 1
        return PairedResult(ci, float(p))


K = TypeVar("K", bound=Hashable)


def bootstrap_distributions(statistics: Mapping[K, Statistic], n: int, strata: Any | None = None,
                            n_boot: int = 2000, seed: int = 0) -> dict[K, Distribution]:
    """Every statistic of N images on the **same** resamples (one set of counts for all of them).

    Distributions of two runs' statistics from one call are paired (see
    :meth:`Distribution.paired`). ``n`` = 0 gives NaN points and no resamples.
    """
    if n == 0:
        return {k: Distribution(math.nan, np.zeros(0)) for k in statistics}
    ones = np.ones((1, n))
    points = {k: float(f(ones)[0]) for k, f in statistics.items()}
    parts: dict[K, list[np.ndarray]] = {k: [] for k in statistics}
    for counts in bootstrap_counts(n, strata, n_boot, seed):
        for k, f in statistics.items():
            parts[k].append(f(counts))
    return {k: Distribution(points[k], np.concatenate(parts[k])) for k in statistics}


def _as_statistic(values_or_callable: Any) -> tuple[Statistic, int | None]:
    """A statistic and (for plain values) the number of images: values -> their weighted mean."""
    if callable(values_or_callable):
        return values_or_callable, None
    values = np.asarray(values_or_callable, dtype=np.float64).reshape(-1)

    def mean(counts: np.ndarray) -> np.ndarray:
        return counts @ values / counts.sum(1)

    return mean, values.size


def bootstrap_ci(values_or_callable: Any, strata: Any | None = None, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95, n: int | None = None) -> CI:
    """Percentile bootstrap CI of a statistic of N images (see the module docstring).

    ``values_or_callable``: per-image values (N,) (the statistic is their mean), or a
    :data:`Statistic` (counts (B, N) -> (B,)), e.g. ``metric_statistic("dice_positive", per)``;
    a callable needs ``n`` or ``strata``. ``strata`` (N,): labels to resample within (e.g.
    ``has_truth``); None resamples all images together.
    """
    stat, size = _as_statistic(values_or_callable)
    if size is None:
        size = n if n is not None else (np.asarray(strata).size if strata is not None else None)
        if size is None:
            raise ValueError("bootstrap_ci with a callable statistic needs n= or strata=")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return bootstrap_distributions({0: stat}, size, strata, n_boot, seed)[0].ci(level)


def paired_bootstrap(a: Any, b: Any, strata: Any | None = None,
                     statistic: Callable[[Any], Statistic] | None = None, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedResult:
    """Paired bootstrap of ``statistic(b) - statistic(a)`` over the same resampled images.

    ``a``, ``b``: the two runs' per-image data for the same images in the same order, either
    value arrays (N,) (statistic: the mean) or sized objects that ``statistic`` turns into a
    :data:`Statistic` (e.g. :class:`PerImage` with ``lambda p: metric_statistic("image_auc", p)``).
    """
    if statistic is None:
        sa, na = _as_statistic(a)
        sb, nb = _as_statistic(b)
    else:
        sa, sb, na, nb = statistic(a), statistic(b), len(a), len(b)
    if na != nb:
        raise ValueError(f"paired runs differ in number of images: {na} vs {nb}")
    dist = bootstrap_distributions({"a": sa, "b": sb}, int(na or 0), strata, n_boot, seed)
    if not na:
        return PairedResult(CI(math.nan, math.nan, math.nan, level, 0), math.nan)
    return dist["b"].paired(dist["a"], level)


def wilcoxon_p(a: Any, b: Any) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired per-image values (scipy, zero_method "wilcox").

    Zero differences are dropped (scipy's default); p = 1 when every difference is 0 and NaN
    for no images.
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in length: {x.shape} vs {y.shape}")
    if not x.size:
        return math.nan
    if np.all(x == y):
        return 1.0
    return float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)


def weighted_auc(score: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` (N,) for labels ``positive`` (N,) bool, per row of ``counts`` (B, N).

    Row r is the AUC of the sample where image i appears ``counts[r, i]`` times (ties count
    1/2, as sklearn's ``roc_auc_score``); NaN where a row has no positive or no negative.
    Each positive scores the (count-weighted) negatives below it plus half those tied with it,
    read off one cumulative sum of the negatives' counts in score order: O(B * N).
    """
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    neg_idx = np.flatnonzero(~pos)
    neg_idx = neg_idx[np.argsort(s[neg_idx], kind="stable")]
    pos_idx = np.flatnonzero(pos)
    lo = np.searchsorted(s[neg_idx], s[pos_idx], side="left")
    hi = np.searchsorted(s[neg_idx], s[pos_idx], side="right")
    cum = np.zeros((counts.shape[0], neg_idx.size + 1))
    np.cumsum(counts[:, neg_idx], axis=1, out=cum[:, 1:])
    cp = counts[:, pos_idx]
    wins = (cp * (cum[:, lo] + cum[:, hi])).sum(1) / 2  # below + tied / 2 = (cum[lo] + cum[hi]) / 2
    n_pos, n_neg = cp.sum(1), cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def metric_statistic(name: str, per: PerImage) -> Statistic:
    """The count-weighted statistic of metric ``name`` (one of :data:`METRIC_NAMES`).

    With all counts 1 each equals ``pneumoseg.scoring.metrics.summarize`` on the same images:
    ``dice_kaggle`` mean Dice; ``dice_positive`` mean Dice over ``has_truth``; ``image_auc`` AUC
    of ``score``; ``sensitivity`` / ``specificity`` / ``fpr_empty`` image-level rates.
    """
    t, p = per.has_truth.astype(np.float64), per.pred_positive.astype(np.float64)
    stats: dict[str, Statistic] = {
        "dice_kaggle": lambda c: _ratio(c @ per.dice, c.sum(1)),
        "dice_positive": lambda c: _ratio(c @ (per.dice * t), c @ t),
        "image_auc": lambda c: weighted_auc(per.score, per.has_truth, c),
        "sensitivity": lambda c: _ratio(c @ (t * p), c @ t),
        "specificity": lambda c: _ratio(c @ ((1 - t) * (1 - p)), c @ (1 - t)),
        "fpr_empty": lambda c: _ratio(c @ ((1 - t) * p), c @ (1 - t)),
    }
    if name not in stats:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    return stats[name]


def predict_nothing_dice(has_truth: Sequence[bool] | np.ndarray) -> float:
    """``dice_kaggle`` of an empty prediction on every image: the share of empty images (NaN for none).

    Empty truth + empty prediction scores 1, a pneumothorax with an empty prediction 0, so this
    is the floor a model must beat before its ``dice_kaggle`` says anything.
    """
    t = np.asarray(has_truth).reshape(-1).astype(bool)
    return float((~t).mean()) if t.size else math.nan
