"""Segmentation losses. All take logits and targets in [0, 1] and return a float32 scalar tensor.

Shapes: ``logits`` float (N, 1, H, W), raw network output (no sigmoid), any float dtype;
``targets`` (N, 1, H, W) in [0, 1] (float, bool or integer): binary masks, or soft masks (the
covered fraction of each pixel, ``cache.json`` ``mask_rule: soft``). Every loss computes in
float32: logits and targets are cast at the entry (``logits.float()``), so bf16/fp16 network
outputs under mixed precision do not round the loss. BCE, Dice and focal take soft targets as
they are; the Lovasz hinge is defined for binary labels and cuts soft targets at 0.5.

Names (``LOSSES``), as in the seed and the winning solution:

* ``bce``: binary cross-entropy with logits, mean over all pixels.
* ``dice``: ``1 - Dice`` with soft Dice over the whole batch (all pixels of all images pooled,
  the ``batch=True`` of smp/MONAI): ``Dice = (2 sum(p t) + 1) / (sum p + sum t + 1)`` with
  ``p = sigmoid(logits)``. The smoothing 1 keeps it finite when the batch has no positive
  pixel; then ``loss = sum p / (sum p + 1)``, whose gradient still pushes every prediction to 0.
  (smp's ``DiceLoss`` multiplies the loss of a class absent from the batch by 0: a silent zero
  gradient on all-empty batches, which are common here. It is therefore not used.)
* ``bce_dice``: ``bce + (1 - Dice)``; ``bce_logdice``: ``bce - log(Dice)``.
* ``focal``: binary focal loss, gamma 2, no alpha, mean over pixels (smp ``FocalLoss``).
* ``lovasz``: Lovasz hinge computed per image, then averaged (smp ``LovaszLoss``).

``create_loss`` builds one of these by name, or a ``WeightedLoss`` from a mapping of names to
weights (the winner's ``{"bce": 3, "dice": 1, "focal": 4}``). Every loss here records the value
of each part of its last call in ``last_parts: dict[str, float]`` for logging.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import FocalLoss, LovaszLoss
from torch import nn

from pneumoseg.errors import ConfigError

__all__ = [
    "LOSSES",
    "BCEDiceLoss",
    "BCELogDiceLoss",
    "BCELoss",
    "BinaryFocalLoss",
    "DiceLoss",
    "LovaszHingeLoss",
    "WeightedLoss",
    "create_loss",
    "list_losses",
    "soft_dice",
]


def _check(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits, float32 targets) after a shape check: the one entry of every loss."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape"
        )
    return logits.float(), targets.float()


def soft_dice(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch: ``(2 sum(p t) + smooth) / (sum p + sum t + smooth)``, p = sigmoid."""
    logits, t = _check(logits, targets)
    p = torch.sigmoid(logits)
    return (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


class _PartsLoss(nn.Module):
    """Base: ``forward`` returns a scalar tensor and stores ``last_parts``."""

    name = ""

    def __init__(self) -> None:
        super().__init__()
        #: each part of the last call, detached, on the loss's device (no GPU sync per step)
        self.last_part_tensors: dict[str, torch.Tensor] = {}

    def _record(self, **parts: torch.Tensor) -> None:
        self.last_part_tensors = {k: v.detach() for k, v in parts.items()}

    @property
    def last_parts(self) -> dict[str, float]:
        """The parts of the last call as floats (forces a device sync: for logging at epoch end)."""
        return {k: float(v) for k, v in self.last_part_tensors.items()}


class BCELoss(_PartsLoss):
    """Binary cross-entropy with logits, mean over all pixels."""

    name = "bce"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(*_check(logits, targets))
        self._record(bce=loss)
        return loss


class DiceLoss(_PartsLoss):
    """``1 - soft Dice`` over the whole batch (see the module docstring); never a silent zero."""

    name = "dice"

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        if smooth <= 0:
            raise ConfigError(f"dice loss: smooth must be > 0 (keeps all-empty batches finite), got {smooth}")
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = 1.0 - soft_dice(logits, targets, self.smooth)
        self._record(dice=loss)
        return loss


class BCEDiceLoss(_PartsLoss):
    """The seed's ``bce_dice``: ``BCE + (1 - Dice)``; parts ``bce`` and ``dice`` (= 1 - Dice)."""

    name = "bce_dice"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(*_check(logits, targets))
        dice = 1.0 - soft_dice(logits, targets)
        self._record(bce=bce, dice=dice)
        return bce + dice


class BCELogDiceLoss(_PartsLoss):
    """The seed's ``bce_logdice``: ``BCE - log(Dice)``; parts ``bce`` and ``logdice`` (= -log Dice)."""

    name = "bce_logdice"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(*_check(logits, targets))
        logdice = -torch.log(soft_dice(logits, targets))
        self._record(bce=bce, logdice=logdice)
        return bce + logdice


class BinaryFocalLoss(_PartsLoss):
    """Focal loss ``-(1 - p_t)^gamma log(p_t)``, mean over pixels (smp ``FocalLoss``, binary, no alpha)."""

    name = "focal"

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.inner = FocalLoss(mode="binary", gamma=gamma, alpha=None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.inner(*_check(logits, targets))
        self._record(focal=loss)
        return loss


class LovaszHingeLoss(_PartsLoss):
    """Lovasz hinge per image, averaged over the batch (smp ``LovaszLoss``, binary, per_image)."""

    name = "lovasz"

    def __init__(self) -> None:
        super().__init__()
        self.inner = LovaszLoss(mode="binary", per_image=True, from_logits=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, t = _check(logits, targets)
        loss = self.inner(x, (t >= 0.5).float())
        self._record(lovasz=loss)
        return loss


LOSSES: dict[str, type[_PartsLoss]] = {
    cls.name: cls
    for cls in (BCELoss, DiceLoss, BCEDiceLoss, BCELogDiceLoss, BinaryFocalLoss, LovaszHingeLoss)
}


def list_losses() -> list[str]:
    """Valid loss names."""
    return sorted(LOSSES)


def _make(name: str) -> _PartsLoss:
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: valid names are {', '.join(list_losses())}")
    return LOSSES[key]()


class WeightedLoss(_PartsLoss):
    """``sum(weight * loss)`` over named parts; ``last_parts`` holds each part's unweighted value.

    ``last_parts`` also has ``"total"``, the weighted sum.
    """

    name = "weighted"

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        if not weights:
            raise ConfigError(f"loss weights are empty: give at least one of {', '.join(list_losses())}")
        self.weights: dict[str, float] = {}
        parts: dict[str, nn.Module] = {}
        for name, weight in weights.items():
            part = _make(name)
            try:
                w = float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"loss weight for {name!r} must be a number, got {weight!r}") from None
            if w < 0:
                raise ConfigError(f"loss weight for {name!r} must be >= 0, got {w}")
            self.weights[part.name] = w
            parts[part.name] = part
        self.parts = nn.ModuleDict(parts)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check(logits, targets)
        values = {name: part(logits, targets) for name, part in self.parts.items()}
        total = sum((self.weights[name] * value for name, value in values.items()), logits.new_zeros(()))
        self._record(**values, total=total)
        return total


def create_loss(spec: str | Mapping[str, float]) -> nn.Module:
    """A loss from a name (``"bce_dice"``) or a mapping of names to weights (``{"bce": 3, "dice": 1}``).

    Raises ConfigError for an unknown name (listing the valid ones) or a bad weight.
    """
    if isinstance(spec, str):
        return _make(spec)
    if isinstance(spec, Mapping):
        return WeightedLoss(spec)
    raise ConfigError(f"loss must be a name or a mapping name -> weight, got {spec!r}")
