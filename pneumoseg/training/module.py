"""The LightningModule: steps, metrics and optimizers around a finished network and loss.

It receives the network (any ``nn.Module`` returning (N, 1, H, W) logits, or a tuple
``(mask_logits, class_logits (N, 1))``), the loss (logits, targets -> scalar; ``last_parts`` is
logged when present), an optimizer factory, an optional scheduler factory and the
post-processing that turns probabilities into masks. It reads no config and knows no model.

Logged (per epoch; ``sync_dist``):

* ``train/loss`` (and ``train/<part>`` for each part of the loss, ``train/aux_bce`` for the
  image-level head), ``train/dice_kaggle``;
* ``val/loss``, ``val/dice_kaggle`` (mean per-image Dice over all validation images, the
  challenge metric), ``val/dice_positive`` (over images with a mask), computed with
  ``pneumoseg.metrics.dice_per_image`` after ``postprocess``. Validation sums are reduced over
  DDP ranks once per epoch, so ranks may hold different numbers of images.

Batches are dicts from ``pneumoseg.data.dataset``: ``image`` (N, C, H, W) float32, ``mask``
(N, 1, H, W) float32 {0, 1}, ``label`` (N,) float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumoseg.metrics import dice_per_image
from pneumoseg.postprocess import PostProcess
from pneumoseg.training.schedules import OptimizerFactory, SchedulerFactory

__all__ = ["SegmentationModule"]

#: probabilities float32 (N, 1, H, W) numpy -> bool masks (N, H, W)
Binarizer = Callable[[np.ndarray], np.ndarray]


class SegmentationModule(L.LightningModule):
    """Train / validate a segmentation network (see the module docstring).

    Args:
        net: the network.
        loss: the loss module.
        optimizer: ``params -> Optimizer`` (``schedules.optimizer_factory``).
        scheduler: ``optimizer -> lr_scheduler dict | None`` (``schedules.scheduler_factory``).
        postprocess: probabilities -> masks for validation Dice; default ``PostProcess(0.5)``.
        aux_weight: weight of the image-level BCE when ``net`` returns class logits.
        channels_last: on CUDA, keep the network and inputs in channels-last memory format.
        train_dice: log ``train/dice_kaggle`` (copies each batch's probabilities to the CPU).
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, *, postprocess: Binarizer | None = None,
                 aux_weight: float = 0.0, channels_last: bool = False, train_dice: bool = True) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.postprocess: Binarizer = postprocess or PostProcess(0.5).apply_batch
        self.aux_weight = aux_weight
        self.channels_last = channels_last
        self.train_dice = train_dice
        self._use_channels_last = False
        self._val_sums = torch.zeros(5, dtype=torch.float64)

    # ------------------------------------------------------------------ forward and steps
    def forward(self, x: torch.Tensor) -> Any:
        if self._use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self) -> None:
        self._use_channels_last = self.channels_last and self.device.type == "cuda"
        if self._use_channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        out = self(batch["image"])
        mask_logits, class_logits = out if isinstance(out, tuple | list) else (out, None)
        loss = self.loss(mask_logits, batch["mask"])
        parts = {k: v for k, v in getattr(self.loss, "last_part_tensors", {}).items() if k != "total"}
        if class_logits is not None and self.aux_weight > 0:
            aux = F.binary_cross_entropy_with_logits(class_logits.reshape(-1).float(), batch["label"].float())
            loss = loss + self.aux_weight * aux
            parts["aux_bce"] = aux.detach()
        return loss, mask_logits, parts

    def _dice(self, mask_logits: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        probs = torch.sigmoid(mask_logits.detach().float()).cpu().numpy()
        pred = self.postprocess(probs)
        return dice_per_image(pred, masks.detach().cpu().numpy() > 0.5)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, mask_logits, parts = self._step(batch)
        n = batch["image"].shape[0]
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False,
                 batch_size=n)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        if self.train_dice:
            dice = self._dice(mask_logits, batch["mask"])
            self.log("train/dice_kaggle", float(dice.mean()), on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(5, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, mask_logits, _ = self._step(batch)
        dice = self._dice(mask_logits, batch["mask"])
        positive = batch["mask"].detach().flatten(1).amax(1).cpu().numpy() > 0.5
        n = len(dice)
        self._val_sums += torch.tensor([float(loss.detach()) * n, n, dice.sum(), dice[positive].sum(),
                                        positive.sum()], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums.to(self.device, torch.float32), reduce_op="sum")
        loss_sum, n, dice_sum, pos_dice_sum, n_pos = (float(v) for v in sums)
        if n == 0:
            return
        metrics = {
            "val/loss": loss_sum / n,
            "val/dice_kaggle": dice_sum / n,
            "val/dice_positive": pos_dice_sum / n_pos if n_pos else float("nan"),
        }
        # the values are already summed over ranks, hence equal on all of them
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.net.parameters())
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
