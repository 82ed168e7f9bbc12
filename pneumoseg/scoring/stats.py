"""Bootstrap confidence intervals and paired tests for per-image metrics.

One job, hence its size: the statistics behind every CI and paired difference pneumoseg reports.

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

Small samples. A percentile bootstrap of a handful of images is not an interval: on 12 images
whose Dice is constant within each stratum, every stratified resample gives the same value
("0.3333 [0.3333, 0.3333]"), and a paired bootstrap whose every resample favours one run gives
p = 2 / (B + 1) ("< 0.001") where an exact test on the same 5 differing images gives 0.0625. So:

* no interval ("n too small", :func:`interval_note`) for a set of fewer than ``MIN_IMAGES`` (20)
  images, or a metric whose own images (positives for dice_positive / sensitivity, empty images
  for specificity / fpr_empty, the smaller class for image_auc: :func:`metric_note`) number fewer
  than ``MIN_SUBSET`` (5); the point estimate is still given;
* paired p-values are **exact** (:func:`exact_paired_p`) when at most ``MAX_EXACT`` (16) images
  differ between the runs in what the metric reads: the paired permutation test, enumerating all
  2**k swaps of the two runs' results on the k differing images (p = the share of swaps whose
  absolute difference is at least the observed one; never below 2 / 2**k). Beyond that the
  bootstrap p-value resolves what matters (its floor 2 / (B + 1) is above the exact test's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from pneumoseg.data.split import MIN_IMAGES

__all__ = [
    "CI",
    "MAX_EXACT",
    "METRIC_NAMES",
    "MIN_IMAGES",
    "MIN_SUBSET",
    "Distribution",
    "PairedResult",
    "PerImage",
    "bootstrap_ci",
    "bootstrap_counts",
    "bootstrap_distributions",
    "exact_paired_p",
    "interval_note",
    "metric_note",
    "metric_statistic",
    "paired_bootstrap",
    "predict_nothing_dice",
    "weighted_auc",
    "wilcoxon_p",
]

#: Metrics with a bootstrap statistic (the per-image ones of ``pneumoseg.scoring.metrics.summarize``).
METRIC_NAMES = ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity", "fpr_empty")

#: Fewer images than this behind a metric (positives, empty images, the smaller class): no interval.
MIN_SUBSET = 5
#: Paired p-values are exact (all 2**k swaps) when at most this many images differ between the runs.
MAX_EXACT = 16

#: A statistic: counts (B, N) float64 -> values (B,) float64 (NaN where undefined).
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CI:
    """A point estimate with its percentile bootstrap interval (``low``, ``high``) at ``level``.

    ``note`` (e.g. "n too small: 12 images"): why there is no interval (``low`` and ``high`` NaN).
    """

    value: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0
    note: str = ""

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        if self.note:
            return f"{self.value:.4f} ({self.note})"
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedResult:
    """``diff`` = statistic(b) - statistic(a) with its CI and two-sided p-value.

    ``exact``: ``p_value`` is the exact paired permutation p (:func:`exact_paired_p`), not the
    paired bootstrap's.
    """

    diff: CI
    p_value: float
    exact: bool = False


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


def _percentile_ci(point: float, boot: np.ndarray, level: float, note: str = "") -> CI:
    """The percentile interval; with a ``note`` only the point (no interval: the note says why)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = boot[~np.isnan(boot)]
    if math.isnan(point) or not finite.size:
        return CI(math.nan, math.nan, math.nan, level, int(boot.size))
    if note:
        return CI(float(point), math.nan, math.nan, level, int(boot.size), note)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(point), float(low), float(high), level, int(boot.size))


def interval_note(n_images: int, n_subset: int | None = None, subset: str = "images") -> str:
    """"n too small: ..." when ``n_images`` < ``MIN_IMAGES`` or ``n_subset`` < ``MIN_SUBSET``, else "".

    ``n_subset``: the images the statistic is computed over (``subset`` names them, e.g. "with
    pneumothorax"); 0 gives "" (the statistic is undefined: NaN, shown as n/a).
    """
    if 0 < n_images < MIN_IMAGES:
        return f"n too small: {n_images} image{'' if n_images == 1 else 's'}"
    if n_subset is not None and 0 < n_subset < MIN_SUBSET:
        return f"n too small: {n_subset} {subset}"
    return ""


def metric_note(name: str, per: PerImage) -> str:
    """:func:`interval_note` for metric ``name`` on ``per``: its own images are the positives
    (dice_positive, sensitivity), the empty images (specificity, fpr_empty), the smaller class
    (image_auc) or all images (dice_kaggle)."""
    pos = int(per.has_truth.sum())
    neg = len(per) - pos
    subset: dict[str, tuple[int | None, str]] = {
        "dice_kaggle": (None, ""), "dice_positive": (pos, "with pneumothorax"),
        "sensitivity": (pos, "with pneumothorax"), "specificity": (neg, "empty"), "fpr_empty": (neg, "empty"),
        "image_auc": (pos, "with pneumothorax") if pos <= neg else (neg, "empty")}
    if name not in subset:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    return interval_note(len(per), *subset[name])


@dataclass(frozen=True)
class Distribution:
    """A statistic on the data (``point``) and on each bootstrap resample (``boot``, (B,) float64)."""

    point: float
    boot: np.ndarray

    def ci(self, level: float = 0.95, note: str = "") -> CI:
        """The percentile interval at ``level``; only the point when ``note`` says why not (:func:`metric_note`)."""
        return _percentile_ci(self.point, self.boot, level, note)

    def paired(self, reference: Distribution, level: float = 0.95, note: str = "") -> PairedResult:
        """``self - reference`` on the same resamples: difference, CI (none with a ``note``) and two-sided
        bootstrap p-value."""
        if self.boot.shape != reference.boot.shape:
            raise ValueError(f"paired distributions differ in resamples: {self.boot.shape} vs {reference.boot.shape}")
        point, boot = self.point - reference.point, self.boot - reference.boot
        ci = _percentile_ci(point, boot, level, note)
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
                 level: float = 0.95, n: int | None = None, note: str | None = None) -> CI:
    """Percentile bootstrap CI of a statistic of N images (see the module docstring).

    ``values_or_callable``: per-image values (N,) (the statistic is their mean), or a
    :data:`Statistic` (counts (B, N) -> (B,)), e.g. ``metric_statistic("dice_positive", per)``;
    a callable needs ``n`` or ``strata``. ``strata`` (N,): labels to resample within (e.g.
    ``has_truth``); None resamples all images together. ``note``: why no interval is given
    (default: :func:`interval_note` of N, i.e. "n too small" below ``MIN_IMAGES``; "" forces one).
    """
    stat, size = _as_statistic(values_or_callable)
    if size is None:
        size = n if n is not None else (np.asarray(strata).size if strata is not None else None)
        if size is None:
            raise ValueError("bootstrap_ci with a callable statistic needs n= or strata=")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    note = interval_note(size) if note is None else note
    return bootstrap_distributions({0: stat}, size, strata, n_boot, seed)[0].ci(level, note)


def paired_bootstrap(a: Any, b: Any, strata: Any | None = None,
                     statistic: Callable[[Any], Statistic] | None = None, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedResult:
    """Paired bootstrap of ``statistic(b) - statistic(a)`` over the same resampled images.

    ``a``, ``b``: the two runs' per-image data for the same images in the same order, either
    value arrays (N,) (statistic: the mean) or sized objects that ``statistic`` turns into a
    :data:`Statistic` (e.g. :class:`PerImage` with ``lambda p: metric_statistic("image_auc", p)``).
    Fewer than ``MIN_IMAGES`` images: no interval ("n too small"). For value arrays whose
    differences are non-zero on at most ``MAX_EXACT`` images the p-value is the exact sign-flip
    (paired permutation) test's.
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
    result = dist["b"].paired(dist["a"], level, interval_note(int(na)))
    if statistic is None:
        exact = _sign_flip_p(np.asarray(b, dtype=np.float64).reshape(-1) - np.asarray(a, dtype=np.float64).reshape(-1))
        if exact is not None:
            return replace(result, p_value=exact, exact=True)
    return result


def _swaps(k: int) -> np.ndarray:
    """bool (2**k, k): every subset of k images (row r: the bits of r)."""
    return ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(bool)


def _sign_flip_p(delta: np.ndarray, max_images: int = MAX_EXACT) -> float | None:
    """Exact two-sided p of ``sum(delta)`` under random signs of the non-zero ``delta``; None above ``max_images``."""
    nz = delta[delta != 0]
    if nz.size > max_images:
        return None
    if not nz.size:
        return 1.0
    t = np.where(_swaps(nz.size), -nz, nz).sum(1)
    tol = 1e-9 * float(np.abs(nz).sum())
    return float(np.mean(np.abs(t) >= abs(float(nz.sum())) - tol))


def _auc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` (C, N) for labels ``positive`` (N,) (ties 1/2: mid-ranks)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positive].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def exact_paired_p(name: str, a: PerImage, b: PerImage, max_images: int = MAX_EXACT) -> float | None:
    """Exact two-sided paired permutation p-value of ``metric(b) - metric(a)``; None when too many images differ.

    Under "the runs are exchangeable" each image's pair of results may be swapped between the
    runs. The k images where what metric ``name`` reads differs (Dice for dice_kaggle /
    dice_positive, the predicted label for the rates, the score for image_auc; only positives or
    only empty images where the metric is restricted to them) are swapped in all 2**k ways; p is
    the share of swaps whose absolute difference is at least the observed one (1 when k = 0, NaN
    when the metric is undefined, None when k > ``max_images``). The dice and rate metrics are
    linear in per-image values, so this is the sign-flip test of their per-image differences.
    """
    if len(a) != len(b) or not np.array_equal(a.has_truth, b.has_truth):
        raise ValueError("exact_paired_p needs the same images with the same truth in both runs")
    t = a.has_truth
    if name == "image_auc":
        if t.all() or not t.any():
            return math.nan
        idx = np.flatnonzero(a.score != b.score)
        if idx.size > max_images:
            return None
        if not idx.size:
            return 1.0
        swap = _swaps(idx.size)
        diffs = []
        for start in range(0, len(swap), max(1, 2**22 // len(a))):  # bounded memory: rows x images
            s = swap[start:start + max(1, 2**22 // len(a))]
            sa = np.repeat(a.score[None], len(s), 0)
            sb = np.repeat(b.score[None], len(s), 0)
            sa[:, idx], sb[:, idx] = np.where(s, b.score[idx], a.score[idx]), np.where(s, a.score[idx], b.score[idx])
            diffs.append(_auc_rows(sb, t) - _auc_rows(sa, t))
        d = np.concatenate(diffs)  # row 0: no swap, the observed difference
        return float(np.mean(np.abs(d) >= abs(d[0]) - 1e-12))
    rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
        "dice_kaggle": (a.dice, b.dice, np.ones_like(t)), "dice_positive": (a.dice, b.dice, t),
        "sensitivity": (a.pred_positive, b.pred_positive, t), "specificity": (a.pred_positive, b.pred_positive, ~t),
        "fpr_empty": (a.pred_positive, b.pred_positive, ~t)}
    if name not in rows:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    va, vb, keep = rows[name]
    if not keep.any():
        return math.nan
    return _sign_flip_p(vb[keep].astype(np.float64) - va[keep].astype(np.float64), max_images)


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
