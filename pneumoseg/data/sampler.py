"""Epoch samplers: a seeded shuffle and the winner's positive-ratio sampler; both DDP-aware.

Both yield ``(index, seed)`` pairs: ``index`` into the dataset and a per-item seed for its
augmentation (``SegmentationDataset`` accepts such pairs). An epoch's order and seeds depend only
on ``(seed, epoch)``; call ``set_epoch`` before iterating (Lightning does so for every sampler that
has it). Under DDP each rank takes a disjoint slice ``order[rank::world_size]`` of the epoch, after
padding the epoch to a multiple of ``world_size`` with its first items, so every rank runs the
same number of batches (``pad=False``, for evaluation: no padding, ranks may differ by one item).
``rank`` and ``world_size`` default to ``torch.distributed``'s when it is initialised (build the
Trainer with ``use_distributed_sampler=False`` so Lightning does not wrap them again).

Positive-ratio sampling (the winner's ``PneumoSampler``, scheduled): in epoch ``e`` of ``E`` the
share of positives is ``pos_start + (pos_end - pos_start) * e / (E - 1)`` (0.8 -> 0.4 in the
winner's setup); the epoch draws ``round(share * L)`` positives and the rest negatives, each
without replacement (a pool smaller than its draw is used whole, repeatedly), and shuffles them.
``L`` defaults to the dataset size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from pneumoseg.errors import DataError

__all__ = ["EpochSampler", "PositiveRatioSampler", "ShuffleSampler", "positive_share"]

_SEED_RANGE = 2**31 - 1


def positive_share(epoch: int, epochs: int, start: float, end: float) -> float:
    """Linear share of positives in ``epoch`` (0-based) of ``epochs``; ``end`` from the last epoch on."""
    if epochs <= 1:
        return start
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    return start + (end - start) * t


class EpochSampler(Sampler[tuple[int, int]]):
    """Base: subclasses fill ``epoch_indices(rng)``; this adds seeds, DDP slicing and ``set_epoch``."""

    def __init__(self, length: int, *, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, pad: bool = True) -> None:
        if length < 1:
            raise DataError(f"a sampler needs at least one item per epoch, got {length}")
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.pad = pad
        self._num_replicas = num_replicas
        self._rank = rank

    @property
    def num_replicas(self) -> int:
        if self._num_replicas is not None:
            return self._num_replicas
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def epoch_items(self) -> list[tuple[int, int]]:
        """All ``(index, seed)`` of this epoch, before the per-rank slice."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self.epoch_indices(rng)
        seeds = rng.integers(0, _SEED_RANGE, size=len(order))
        return list(zip(order.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.length / self.num_replicas)
        return len(range(self.rank, self.length, self.num_replicas))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        items = self.epoch_items()
        world = self.num_replicas
        if not self.pad:
            return iter(items[self.rank::world])
        total = math.ceil(self.length / world) * world
        items = (items * math.ceil(total / len(items)))[:total]
        return iter(items[self.rank:total:world])


class ShuffleSampler(EpochSampler):
    """Every index once per epoch, shuffled (or in order with ``shuffle=False``)."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, pad: bool = True) -> None:
        super().__init__(n, seed=seed, num_replicas=num_replicas, rank=rank, pad=pad)
        self.shuffle = shuffle

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.length) if self.shuffle else np.arange(self.length)


class PositiveRatioSampler(EpochSampler):
    """Epochs with a scheduled share of positives (see module docstring).

    Args:
        labels: bool per dataset item, True = has pneumothorax.
        pos_start, pos_end: share of positives in the first and the last epoch.
        epochs: number of epochs the share decays over.
        epoch_length: items per epoch (all ranks together); None = ``len(labels)``.
    """

    def __init__(self, labels: Sequence[bool] | np.ndarray, *, pos_start: float = 0.8, pos_end: float = 0.4,
                 epochs: int = 1, epoch_length: int | None = None, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        labels = np.asarray(labels, dtype=bool)
        super().__init__(epoch_length or len(labels), seed=seed, num_replicas=num_replicas, rank=rank)
        for name, share in (("pos_start", pos_start), ("pos_end", pos_end)):
            if not 0.0 <= share <= 1.0:
                raise DataError(f"{name} must be in [0, 1], got {share}")
        self.positives = np.flatnonzero(labels)
        self.negatives = np.flatnonzero(~labels)
        if (pos_start > 0 or pos_end > 0) and len(self.positives) == 0:
            raise DataError("positive-ratio sampler: the train split has no positive image")
        if (pos_start < 1 or pos_end < 1) and len(self.negatives) == 0:
            raise DataError("positive-ratio sampler: the train split has no negative image")
        self.pos_start, self.pos_end, self.epochs = pos_start, pos_end, epochs

    def share(self, epoch: int | None = None) -> float:
        """Share of positives scheduled for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return positive_share(epoch, self.epochs, self.pos_start, self.pos_end)

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:
        n_pos = round(self.share() * self.length)
        picks = [self._draw(rng, self.positives, n_pos), self._draw(rng, self.negatives, self.length - n_pos)]
        return rng.permutation(np.concatenate(picks))

    @staticmethod
    def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        full, rest = divmod(n, len(pool))
        parts = [rng.permutation(pool) for _ in range(full)] + [rng.choice(pool, size=rest, replace=False)]
        return np.concatenate(parts).astype(np.int64)
