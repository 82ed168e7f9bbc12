"""The LightningModule: steps, metrics and optimizers around a finished network and loss.

It receives the network (any ``nn.Module`` returning (N, 1, H, W) logits, or a tuple
``(mask_logits, class_logits (N, 1))``), the loss (logits, targets -> scalar; ``last_part_tensors``
is logged when present), an optimizer factory, an optional scheduler factory, the model's
:class:`~pneumoseg.models.preprocessing.Preprocessing` and the post-processing that turns
probabilities into masks. It reads no config and knows no model.

Batches are dicts from ``pneumoseg.data.dataset``: ``image`` (N, 1, H, W) uint8, ``mask``
(N, 1, H, W) uint8 (target x 255; soft or 0/255), ``label`` (N,) float32. They cross to the
device as uint8 (4x fewer bytes than float32); ``on_after_batch_transfer`` then normalises the
images there with the preprocessing (float32 (N, C, H, W)) and turns the masks into float32
targets in [0, 1]. Losses get those targets (soft ones as they are); metrics cut them at 0.5.

Logged (per epoch):

* ``train/loss`` (and ``train/<part>`` for each part of the loss, ``train/aux_bce`` for the
  image-level head), ``train/dice_kaggle`` (``train_dice``: mean per-image Dice of the training
  batches at ``prob > threshold``, without ``min_area``);
* ``val/loss``, ``val/dice_kaggle`` (mean per-image Dice over all validation images, the
  challenge metric), ``val/dice_positive`` (over images with a mask), after ``postprocess``;
  ``val/pred_positive``: the share of validation images whose predicted mask is not empty;
  ``val/empty_baseline``: what predicting nothing scores in ``val/dice_kaggle`` (the share of
  validation images without a mask; ``scoring.stats.predict_nothing_dice``);
* the winner's validation (with a ``val_grid``, ``scoring.grid.validation_grid``): every
  rule of the grid scored on the same probabilities (``GridDice``, on the device, one pass), and
  the best logged: ``val/dice_kaggle_tuned`` (what ``train.monitor`` follows by default),
  ``val/dice_positive_tuned``, ``val/pred_positive_tuned`` and the rule itself as
  ``val/rule_top``, ``val/rule_min_area_train_px`` (pixels at the training size) and
  ``val/rule_bottom``; ``val/positives_found``: the largest share, over the grid, of positive
  validation images given a non-empty mask (0: even the loosest rule predicts nothing, which
  ``pneumoseg.training.run`` flags).

Dice is counted on the device in :class:`~pneumoseg.scoring.streaming.DiceKaggle` (torchmetrics) and reduced
over DDP ranks once per epoch: no per-step host sync in training or validation. Exceptions:
validation with a ``postprocess`` that needs connected components (``min_area > 0``, plain mode)
copies each validation batch's probabilities to the CPU for it; with a progress bar, the per-step
``loss`` shown in it is read back every step (Lightning converts progress-bar values to floats).

Mixed precision: the network runs under Lightning's autocast; the loss is computed in float32
outside it (``logits.float()``), and the weights and optimizer state stay float32.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric

from pneumoseg.data.dataset import mask_to_target
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.streaming import DiceKaggle, GridDice
from pneumoseg.training.schedules import OptimizerFactory, SchedulerFactory

__all__ = ["SegmentationModule"]


class SegmentationModule(L.LightningModule):
    """Train / validate a segmentation network (see the module docstring).

    Args:
        net: the network.
        loss: the loss module.
        optimizer: ``params -> Optimizer`` (``schedules.optimizer_factory``).
        preprocessing: uint8 -> model input; saved in every checkpoint (``"preprocessing"``).
        scheduler: ``optimizer -> lr_scheduler dict | None`` (``schedules.scheduler_factory``).
        postprocess: probabilities -> masks for validation Dice; default ``PostProcess(0.5)``.
        aux_weight: weight of the image-level BCE when ``net`` returns class logits.
        channels_last: on CUDA, keep the network and inputs in channels-last memory format.
        train_dice: log ``train/dice_kaggle`` (counted on the device).
        val_grid: post-processing rules (``validation_grid``) scored each validation epoch; None: none.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: OptimizerFactory,
                 preprocessing: Preprocessing, scheduler: SchedulerFactory | None = None, *,
                 postprocess: PostProcess | None = None, aux_weight: float = 0.0, channels_last: bool = False,
                 train_dice: bool = True, val_grid: Any = None) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.preprocessing = preprocessing
        self.postprocess = postprocess or PostProcess(0.5)
        self.aux_weight = aux_weight
        self.channels_last = channels_last
        self.train_dice = train_dice
        self._use_channels_last = False
        self.train_metric = DiceKaggle(result="dice_kaggle")
        self.val_metric = DiceKaggle()
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_pred_positive = MeanMetric(nan_strategy="disable")
        self.val_grid = GridDice(val_grid) if val_grid else None

    # ------------------------------------------------------------------ batches
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: uint8 images -> normalised float32 (N, C, H, W); uint8 masks -> float targets."""
        if isinstance(batch, dict) and batch.get("image") is not None and batch["image"].dtype == torch.uint8:
            batch = dict(batch)
            batch["image"] = self.preprocessing(batch["image"])
            if batch.get("mask") is not None and batch["mask"].dtype == torch.uint8:
                batch["mask"] = mask_to_target(batch["mask"])
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["preprocessing"] = self.preprocessing.to_dict()

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
        with torch.autocast(self.device.type, enabled=False):  # every loss in float32
            loss = self.loss(mask_logits.float(), batch["mask"].float())
            parts = {k: v for k, v in getattr(self.loss, "last_part_tensors", {}).items() if k != "total"}
            if class_logits is not None and self.aux_weight > 0:
                aux = F.binary_cross_entropy_with_logits(class_logits.reshape(-1).float(),
                                                         batch["label"].float())
                loss = loss + self.aux_weight * aux
                parts["aux_bce"] = aux.detach()
        return loss, mask_logits, parts

    def _device_masks(self, mask_logits: torch.Tensor, plain: bool) -> torch.Tensor | None:
        """bool (N, 1, H, W) predicted masks on the device, or None when the rule needs the CPU."""
        pp = self.postprocess
        probs = torch.sigmoid(mask_logits.detach().float())
        if plain or (pp.mode == "plain" and pp.min_area == 0):
            return probs > pp.threshold
        if pp.top_threshold is not None:  # the triplet rule
            n_top = (probs > pp.top_threshold).flatten(1).sum(1)
            return (probs > pp.mask_threshold) & (n_top >= pp.min_area).view(-1, 1, 1, 1)
        return None

    def _update(self, metric: DiceKaggle, mask_logits: torch.Tensor, targets: torch.Tensor,
                plain: bool) -> None:
        truth = targets.detach() >= 0.5
        pred = self._device_masks(mask_logits, plain)
        if pred is None:  # connected components: numpy post-processing on the host
            probs = torch.sigmoid(mask_logits.detach().float()).cpu().numpy()
            pred = torch.from_numpy(self.postprocess.apply_batch(probs)).to(truth.device)[:, None]
        metric.update(pred, truth)
        if metric is self.val_metric:
            self.val_pred_positive.update(pred.flatten(1).any(1).to(torch.float32))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, mask_logits, parts = self._step(batch)
        n = batch["image"].shape[0]
        if self._trainer is not None and self._trainer.progress_bar_callback is not None:
            # Lightning turns progress-bar values into floats every step (a host sync): only with a bar
            self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False,
                     batch_size=n)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        if self.train_dice:
            self._update(self.train_metric, mask_logits, batch["mask"], plain=True)
            # Lightning computes the metric (summed over ranks by torchmetrics) and resets it per epoch
            self.log("train/dice_kaggle", self.train_metric, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()
        self.val_loss.reset()
        self.val_pred_positive.reset()
        if self.val_grid is not None:
            self.val_grid.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, mask_logits, _ = self._step(batch)
        self.val_loss.update(loss.detach(), weight=batch["image"].shape[0])
        self._update(self.val_metric, mask_logits, batch["mask"], plain=False)
        if self.val_grid is not None:
            self.val_grid.update(torch.sigmoid(mask_logits.detach().float()), batch["mask"].detach() >= 0.5)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metric.compute()  # summed over ranks once per epoch
        if int(values["n_images"]) == 0:
            return
        metrics = {
            "val/loss": self.val_loss.compute().float(),
            "val/dice_kaggle": values["dice_kaggle"].float(),
            "val/dice_positive": values["dice_positive"].float(),
            "val/pred_positive": self.val_pred_positive.compute().float(),
            # dice_kaggle of an empty mask on every validation image: the share of images without one
            "val/empty_baseline": 1.0 - values["n_positive"].float() / values["n_images"].float(),
        }
        if self.val_grid is not None:
            tuned = self.val_grid.compute()
            rule = self.val_grid.rule(int(tuned["rule_index"]))
            metrics.update({
                "val/dice_kaggle_tuned": tuned["dice_kaggle"].float(),
                "val/dice_positive_tuned": tuned["dice_positive"].float(),
                "val/pred_positive_tuned": tuned["pred_positive"].float(),
                "val/positives_found": tuned["positives_found"].float(),
                "val/rule_top": torch.tensor(float(rule["top_threshold"])),
                "val/rule_min_area_train_px": torch.tensor(float(rule["min_area"])),
                "val/rule_bottom": torch.tensor(float(rule["bottom_threshold"])),
            })
        # the values are already reduced over ranks, hence equal on all of them
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.net.parameters())
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
