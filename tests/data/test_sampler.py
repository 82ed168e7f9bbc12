"""Epoch samplers: the winner's positives-once epochs, the fixed-length option, seeds and DDP slices."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pneumoseg.data.sampler import PositiveRatioSampler, ShuffleSampler, positive_share
from pneumoseg.errors import DataError

# SIIM-like counts: 22% positives
LABELS = np.array([True] * 22 + [False] * 78)


def epoch(sampler: PositiveRatioSampler, e: int) -> list[int]:
    sampler.set_epoch(e)
    return [i for i, _ in sampler]


def test_positive_share_decays_linearly() -> None:
    shares = [positive_share(e, 5, 0.8, 0.4) for e in range(5)]
    assert shares == pytest.approx([0.8, 0.7, 0.6, 0.5, 0.4])
    assert positive_share(0, 1, 0.8, 0.4) == 0.8


@pytest.mark.parametrize(("e", "n_neg"), [(0, 6), (1, 11), (2, 19), (3, 33)])
def test_positives_once_is_the_winners_epoch(e: int, n_neg: int) -> None:
    """Every positive exactly once; negatives (no repeats) subsampled to the share; length follows."""
    sampler = PositiveRatioSampler(LABELS, pos_start=0.8, pos_end=0.4, epochs=4, seed=3)
    assert sampler.mode == "positives_once" and sampler.length_varies
    share = [0.8, 0.8 - 0.4 / 3, 0.8 - 0.8 / 3, 0.4][e]
    # the winner's n_negative = 22 (1 - s) / s = 5.5, 11, 19.25, 33, rounded half up
    items = epoch(sampler, e)
    counts = Counter(items)
    assert len(items) == len(sampler) == 22 + n_neg
    assert sorted(i for i in counts if LABELS[i]) == list(range(22))
    assert all(counts[i] == 1 for i in counts)  # positives once, negatives without replacement
    assert sum(not LABELS[i] for i in items) == n_neg
    assert np.mean(LABELS[items]) == pytest.approx(share, abs=0.02)


def test_positives_once_uses_every_negative_over_epochs_and_repeats_only_when_exhausted() -> None:
    sampler = PositiveRatioSampler(LABELS, pos_start=0.5, pos_end=0.5, epochs=10, seed=0)
    assert not sampler.length_varies and len(sampler) == 44
    seen = set()
    for e in range(10):
        seen |= {i for i in epoch(sampler, e) if not LABELS[i]}
    assert len(seen) > 70  # fresh negatives each epoch (22 of 78 per epoch)
    few = PositiveRatioSampler(LABELS, pos_start=0.1, pos_end=0.1, seed=0)  # asks for 198 negatives
    counts = Counter(epoch(few, 0))
    assert len(few) == 22 + 198 and {counts[i] for i in range(22)} == {1}
    assert {counts[i] for i in range(22, 100)} <= {2, 3} and sum(counts[i] for i in range(22, 100)) == 198


def test_fixed_length_option_repeats_positives() -> None:
    """The earlier behaviour: N items, positives redrawn (22 positives, share 0.8: ~3.6 x each)."""
    sampler = PositiveRatioSampler(LABELS, pos_start=0.8, pos_end=0.4, epochs=3, mode="fixed_length", seed=5)
    assert not sampler.length_varies
    ratios = []
    for e in range(3):
        items = epoch(sampler, e)
        assert len(items) == len(sampler) == 100
        ratios.append(np.mean(LABELS[items]))
    assert ratios == pytest.approx([0.8, 0.6, 0.4])
    counts = Counter(epoch(sampler, 0))
    assert np.mean([counts[i] for i in range(22)]) == pytest.approx(80 / 22)
    assert sum(1 for i in range(22, 100) if counts[i] == 0) == 58  # most negatives unseen
    short = PositiveRatioSampler(LABELS, epochs=3, mode="fixed_length", epoch_length=10)
    assert len(list(short)) == 10


def test_seeds_make_epochs_reproducible() -> None:
    a, b = (PositiveRatioSampler(LABELS, epochs=3, seed=5) for _ in range(2))
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    other = PositiveRatioSampler(LABELS, epochs=3, seed=6)
    other.set_epoch(1)
    assert list(other) != list(a)


def test_sampler_errors() -> None:
    with pytest.raises(DataError, match="no positive"):
        PositiveRatioSampler(np.zeros(5, bool))
    with pytest.raises(DataError, match=r"unknown mode 'cycle'.*positives_once, fixed_length"):
        PositiveRatioSampler(LABELS, mode="cycle")
    with pytest.raises(DataError, match="epoch_length=50 applies to mode fixed_length only"):
        PositiveRatioSampler(LABELS, epoch_length=50)
    with pytest.raises(DataError, match=r"pos_end must be in \(0, 1\]"):
        PositiveRatioSampler(LABELS, pos_end=0.0)
    assert len(PositiveRatioSampler(LABELS, pos_start=0.0, pos_end=0.0, mode="fixed_length")) == 100


@pytest.mark.parametrize("mode", ["positives_once", "fixed_length"])
def test_samplers_split_disjointly_across_ranks(mode: str) -> None:
    labels = np.array([True, False] * 25)
    full = PositiveRatioSampler(labels, epochs=2, seed=1, mode=mode, num_replicas=1, rank=0)
    n = len(full)
    parts = [list(PositiveRatioSampler(labels, epochs=2, seed=1, mode=mode, num_replicas=3, rank=r))
             for r in range(3)]
    per_rank = -(-n // 3)
    assert {len(p) for p in parts} == {per_rank}  # padded to a multiple of 3
    merged = [parts[k % 3][k // 3] for k in range(n)]
    assert merged == list(full)
    evals = [list(ShuffleSampler(10, shuffle=False, pad=False, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for part in evals for i, _ in part) == list(range(10))
