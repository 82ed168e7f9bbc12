"""The model's preprocessing: the numbers of each normalisation, shapes, devices, dict round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumoseg.config import load_config
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.models.preprocessing import Preprocessing

IMG = np.array([[0, 255], [128, 64]], np.uint8)


@pytest.mark.parametrize(
    ("overrides", "mean", "std"),
    [
        ([], (0.5,), (0.25,)),  # gray: (x / 255 - 0.5) / 0.25
        (["data.in_channels=3"], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # auto -> imagenet
        (["data.in_channels=3", "data.normalize=gray"], (0.5,) * 3, (0.25,) * 3),
    ],
)
def test_from_config_numbers(overrides: list[str], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    pre = Preprocessing.from_config(load_config(None, ["data.size=64", *overrides]))
    assert (pre.size, pre.mean, pre.std) == (64, mean, std) and pre.in_channels == len(mean)
    x = pre(IMG)
    assert x.shape == (1, len(mean), 2, 2) and x.dtype == torch.float32
    for c in range(len(mean)):  # hand-worked: pixel 255 -> (1 - mean) / std, pixel 0 -> -mean / std
        assert x[0, c, 0, 1].item() == pytest.approx((1 - mean[c]) / std[c], rel=1e-6)
        assert x[0, c, 0, 0].item() == pytest.approx(-mean[c] / std[c], rel=1e-6)
    assert np.allclose(pre.numpy(IMG), x.numpy(), atol=1e-6)


def test_one_channel_imagenet_is_the_mean_of_imagenet() -> None:
    cfg = load_config(None, ["data.in_channels=3"])
    cfg.data.in_channels = 1  # the config refuses this combination; the rule is still defined
    pre = Preprocessing.from_config(cfg)
    assert pre.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert pre.std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))


def test_shapes_and_device() -> None:
    pre = Preprocessing(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = np.stack([IMG, IMG[::-1]])
    for x in (batch, batch[:, None], torch.from_numpy(batch), torch.from_numpy(batch)[:, None]):
        out = pre(x)
        assert out.shape == (2, 3, 2, 2) and torch.equal(out[0], pre(IMG)[0])
        assert out.device == torch.as_tensor(x).device
    assert pre.numpy(batch[:, None]).shape == (2, 3, 2, 2) and pre.numpy(batch).dtype == np.float32
    with pytest.raises(DataError, match="uint8"):
        pre(IMG.astype(np.float32) / 255)
    with pytest.raises(DataError, match="shape"):
        pre(np.zeros((2, 2, 2, 2, 2), np.uint8))


def test_dict_round_trip_and_errors() -> None:
    pre = Preprocessing.from_config(load_config(None, ["data.in_channels=3"]))
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.to_dict() == {"size": 512, "in_channels": 3, "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225]}
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['std'\]"):
        Preprocessing.from_dict({"size": 64, "in_channels": 1, "mean": [0.5]})
    with pytest.raises(ConfigError, match="mean must be 3"):
        Preprocessing(64, 3, (0.5,), (0.25, 0.25, 0.25))
    with pytest.raises(ConfigError, match="std must be > 0"):
        Preprocessing(64, 1, (0.5,), (0.0,))
    with pytest.raises(ConfigError, match="in_channels must be 1 or 3"):
        Preprocessing(64, 2, (0.5, 0.5), (0.2, 0.2))
