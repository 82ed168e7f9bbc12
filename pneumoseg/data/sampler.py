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
share of positives is ``s = pos_start + (pos_end - pos_start) * e / (E - 1)`` (0.8 -> 0.4 in the
winner's setup). Two modes:

* ``positives_once`` (the default, the winner's semantics): every positive image is used exactly
  once per epoch and ``P * (1 - s) / s`` negatives (rounded half up) are drawn without replacement (a pool
  smaller than its draw is used whole, repeatedly), so positives make the share ``s``. The epoch
  length ``P + that`` follows from ``s`` and changes from epoch to epoch (1.25 P at 0.8, 2.5 P at
  0.4): the data module's loader is rebuilt each epoch (``length_varies``). The winner drew its
  negatives with replacement (``np.random.choice``); here a negative repeats only when the pool
  is exhausted. ``s`` must be > 0.
* ``fixed_length`` (this project's earlier behaviour): every epoch has ``L`` items (``epoch_length``,
  default the dataset size): ``round(s * L)`` positives and the rest negatives, each drawn without
  replacement from its pool and repeated when the pool is smaller than the draw. With SIIM-like
  counts (22% positives, s = 0.8) each positive is seen ~3.6 times per epoch and most negatives
  not at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from pneumoseg.errors import DataError

__all__ = ["SAMPLER_MODES", "EpochSampler", "PositiveRatioSampler", "ShuffleSampler", "positive_share"]

_SEED_RANGE = 2**31 - 1
#: ``PositiveRatioSampler`` modes (see the module docstring); the first is the default.
SAMPLER_MODES: tuple[str, ...] = ("positives_once", "fixed_length")


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

    @property
    def length_varies(self) -> bool:
        """True when epochs differ in length (the loader must then be rebuilt every epoch)."""
        return False

    def epoch_size(self) -> int:
        """Items in the current epoch, all ranks together, before padding."""
        return self.length

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
            return math.ceil(self.epoch_size() / self.num_replicas)
        return len(range(self.rank, self.epoch_size(), self.num_replicas))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        items = self.epoch_items()
        world = self.num_replicas
        if not self.pad:
            return iter(items[self.rank::world])
        total = math.ceil(len(items) / world) * world
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
        mode: ``positives_once`` (each positive once per epoch; length follows) or ``fixed_length``.
        epoch_length: ``fixed_length`` only: items per epoch (all ranks together); None = ``len(labels)``.
    """

    def __init__(self, labels: Sequence[bool] | np.ndarray, *, pos_start: float = 0.8, pos_end: float = 0.4,
                 epochs: int = 1, mode: str = "positives_once", epoch_length: int | None = None,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None) -> None:
        labels = np.asarray(labels, dtype=bool)
        if mode not in SAMPLER_MODES:
            raise DataError(f"positive-ratio sampler: unknown mode {mode!r} "
                            f"(valid: {', '.join(SAMPLER_MODES)})")
        if mode == "positives_once" and epoch_length is not None:
            raise DataError(f"positive-ratio sampler: epoch_length={epoch_length} applies to mode "
                            "fixed_length only (positives_once: the length follows from the positives "
                            "and the share)")
        super().__init__(epoch_length or len(labels), seed=seed, num_replicas=num_replicas, rank=rank)
        for name, share in (("pos_start", pos_start), ("pos_end", pos_end)):
            lo_ok = share > 0 if mode == "positives_once" else share >= 0
            if not (lo_ok and share <= 1.0):
                valid = "(0, 1] in mode positives_once" if mode == "positives_once" else "[0, 1]"
                raise DataError(f"positive-ratio sampler: {name} must be in {valid}, got {share}")
        self.mode = mode
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

    @property
    def length_varies(self) -> bool:
        return self.mode == "positives_once" and self.epochs > 1 and self.pos_start != self.pos_end

    def counts(self, epoch: int | None = None) -> tuple[int, int]:
        """(positives, negatives) drawn in ``epoch`` (default: the current one)."""
        share = self.share(epoch)
        if self.mode == "positives_once":
            n_pos = len(self.positives)
            return n_pos, math.floor(n_pos * (1.0 - share) / share + 0.5 + 1e-9)  # half up, float-safe
        n_pos = round(share * self.length)
        return n_pos, self.length - n_pos

    def epoch_size(self) -> int:
        return sum(self.counts())

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:
        n_pos, n_neg = self.counts()
        picks = [self._draw(rng, self.positives, n_pos), self._draw(rng, self.negatives, n_neg)]
        return rng.permutation(np.concatenate(picks))

    @staticmethod
    def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        full, rest = divmod(n, len(pool))
        parts = [rng.permutation(pool) for _ in range(full)] + [rng.choice(pool, size=rest, replace=False)]
        return np.concatenate(parts).astype(np.int64)
