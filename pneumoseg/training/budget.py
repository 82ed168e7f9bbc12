"""The training budget: ``train.epochs`` / ``max_steps`` / ``min_steps`` resolved against the data.

:func:`plan_steps` turns the config's budget into a :class:`StepPlan` (optimizer steps per epoch,
from the sampler's epoch lengths); :func:`recommended_steps` is the fewest steps worth training a
model of a given size for (``train`` warns below it).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pneumoseg.config import ExperimentConfig

if TYPE_CHECKING:
    from pneumoseg.data.datamodule import SegmentationDataModule

__all__ = ["StepPlan", "batch_limit", "plan_steps", "recommended_steps"]


@dataclass
class StepPlan:
    """The training budget resolved against the data: ``steps`` optimizer steps over ``epochs`` epochs.

    ``by``: what decided it (``"epochs"``, ``"max_steps"`` or ``"min_steps"``); ``step_mode``: the
    Trainer stops at ``steps`` (and schedules run over steps) instead of after ``epochs``.
    ``steps_per_epoch``: optimizer steps of each epoch (the last one may be cut by the budget).
    """

    steps: int
    epochs: int
    by: str
    step_mode: bool
    steps_per_epoch: list[int] = field(default_factory=list)


def recommended_steps(n_parameters: int, pretrained: bool = False) -> int:
    """Fewest optimizer steps worth training a model of ``n_parameters`` for (below: ``train`` warns).

    From scratch: 500 for small networks (< 5 M parameters, e.g. the seed's UNet), 1000 for the
    others (ResNet-34 U-Net, Xception, SE-ResNeXt50): on 42 real images at 256 px, 90-150 steps left
    the packaged configs at 0.0-0.5 positive Dice (docs/training.md). With a ``pretrained`` encoder
    (ImageNet weights): 150, where the EfficientNet-Lite0 U-Net matched 1000 from-scratch steps in the
    128 px real-image screen (docs/benchmarks.md).
    """
    if pretrained:
        return 150
    return 500 if n_parameters < 5_000_000 else 1000


def plan_steps(cfg: ExperimentConfig, datamodule: SegmentationDataModule) -> StepPlan:
    """Resolve the budget (``train.epochs`` / ``max_steps`` / ``min_steps``) against the data.

    Optimizer steps of epoch e = ceil(batches_e / accumulate) (a partial accumulation steps at
    the epoch's end), batches_e from the sampler's epoch length (``epoch_batches``) and
    ``train.limit_train_batches``. A step budget spans as many epochs as it needs; the positive
    sampler's share then decays over those epochs (``datamodule.epochs`` is set to them).
    """
    t = cfg.train
    world = t.devices * t.num_nodes

    def per_epoch(horizon: int, n: int) -> list[int]:
        out = []
        for e in range(n):
            batches = datamodule.epoch_batches(e, horizon, world)
            if t.limit_train_batches is not None:
                lim = batch_limit(t.limit_train_batches)
                batches = min(batches, lim) if isinstance(lim, int) else max(1, int(batches * (lim or 1.0)))
            out.append(max(1, math.ceil(batches / t.accumulate)))
        return out

    by_epochs = per_epoch(t.epochs, t.epochs)
    target = t.max_steps
    by = "max_steps"
    if target is None:
        if t.min_steps is None or sum(by_epochs) >= t.min_steps:
            datamodule.epochs = t.epochs
            return StepPlan(sum(by_epochs), t.epochs, "epochs", False, by_epochs)
        target, by = t.min_steps, "min_steps"
    horizon = max(1, math.ceil(target / max(1.0, sum(by_epochs) / t.epochs)))
    steps: list[int] = []
    for _ in range(20):  # fixed point: the sampler's horizon is the number of epochs the budget needs
        steps = per_epoch(horizon, horizon)
        while sum(steps) < target:
            steps += per_epoch(horizon, len(steps) + 1)[len(steps):]
        needed = next(i + 1 for i, c in enumerate(itertools.accumulate(steps)) if c >= target)
        steps = steps[:needed]
        if needed == horizon:
            break
        horizon = needed
    steps[-1] -= sum(steps) - target
    datamodule.epochs = len(steps)
    return StepPlan(target, len(steps), by, True, steps)


def batch_limit(value: float | None) -> float | int | None:
    """``train.limit_*_batches`` as Lightning takes it: above 1 a number of batches, else a fraction."""
    if value is None:
        return None
    return int(value) if value > 1 else float(value)
