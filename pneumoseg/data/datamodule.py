"""The LightningDataModule: train / val / test loaders over a prepared cache.

It takes plain settings (``pneumoseg.training.builders`` builds it from the experiment config). The
train loader uses a :class:`~pneumoseg.data.sampler.PositiveRatioSampler` when ``sampler`` is given,
else a seeded :class:`~pneumoseg.data.sampler.ShuffleSampler`; validation and test are in order, each
rank taking a disjoint, unpadded slice (metrics are summed over ranks at epoch end).
All samplers are DDP-aware, so the Trainer must be built with ``use_distributed_sampler=False``.
When the train epochs differ in length (``positives_once`` with a decaying share:
``train_length_varies``), build the Trainer with ``reload_dataloaders_every_n_epochs=1``;
``train_dataloader`` then sets the new sampler to the trainer's current epoch, so the loader's
length is the epoch's.

Batches hold uint8 images and targets (``pneumoseg.data.dataset``): the model normalises them on
the device, which moves 4x fewer bytes from host to device than float32.

Loader throughput: ``num_workers`` processes (default ``min(8, CPU count)``), each with OpenCV's
own threading off (``cv2.setNumThreads(0)``), persistent between epochs, and pinned memory when
CUDA is available.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from pneumoseg.data.augment import build_transform
from pneumoseg.data.dataset import SegmentationDataset, check_cache, read_labels, split_ids
from pneumoseg.data.sampler import EpochSampler, PositiveRatioSampler, ShuffleSampler
from pneumoseg.errors import DataError

__all__ = ["SegmentationDataModule", "default_num_workers", "worker_init"]


def default_num_workers() -> int:
    """``min(8, usable CPUs)``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def worker_init(worker_id: int) -> None:
    """DataLoader worker start: one OpenCV thread per worker (workers already run in parallel)."""
    import cv2

    del worker_id
    cv2.setNumThreads(0)


class SegmentationDataModule(L.LightningDataModule):
    """Loaders over ``cache`` for a split (``fold`` None) or a fold (see ``dataset.split_ids``).

    Args:
        cache: the prepared cache (needs ``splits.csv``: ``pneumoseg split CACHE``).
        fold: None or the validation fold.
        size: the side the images are served at (the model's ``Preprocessing.size``).
        batch_size: per device.
        num_workers: loader processes; None = :func:`default_num_workers`.
        augment: ``{"preset": ..., "transforms": [...]}`` for ``augment.build_transform``.
        sampler: None, or ``{"pos_start", "pos_end", "mode", "epoch_length"}`` for the positive-ratio
            sampler (``sampler.PositiveRatioSampler``).
        epochs: epochs the positive share decays over.
        seed: sampler and augmentation seed.
    """

    def __init__(self, cache: str | os.PathLike[str], *, fold: int | None = None, size: int = 512,
                 batch_size: int = 8,
                 num_workers: int | None = None, augment: Mapping[str, Any] | None = None,
                 sampler: Mapping[str, Any] | None = None, epochs: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.cache = Path(cache)
        self.fold = fold
        self.size = size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.augment = dict(augment or {"preset": "none"})
        self.sampler_options = dict(sampler) if sampler is not None else None
        self.epochs = epochs
        self.seed = seed
        self.datasets: dict[str, SegmentationDataset] = {}
        self.train_labels: Any = None

    def _dataset(self, split: str, train: bool) -> SegmentationDataset:
        ids = split_ids(self.cache, split, self.fold)
        if not ids:
            where = f"fold {self.fold}" if self.fold is not None else "splits.csv"
            raise DataError(f"{self.cache}: the {split} split is empty ({where}); rerun `pneumoseg split`")
        transform = None
        if train:
            transform = build_transform(self.augment.get("preset", "none"), self.size,
                                        self.augment.get("transforms"))
        return SegmentationDataset(self.cache, ids, size=self.size, transform=transform)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (fit / validate / test); safe to call more than once."""
        check_cache(self.cache)
        wanted: Sequence[str] = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "fit", ("train", "val"))
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split, train=split == "train")
        if "train" in self.datasets and self.train_labels is None:
            self.train_labels = read_labels(self.cache, self.datasets["train"].image_ids)

    def train_sampler(self) -> EpochSampler:
        n = len(self.datasets["train"])
        if self.sampler_options is None:
            return ShuffleSampler(n, shuffle=True, seed=self.seed)
        opts = self.sampler_options
        return PositiveRatioSampler(self.train_labels, pos_start=opts.get("pos_start", 0.8),
                                    pos_end=opts.get("pos_end", 0.4), epochs=self.epochs,
                                    mode=opts.get("mode", "positives_once"),
                                    epoch_length=opts.get("epoch_length"), seed=self.seed)

    def epoch_batches(self, epoch: int, epochs: int | None = None, world_size: int = 1) -> int:
        """Train batches (per rank) in ``epoch`` (0-based) when the sampler's share decays over ``epochs``.

        ``epochs`` None: ``self.epochs``; ``world_size``: DDP processes (each takes a padded slice). Used to turn a step budget into epochs (the sampler's
        epoch length is respected: ``positives_once`` epochs differ in length).
        """
        self.setup("fit")
        saved = self.epochs
        try:
            if epochs is not None:
                self.epochs = epochs
            sampler = self.train_sampler()
        finally:
            self.epochs = saved
        sampler.set_epoch(epoch)
        return math.ceil(math.ceil(sampler.epoch_size() / world_size) / self.batch_size)

    @property
    def train_length_varies(self) -> bool:
        """True when train epochs differ in length (reload the train loader every epoch)."""
        opts = self.sampler_options
        if opts is None or opts.get("mode", "positives_once") != "positives_once":
            return False
        return self.epochs > 1 and opts.get("pos_start", 0.8) != opts.get("pos_end", 0.4)

    def _loader(self, split: str, sampler: EpochSampler) -> DataLoader[Any]:
        workers = self.num_workers
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, sampler=sampler, num_workers=workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
            worker_init_fn=worker_init if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        self.setup("fit")
        sampler = self.train_sampler()
        trainer = getattr(self, "trainer", None)
        if trainer is not None:  # a loader rebuilt at epoch e must have epoch e's length
            sampler.set_epoch(trainer.current_epoch)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        self.setup("validate")
        return self._loader("val", ShuffleSampler(len(self.datasets["val"]), shuffle=False, pad=False))

    def test_dataloader(self) -> DataLoader[Any]:
        self.setup("test")
        return self._loader("test", ShuffleSampler(len(self.datasets["test"]), shuffle=False, pad=False))
