"""Bootstrap CIs and paired tests, checked against pneumoseg.scoring.metrics, sklearn and scipy."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from pneumoseg.scoring.metrics import dice_kaggle, summarize
from pneumoseg.scoring.stats import (
    METRIC_NAMES,
    PerImage,
    bootstrap_ci,
    bootstrap_counts,
    bootstrap_distributions,
    exact_paired_p,
    metric_note,
    metric_statistic,
    paired_bootstrap,
    predict_nothing_dice,
    weighted_auc,
    wilcoxon_p,
)


def _masks(rng: np.random.Generator, n: int = 40, size: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random truth/pred masks (n, size, size), ~1/3 of the truths empty, and image scores."""
    truth = rng.random((n, size, size)) < 0.3
    truth[rng.random(n) < 0.35] = False
    pred = truth ^ (rng.random((n, size, size)) < 0.1)
    pred[rng.random(n) < 0.3] = False
    scores = np.round(rng.random(n), 1)  # coarse: many ties
    return pred, truth, scores


def _per_image(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> PerImage:
    from pneumoseg.scoring.metrics import dice_per_image

    flat_t = truth.reshape(len(truth), -1).any(1)
    flat_p = pred.reshape(len(pred), -1).any(1)
    return PerImage.from_arrays(dice_per_image(pred, truth), flat_t, flat_p, scores)


def test_counts_keep_each_stratum_size_and_are_seeded() -> None:
    strata = np.array([0, 0, 1, 1, 1, 2, 0, 1])
    chunks = list(bootstrap_counts(8, strata, n_boot=1100, seed=5, chunk=500))
    assert [c.shape for c in chunks] == [(500, 8), (500, 8), (100, 8)]
    counts = np.concatenate(chunks)
    for label in (0, 1, 2):
        assert np.all(counts[:, strata == label].sum(1) == (strata == label).sum())
    again = np.concatenate(list(bootstrap_counts(8, strata, n_boot=1100, seed=5, chunk=500)))
    assert np.array_equal(counts, again)
    other = np.concatenate(list(bootstrap_counts(8, strata, n_boot=1100, seed=6, chunk=500)))
    assert not np.array_equal(counts, other)
    # Each image is drawn once per resample on average.
    assert counts.mean(0) == pytest.approx(np.ones(8), abs=0.1)


def test_point_estimates_equal_pneumoseg_metrics() -> None:
    rng = np.random.default_rng(0)
    pred, truth, scores = _masks(rng)
    per = _per_image(pred, truth, scores)
    expected = summarize(pred, truth, scores)
    ones = np.ones((1, len(per)))
    for name in METRIC_NAMES:
        assert metric_statistic(name, per)(ones)[0] == pytest.approx(expected[name], abs=1e-12), name


def test_weighted_statistics_equal_the_metric_on_the_repeated_sample() -> None:
    rng = np.random.default_rng(1)
    pred, truth, scores = _masks(rng)
    per = _per_image(pred, truth, scores)
    counts = next(bootstrap_counts(len(per), per.has_truth, n_boot=5, seed=2))
    for row in counts:
        take = np.repeat(np.arange(len(per)), row.astype(int))
        expected = summarize(pred[take], truth[take], scores[take])
        for name in METRIC_NAMES:
            got = metric_statistic(name, per)(row[None])[0]
            assert got == pytest.approx(expected[name], abs=1e-12), name
        assert weighted_auc(scores, per.has_truth, row[None])[0] == pytest.approx(
            roc_auc_score(per.has_truth[take], scores[take]), abs=1e-12)


def test_auc_undefined_without_both_classes() -> None:
    counts = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    auc = weighted_auc(np.array([0.1, 0.9, 0.5]), np.array([False, True, False]), counts)
    assert np.isnan(auc).all()


def test_mean_ci_agrees_with_scipy_percentile_bootstrap() -> None:
    rng = np.random.default_rng(3)
    values = rng.beta(2, 5, size=400)
    ours = bootstrap_ci(values, None, n_boot=4000, seed=0)
    ref = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(9)).confidence_interval
    assert ours.value == pytest.approx(values.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.004)
    assert ours.high == pytest.approx(ref.high, abs=0.004)


def test_stratified_ci_is_narrower_for_the_challenge_metric() -> None:
    # With 78 % empty images scored 1 and positives scored low, the number of positives in a
    # resample drives dice_kaggle; stratification removes that variance.
    rng = np.random.default_rng(4)
    has_truth = rng.random(500) < 0.22
    dice = np.where(has_truth, rng.random(500) * 0.4, 1.0)
    plain = bootstrap_ci(dice, None, n_boot=2000, seed=1)
    strat = bootstrap_ci(dice, has_truth, n_boot=2000, seed=1)
    assert strat.value == plain.value
    assert (strat.high - strat.low) < 0.8 * (plain.high - plain.low)


def test_run_against_itself_differs_by_zero_with_p_one() -> None:
    rng = np.random.default_rng(5)
    pred, truth, scores = _masks(rng)
    per = _per_image(pred, truth, scores)
    for name in METRIC_NAMES:
        res = paired_bootstrap(per, per, per.has_truth, lambda p, n=name: metric_statistic(n, p), n_boot=500)
        assert (res.diff.value, res.diff.low, res.diff.high, res.p_value) == (0.0, 0.0, 0.0, 1.0), name
    assert wilcoxon_p(per.dice, per.dice) == 1.0


def test_constant_known_difference_is_recovered_exactly() -> None:
    rng = np.random.default_rng(6)
    a = rng.random(300) * 0.8
    res = paired_bootstrap(a, a + 0.05, n_boot=1000)
    assert res.diff.value == pytest.approx(0.05)
    assert res.diff.low == pytest.approx(0.05) and res.diff.high == pytest.approx(0.05)
    assert res.p_value == pytest.approx(2 / 1001)
    assert wilcoxon_p(a, a + 0.05) < 1e-10


def test_paired_ci_covers_a_known_mean_difference() -> None:
    rng = np.random.default_rng(7)
    has_truth = rng.random(600) < 0.3
    a = np.where(has_truth, rng.random(600), 1.0)
    delta = np.where(has_truth, rng.normal(0.04, 0.1, 600), 0.0)
    res = paired_bootstrap(a, a + delta, has_truth, n_boot=2000, seed=3)
    assert res.diff.value == pytest.approx(delta.mean())
    assert res.diff.covers(0.04 * has_truth.mean())
    assert res.diff.low > 0 and res.p_value < 0.01


def test_paired_ci_coverage_is_near_nominal() -> None:
    # 150 studies of 60 paired images with a true mean difference of 0.03: the 95 % CI should
    # cover it in about 95 % of them (percentile bootstrap runs a bit short at small n).
    rng = np.random.default_rng(8)
    hits = 0
    for k in range(150):
        a = rng.random(60)
        b = a + rng.normal(0.03, 0.08, 60)
        hits += paired_bootstrap(a, b, n_boot=400, seed=k).diff.covers(0.03)
    assert 0.88 <= hits / 150 <= 0.99


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.random(50), rng.random(50)
    assert wilcoxon_p(a, b) == pytest.approx(sps.wilcoxon(a, b).pvalue)
    with pytest.raises(ValueError, match="differ in length"):
        wilcoxon_p(a, b[:3])


def test_predict_nothing_is_dice_kaggle_of_empty_masks() -> None:
    rng = np.random.default_rng(10)
    _, truth, _ = _masks(rng)
    has_truth = truth.reshape(len(truth), -1).any(1)
    assert predict_nothing_dice(has_truth) == pytest.approx(dice_kaggle(np.zeros_like(truth), truth))
    assert np.isnan(predict_nothing_dice([]))


def test_edge_cases_and_errors() -> None:
    assert np.isnan(bootstrap_ci(np.zeros(0)).value)
    no_pos = PerImage.from_arrays([1.0, 1.0], [False, False], [False, False])
    assert np.isnan(bootstrap_ci(metric_statistic("dice_positive", no_pos), n=2).low)
    with pytest.raises(ValueError, match="unknown metric"):
        metric_statistic("iou", no_pos)
    with pytest.raises(ValueError, match="needs n"):
        bootstrap_ci(metric_statistic("dice_kaggle", no_pos))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="differ in number"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_two_thousand_resamples_of_a_thousand_images_are_vectorised() -> None:
    """Resamples are evaluated as whole count matrices (a few calls), not one call per resample."""
    rng = np.random.default_rng(11)
    has_truth = rng.random(1000) < 0.22
    per = PerImage.from_arrays(rng.random(1000), has_truth, rng.random(1000) < 0.3, rng.random(1000))
    statistic = metric_statistic("dice_kaggle", per)
    calls = []

    def counted(counts: np.ndarray) -> np.ndarray:
        calls.append(len(counts))
        return statistic(counts)

    ci = bootstrap_ci(counted, has_truth, n_boot=2000, n=1000)
    assert ci.n_boot == 2000 and sum(calls) == 2000 + 1 and len(calls) <= 50


# ---------------------------------------------------------------- small samples (issue 21, item 5)


def _twelve() -> tuple[PerImage, PerImage]:
    """12 images (8 with pneumothorax): A predicts nothing, B finds 5 of the positives."""
    has_truth = np.array([True] * 8 + [False] * 4)
    dice_b = np.where(has_truth, 0.0, 1.0)
    dice_b[:5] = [0.5, 0.6, 0.7, 0.8, 0.9]
    a = PerImage.from_arrays(np.where(has_truth, 0.0, 1.0), has_truth, np.zeros(12, bool), np.full(12, 0.2))
    b = PerImage.from_arrays(dice_b, has_truth, dice_b * has_truth > 0, np.where(dice_b * has_truth > 0, 0.9, 0.2))
    return a, b


def test_twelve_images_get_no_degenerate_interval_and_an_exact_p() -> None:
    a, b = _twelve()
    # The stratified bootstrap alone says "0.3333 [0.3333, 0.3333]" and p = 2 / (B + 1).
    dists = bootstrap_distributions({(r, m): metric_statistic(m, per) for r, per in (("a", a), ("b", b))
                                     for m in METRIC_NAMES}, 12, a.has_truth, 2000, 0)
    raw = dists["a", "dice_kaggle"].ci()
    assert (raw.low, raw.high) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert dists["b", "dice_kaggle"].paired(dists["a", "dice_kaggle"]).p_value < 0.001
    for m in METRIC_NAMES:
        ci = dists["a", m].ci(note=metric_note(m, a))
        assert ci.note == "n too small: 12 images" and np.isnan(ci.low) and np.isnan(ci.high)
        assert str(ci) == f"{ci.value:.4f} (n too small: 12 images)"
    # 5 images differ, all in B's favour: the exact paired permutation p is 2 / 2**5, as Wilcoxon's.
    wil = wilcoxon_p(a.dice, b.dice)
    assert wil == pytest.approx(0.0625)
    for m in ("dice_kaggle", "dice_positive", "sensitivity", "image_auc"):
        assert exact_paired_p(m, a, b) == pytest.approx(wil), m
    assert exact_paired_p("specificity", a, b) == exact_paired_p("fpr_empty", a, b) == 1.0  # no empty image differs
    res = paired_bootstrap(a.dice, b.dice, a.has_truth)
    assert res.exact and res.p_value == pytest.approx(0.0625) and res.diff.note == "n too small: 12 images"


def test_exact_p_matches_scipy_permutation_test_and_brute_force_auc() -> None:
    rng = np.random.default_rng(12)
    a = rng.random(30)
    b = a.copy()
    b[:11] += rng.normal(0.05, 0.1, 11)  # 11 images differ: 2**11 sign flips
    # scipy enumerates every sign of its input: give it the 11 non-zero differences (zeros change nothing)
    ref = sps.permutation_test((a[:11], b[:11]), lambda x, y, axis: np.mean(y - x, axis=axis),
                               permutation_type="samples",
                               n_resamples=np.inf, vectorized=True, alternative="two-sided").pvalue
    res = paired_bootstrap(a, b)
    assert res.exact and res.p_value == pytest.approx(ref, abs=1e-12)
    # image_auc: every swap of the differing scores, scored by sklearn one at a time.
    truth = np.array([True] * 12 + [False] * 18)
    sa, sb = rng.random(30).round(1), rng.random(30).round(1)  # ties included
    sb[7:] = sa[7:]  # 7 images differ
    pa, pb = (PerImage.from_arrays(np.zeros(30), truth, s > 0.5, s) for s in (sa, sb))
    diffs = []
    for bits in range(2**7):
        swap = np.zeros(30, bool)
        swap[:7] = [(bits >> i) & 1 for i in range(7)]
        diffs.append(roc_auc_score(truth, np.where(swap, sa, sb)) - roc_auc_score(truth, np.where(swap, sb, sa)))
    expected = np.mean(np.abs(diffs) >= abs(diffs[0]) - 1e-12)
    assert exact_paired_p("image_auc", pa, pb) == pytest.approx(expected)
    # Too many differing images for enumeration: None (the bootstrap p stays).
    assert exact_paired_p("dice_kaggle", PerImage.from_arrays(a, truth, a > 0.5),
                          PerImage.from_arrays(a + 0.01, truth, a > 0.5)) is None


def test_metric_notes_name_the_images_behind_each_metric() -> None:
    has_truth = np.array([True] * 3 + [False] * 37)
    per = PerImage.from_arrays(np.ones(40), has_truth, has_truth)
    notes = {m: metric_note(m, per) for m in METRIC_NAMES}
    assert notes == {"dice_kaggle": "", "dice_positive": "n too small: 3 with pneumothorax",
                     "sensitivity": "n too small: 3 with pneumothorax", "image_auc": "n too small: 3 with pneumothorax",
                     "specificity": "", "fpr_empty": ""}
    big = bootstrap_ci(np.linspace(0, 1, 40), n_boot=200)
    assert big.note == "" and big.low < big.high
    assert bootstrap_ci(np.linspace(0, 1, 19), n_boot=200).note == "n too small: 19 images"
