"""The streaming (torchmetrics) forms of the challenge metric, counted on the device during training.

``DiceKaggle``: ``dice_kaggle`` / ``dice_positive`` of thresholded predictions, batch by batch;
``GridDice``: the same for every rule of a post-processing grid at once (the tuned validation
score). The rules themselves live in :mod:`pneumoseg.scoring.postprocess` (``grid_counts``, in
:mod:`pneumoseg.scoring.grid`, is the torch form of ``PostProcess``) and the per-image Dice in
:mod:`pneumoseg.scoring.metrics`; this module only accumulates their counts over batches and DDP ranks. Kept apart so that inference
(``predict``, the service) does not import torchmetrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from pneumoseg.scoring.metrics import dice_from_counts
from pneumoseg.scoring.grid import grid_counts

__all__ = ["DiceKaggle", "GridDice"]


def _count(flat: torch.Tensor) -> torch.Tensor:
    """True pixels per row of a bool (N, P) tensor, int32 (a uint8 view: 2x faster than a bool sum on CPU)."""
    return flat.view(torch.uint8).sum(1, dtype=torch.int32)


class DiceKaggle(Metric):
    """Streaming ``dice_kaggle`` and ``dice_positive`` (torchmetrics): ``update`` per batch, ``compute`` once.

    ``update(pred, true)`` takes binary masks (N, 1, H, W) or (N, H, W), nonzero = positive, as
    torch tensors (counted on their device: no host sync) or numpy arrays. The state is four
    sums (Dice over all images, their count, Dice over images with a non-empty truth, their count),
    summed over DDP ranks by torchmetrics when ``compute`` runs, so ranks may see different
    numbers of images. ``compute()`` returns ``{"dice_kaggle", "dice_positive", "n_images",
    "n_positive"}`` as 0-d tensors (NaN Dice when no image / no positive image), or only the one
    named by ``result`` (a 0-d tensor: what ``LightningModule.log`` takes).
    """

    full_state_update = False
    dice_sum: torch.Tensor
    n_images: torch.Tensor
    pos_dice_sum: torch.Tensor
    n_positive: torch.Tensor

    def __init__(self, result: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if result not in (None, "dice_kaggle", "dice_positive", "n_images", "n_positive"):
            raise ValueError(f"DiceKaggle: unknown result {result!r} "
                             "(valid: None, dice_kaggle, dice_positive, n_images, n_positive)")
        self.result = result
        dtype = torch.float64
        for name in ("dice_sum", "n_images", "pos_dice_sum", "n_positive"):
            self.add_state(name, default=torch.zeros((), dtype=dtype), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, pred: Any, true: Any) -> None:  # type: ignore[override]
        p, t = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in (pred, true))
        p, t = p.to(self.dice_sum.device), t.to(self.dice_sum.device)
        if p.shape != t.shape:
            raise ValueError(f"pred and true masks differ in shape: {tuple(p.shape)} vs {tuple(t.shape)}")
        if p.ndim not in (3, 4) or (p.ndim == 4 and p.shape[1] != 1):
            raise ValueError(f"expected (N, H, W) or (N, 1, H, W) masks, got shape {tuple(p.shape)}")
        pf = (p if p.dtype == torch.bool else p != 0).reshape(p.shape[0], -1)
        tf = (t if t.dtype == torch.bool else t != 0).reshape(pf.shape)
        true_area = _count(tf)
        dice = dice_from_counts(_count(pf & tf), _count(pf), true_area).to(self.dice_sum.dtype)
        positive = true_area > 0
        self.dice_sum += dice.sum()
        self.n_images += dice.numel()
        self.pos_dice_sum += (dice * positive).sum()
        self.n_positive += positive.sum()

    def compute(self) -> Any:
        nan = torch.full_like(self.dice_sum, math.nan)
        mean_pos = self.pos_dice_sum / self.n_positive.clamp(min=1)
        values = {
            "dice_kaggle": torch.where(self.n_images > 0, self.dice_sum / self.n_images.clamp(min=1), nan),
            "dice_positive": torch.where(self.n_positive > 0, mean_pos, nan),
            "n_images": self.n_images.clone(),
            "n_positive": self.n_positive.clone(),
        }
        return values if self.result is None else values[self.result]


class GridDice(Metric):
    """Streaming challenge metric of every rule of a grid (torchmetrics): the tuned validation score.

    ``update(probs, truth)`` per batch (see ``grid_counts`` for shapes; counted on the device, no
    host sync); ``compute()`` (summed over DDP ranks) returns 0-d tensors: ``dice_kaggle`` and
    ``dice_positive`` of the best rule (highest mean per-image Dice over all images, empty/empty =
    1; ties keep grid order), ``pred_positive`` (its share of images predicted non-empty),
    ``rule_index``, and ``positives_found``: the largest share, over all rules, of positive images
    given a non-empty mask (0: even the loosest rule predicts nothing where there is something).
    ``rule(index)`` gives the rule as ``PostProcess`` keywords.
    """

    full_state_update = False
    dice_sum: torch.Tensor
    pos_dice_sum: torch.Tensor
    nonempty: torch.Tensor
    pos_found: torch.Tensor
    n_images: torch.Tensor
    n_positive: torch.Tensor

    def __init__(self, rules: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not rules:
            raise ValueError("GridDice: the grid is empty")
        self.rules = [dict(r) for r in rules]
        n = len(self.rules)
        for name in ("dice_sum", "pos_dice_sum", "nonempty", "pos_found"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_images", "n_positive"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, probs: torch.Tensor, truth: torch.Tensor) -> None:  # type: ignore[override]
        inter, pred, true = grid_counts(probs, truth, self.rules)
        dice = dice_from_counts(inter, pred, true[None].expand_as(pred)).to(self.dice_sum.dtype)
        positive = (true > 0).to(self.dice_sum.dtype)  # (N,)
        found = (pred > 0).to(self.dice_sum.dtype)
        self.dice_sum += dice.sum(1)
        self.pos_dice_sum += (dice * positive).sum(1)
        self.nonempty += found.sum(1)
        self.pos_found += (found * positive).sum(1)
        self.n_images += true.numel()
        self.n_positive += positive.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n, n_pos = self.n_images.clamp(min=1), self.n_positive.clamp(min=1)
        dice = self.dice_sum / n
        best = int(torch.argmax(dice))  # the first of equal maxima
        nan = torch.full_like(self.n_images, math.nan)
        return {
            "dice_kaggle": dice[best],
            "dice_positive": torch.where(self.n_positive > 0, self.pos_dice_sum[best] / n_pos, nan),
            "pred_positive": self.nonempty[best] / n,
            "positives_found": torch.where(self.n_positive > 0, self.pos_found.max() / n_pos, nan),
            "rule_index": torch.tensor(best, device=dice.device),
        }

    def rule(self, index: int) -> dict[str, Any]:
        """Rule ``index`` of the grid as ``PostProcess`` keywords (areas in training-size pixels)."""
        return dict(self.rules[index])
