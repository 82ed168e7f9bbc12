"""The LightningModule: device-side normalisation and Dice (equal to the numpy reference), no host
sync per step, float32 losses under bf16-mixed (CPU, 32 px, a few steps)."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import pneumoseg.data.dataset as dataset_module
from pneumoseg.training.losses import create_loss
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.models import create_model
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.training.module import SegmentationModule
from pneumoseg.training.schedules import optimizer_factory

PRE = Preprocessing(size=32, in_channels=1, mean=(0.5,), std=(0.25,))


def batches(n_batches: int = 3, n: int = 4, size: int = 32, seed: int = 0, soft: bool = False) -> list[dict]:
    """uint8 batches as the loader ships them: bright discs = masks (soft: fractional rims)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n_batches):
        imgs, masks = [], []
        for k in range(n):
            img = rng.normal(80, 20, (size, size))
            mask = np.zeros((size, size), np.uint8)
            if k % 2 == 0:
                cx, cy, r = [*rng.integers(8, size - 8, 2).tolist(), int(rng.integers(3, 7))]
                d = np.hypot(xx - cx, yy - cy)
                cover = np.clip(r + 0.5 - d, 0, 1) if soft else (d <= r)
                mask = (cover * 255).astype(np.uint8)
                img[d <= r] += 90
            imgs.append(np.clip(img, 0, 255).astype(np.uint8))
            masks.append(mask)
        m = torch.from_numpy(np.stack(masks))[:, None]
        out.append({"image": torch.from_numpy(np.stack(imgs))[:, None], "mask": m,
                    "label": (m.flatten(1).amax(1) > 0).float(), "image_id": [f"i{k}" for k in range(n)]})
    return out


def module(postprocess: PostProcess | None = None, seed: int = 0, lr: float = 1e-3) -> SegmentationModule:
    torch.manual_seed(seed)
    return SegmentationModule(create_model("unet", in_channels=1), create_loss("bce_dice"),
                              optimizer_factory("adam", lr=lr), PRE, postprocess=postprocess)


def reference_dice(net: torch.nn.Module, data: list[dict], pp: PostProcess) -> tuple[float, float]:
    """numpy reference: normalise with PRE, predict, PostProcess.apply_batch, metrics.dice_per_image."""
    dice, positive = [], []
    with torch.no_grad():
        for b in data:
            probs = torch.sigmoid(net.eval()(PRE(b["image"]))).numpy()
            truth = b["mask"][:, 0].numpy() >= 128
            dice.append(dice_per_image(pp.apply_batch(probs), truth))
            positive.append(truth.reshape(len(truth), -1).any(1))
    d, p = np.concatenate(dice), np.concatenate(positive)
    return float(d.mean()), float(d[p].mean())


def trainer(**kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_one_normalisation_source() -> None:
    """The dataset no longer normalises; the module applies the model's Preprocessing on the device."""
    assert not hasattr(dataset_module, "normalize")
    b = batches(1)[0]
    out = module().on_after_batch_transfer(dict(b), 0)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (4, 1, 32, 32)
    assert torch.equal(out["image"], PRE(b["image"]))
    assert torch.equal(out["mask"], b["mask"].float() / 255)
    three = Preprocessing(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = three(b["image"])
    assert x.shape == (4, 3, 32, 32)
    ref = (b["image"].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-6)
    assert np.allclose(three.numpy(b["image"].numpy()), ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("pp", [PostProcess(0.5), PostProcess(0.3, min_area=25),
                                PostProcess(0.5, min_area=20, top_threshold=0.7, bottom_threshold=0.4)],
                         ids=["plain", "min_area_host", "triplet"])
def test_validation_dice_on_device_equals_numpy_reference(pp: PostProcess) -> None:
    data = batches(3, soft=True)
    m = module(pp)
    # some confident pixels, so that thresholds and min_area matter: a few training steps first
    trainer(max_steps=6, limit_val_batches=0).fit(m, DataLoader(data * 2, batch_size=None))
    metrics = trainer().validate(m, DataLoader(data, batch_size=None), verbose=False)[0]
    dice, dice_pos = reference_dice(m.net, data, pp)
    assert metrics["val/dice_kaggle"] == pytest.approx(dice, abs=1e-6)
    assert metrics["val/dice_positive"] == pytest.approx(dice_pos, abs=1e-6)
    assert 0 < dice < 1


def test_train_dice_on_device_equals_numpy_reference() -> None:
    """lr 0: the weights do not move, so the epoch's train Dice is the reference on the same batches."""
    data = batches(3)
    m = module(lr=0.0)
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(m, DataLoader(data, batch_size=None))
    m.net.train()  # training-mode forward (batch statistics) as in the steps
    dice = []
    with torch.no_grad():
        for b in data:
            probs = torch.sigmoid(m.net(PRE(b["image"]))).numpy()
            dice.append(dice_per_image(probs[:, 0] > 0.5, b["mask"][:, 0].numpy() >= 128))
    assert float(t.callback_metrics["train/dice_kaggle"]) == pytest.approx(float(np.concatenate(dice).mean()),
                                                                          abs=1e-6)


def test_steps_do_not_sync_with_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """training_step / validation_step never read a tensor back (.item, float(), .cpu, .numpy, .tolist)."""
    m = module()
    b = m.on_after_batch_transfer(batches(1)[0], 0)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host sync in a step")

    for name in ("item", "__float__", "cpu", "numpy", "tolist", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached: log() warns and returns
        m.training_step(b, 0)
        m.validation_step(b, 0)
    monkeypatch.undo()
    assert int(m.val_metric.compute()["n_images"]) == 4 and int(m.train_metric.n_images) == 4


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())


def test_bf16_mixed_trains_like_fp32() -> None:
    """bf16-mixed on CPU: the loss is float32 and follows the fp32 run within bf16's precision."""
    data = batches(4, seed=1)
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        m, rec = module(seed=3), LossRecorder()
        trainer(max_steps=4, limit_val_batches=0, precision=precision, callbacks=[rec]).fit(
            m, DataLoader(data, batch_size=None))
        assert all(loss.dtype == torch.float32 for loss in rec.losses)
        assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay float32
        runs[precision] = torch.stack(rec.losses)
    assert torch.allclose(runs["bf16-mixed"], runs["32-true"], rtol=2e-2), runs
    assert not torch.equal(runs["bf16-mixed"], runs["32-true"])  # autocast did run in bf16
