"""Optimizers and learning-rate schedules, as factories the LightningModule calls.

Schedules (``schedule.name`` in the config), all stepped once per epoch:

* ``snapshot``: the seed's snapshot cosine annealing (``SnapshotCallbackBuilder``): ``T`` epochs,
  ``M`` snapshots, initial rate ``lr0``; with cycle length ``C = ceil(T / M)``,
  ``lr(t) = lr0 / 2 * (cos(pi * (t mod C) / C) + 1)`` for epoch ``t`` (0-based). A snapshot
  checkpoint ``snapshot-K.ckpt`` is saved at the end of each cycle K = 1..M
  (``pneumoseg.training.callbacks.SnapshotCheckpoint``). ``M = 1`` is plain cosine to 0.
* ``cosine``: ``lr(t) = min_lr + (lr0 - min_lr) / 2 * (1 + cos(pi * t / T))``.
* ``plateau``: ``ReduceLROnPlateau`` on the monitored validation metric (``factor``,
  ``patience``, ``min_lr``).
* ``none``: constant ``lr0``.

The epoch-wise rates are pure functions of the epoch (``LambdaLR``), so a resumed run continues
with exactly the rates of an uninterrupted one.

Step schedules (``total_steps`` given: the run has a budget in optimizer steps, ``train.max_steps``
/ ``min_steps``, or a warm-up): the same curves over optimizer steps instead of epochs (``snapshot``:
``M`` cycles of ``ceil(total / M)`` steps; ``cosine``: one over ``total``), stepped after every
optimizer step, with a linear warm-up ``lr0 * (k + 1) / W`` over the first ``W = warmup_steps``
steps (the curve then starts at step ``W``, over the remaining ``total - W`` steps). ``plateau``
stays per epoch; ``none`` is constant after the warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from pneumoseg.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "OptimizerFactory",
    "SchedulerFactory",
    "SnapshotCallbackBuilder",
    "cosine_lr",
    "optimizer_factory",
    "scheduler_factory",
    "snapshot_lr",
    "step_lr",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("snapshot", "cosine", "plateau", "none")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
#: optimizer -> a Lightning lr_scheduler config dict, or None for a constant rate
SchedulerFactory = Callable[[Optimizer], dict[str, Any] | None]


def snapshot_lr(epoch: int, epochs: int, snapshots: int, lr0: float) -> float:
    """The seed's snapshot cosine rate of ``epoch`` (0-based); see the module docstring."""
    cycle = math.ceil(epochs / snapshots)
    return lr0 / 2 * (math.cos(math.pi * (epoch % cycle) / cycle) + 1)


def cosine_lr(epoch: int, epochs: int, lr0: float, min_lr: float = 0.0) -> float:
    """Plain cosine annealing from ``lr0`` at epoch 0 towards ``min_lr`` at epoch ``epochs``."""
    return min_lr + (lr0 - min_lr) / 2 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))


def step_lr(step: int, *, name: str, total: int, lr0: float, warmup: int = 0, snapshots: int = 1,
            min_lr: float = 0.0) -> float:
    """The rate after ``step`` (0-based) optimizer steps of ``total`` for schedule ``name`` (module docstring)."""
    if step < warmup:
        return lr0 * (step + 1) / warmup
    t, span = step - warmup, max(total - warmup, 1)
    if name == "snapshot":
        return snapshot_lr(min(t, span - 1), span, min(snapshots, span), lr0)
    if name == "cosine":
        return cosine_lr(t, span, lr0, min_lr)
    return lr0


class SnapshotCallbackBuilder:
    """The seed's snapshot ensemble schedule: ``epochs`` (T), ``snapshots`` (M), ``lr0``.

    ``lr(t)`` gives the rate, ``cycle`` the epochs per cycle, ``is_snapshot_epoch(t)`` whether a
    snapshot is taken at the end of epoch ``t``, ``scheduler(optimizer)`` a LambdaLR.
    """

    def __init__(self, epochs: int, snapshots: int = 1, lr0: float = 0.1) -> None:
        if epochs < 1 or snapshots < 1 or snapshots > epochs:
            raise ConfigError(f"snapshot schedule: need 1 <= snapshots <= epochs, "
                              f"got {snapshots} and {epochs}")
        self.epochs, self.snapshots, self.lr0 = epochs, snapshots, lr0

    @property
    def cycle(self) -> int:
        return math.ceil(self.epochs / self.snapshots)

    def lr(self, epoch: int) -> float:
        return snapshot_lr(epoch, self.epochs, self.snapshots, self.lr0)

    def is_snapshot_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.cycle == 0

    def scheduler(self, optimizer: Optimizer) -> LambdaLR:
        """A LambdaLR whose factor times the optimizer's base rate is ``lr(t) / lr0 * base``."""
        return LambdaLR(optimizer, lambda t: snapshot_lr(t, self.epochs, self.snapshots, 1.0))


def optimizer_factory(name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                      momentum: float = 0.9) -> OptimizerFactory:
    """A function ``params -> optimizer`` (``adam``, ``adamw`` or ``sgd`` with Nesterov momentum)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")

    def make(params: Iterable[torch.nn.Parameter]) -> Optimizer:
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)

    return make


def scheduler_factory(name: str, *, epochs: int, snapshots: int = 1, min_lr: float = 0.0,
                      factor: float = 0.5, patience: int = 2, monitor: str = "val/dice_kaggle",
                      mode: str = "max", total_steps: int | None = None,
                      warmup_steps: int = 0) -> SchedulerFactory:
    """A function ``optimizer -> Lightning lr_scheduler dict | None`` for schedule ``name``.

    ``total_steps``: schedule over optimizer steps (``step_lr``), else over ``epochs``.
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r} (valid: {', '.join(SCHEDULES)})")

    def make(optimizer: Optimizer) -> dict[str, Any] | None:
        base = optimizer.param_groups[0]["lr"]
        if total_steps is not None and name != "plateau":
            if name == "none" and warmup_steps == 0:
                return None
            lo = min_lr / base

            def factor_of(k: int) -> float:
                return step_lr(k, name=name, total=total_steps, lr0=1.0, warmup=warmup_steps,
                               snapshots=snapshots, min_lr=lo)

            return {"scheduler": LambdaLR(optimizer, factor_of), "interval": "step"}
        if name == "none":
            return None
        if name == "snapshot":
            sched: Any = SnapshotCallbackBuilder(epochs, snapshots, base).scheduler(optimizer)
        elif name == "cosine":
            lo = min_lr / base
            sched = LambdaLR(optimizer, lambda t: cosine_lr(t, epochs, 1.0, lo))
        else:
            sched = ReduceLROnPlateau(optimizer, mode="min" if mode == "min" else "max", factor=factor,
                                      patience=patience, min_lr=min_lr)
            return {"scheduler": sched, "interval": "epoch", "monitor": monitor, "strict": True}
        return {"scheduler": sched, "interval": "epoch"}

    return make
