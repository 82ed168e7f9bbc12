"""Model registry contract: every family builds, runs forward/backward at 64 px, returns logits."""

from __future__ import annotations

import socket  # noqa: F401  (patched below)
import time

import pytest
import segmentation_models_pytorch as smp
import torch
import typer
from typer.testing import CliRunner

from pneumoseg.errors import ConfigError
from pneumoseg.models import (
    UNet,
    check_online,
    create_model,
    is_model,
    list_models,
    load_weights_file,
    parse_smp_name,
    register_model,
)
from pneumoseg.models.smp_models import CURATED_ARCHS, CURATED_ENCODERS

SIZE = 64
# Every architecture family once with a light encoder, plus each curated encoder family once.
CONTRACT = ["unet", "unet_bn", "uxception", *(f"{arch}-resnet18" for arch in CURATED_ARCHS)]
ENCODERS = [f"unet-{enc}" for enc in ("efficientnet-b0", "se_resnext50_32x4d", "densenet121", "mobilenet_v2")]


def _forward_backward(model: torch.nn.Module, channels: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
    x = torch.randn(2, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    loss = logits.float().pow(2).mean() + (out[1].float().pow(2).mean() if isinstance(out, tuple) else 0)
    loss.backward()
    # every parameter is trained (smp's unused EfficientNet head is removed: DDP needs this)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return out


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", CONTRACT)
def test_contract_forward_backward(name: str, channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels)
    out = _forward_backward(model, channels)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 1, SIZE, SIZE)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_families_forward(name: str) -> None:
    out = _forward_backward(create_model(name, in_channels=1), 1)
    assert out.shape == (2, 1, SIZE, SIZE)


@pytest.mark.parametrize("name", ["unet", "uxception", "unet-resnet18", "fpn-resnet18"])
def test_aux_classifier(name: str) -> None:
    out = _forward_backward(create_model(name, in_channels=1, aux_classifier=True), 1)
    assert isinstance(out, tuple)
    mask_logits, class_logits = out
    assert mask_logits.shape == (2, 1, SIZE, SIZE)
    assert class_logits.shape == (2, 1)


def test_all_listed_models_build_on_meta() -> None:
    names = list_models()
    assert {"unet", "uxception", "unet-resnet34", "unet-efficientnet-b0", "deeplabv3plus-resnet34"} <= set(
        names
    )
    assert len(names) == 3 + len(CURATED_ARCHS) * len(CURATED_ENCODERS) - 1  # unet, unet_bn, uxception; no deeplabv3plus-densenet121
    for name in names:
        with torch.device("meta"):
            model = create_model(name)
        assert sum(p.numel() for p in model.parameters()) > 0, name


def test_seed_unet_parameter_count() -> None:
    def conv(cin: int, cout: int, k: int) -> int:
        return k * k * cin * cout + cout

    def pair(cin: int, cout: int) -> int:
        return conv(cin, cout, 3) + conv(cout, cout, 3)

    encoder = pair(1, 8) + pair(8, 16) + pair(16, 32) + pair(32, 64) + pair(64, 64) + pair(64, 128)
    decoder = (
        conv(128, 64, 2) + pair(64 + 64, 64)  # up to the 64-wide skip (stride 16)
        + conv(64, 32, 2) + pair(32 + 64, 32)  # the seed narrows to 32 here
        + conv(32, 32, 2) + pair(32 + 32, 32)
        + conv(32, 16, 2) + pair(16 + 16, 16)
        + conv(16, 8, 2) + pair(8 + 8, 8)
        + conv(8, 1, 1)
    )  # fmt: skip
    assert encoder + decoder == 600_585
    assert sum(p.numel() for p in UNet().parameters()) == 600_585


def test_unet_rejects_size_not_divisible_by_32() -> None:
    with pytest.raises(ConfigError, match=r"divisible by 32.*60x64"):
        UNet()(torch.zeros(1, 1, 60, 64))


@pytest.mark.parametrize("size", [256])
def test_uxception_larger_input(size: int) -> None:
    model = create_model("uxception").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, size, size)).shape == (1, 1, size, size)


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("unett")
    message = str(info.value)
    assert "'unett'" in message and "did you mean 'unet'" in message and "pneumoseg models" in message
    assert "uxception" not in message  # no list of every name
    assert not is_model("unett") and is_model("unet")


def test_unknown_smp_parts() -> None:
    with pytest.raises(ConfigError, match=r"unknown smp encoder 'resnet35'.*resnet34"):
        parse_smp_name("unet-resnet35")
    with pytest.raises(ConfigError, match=r"unknown smp architecture 'unnet'.*unetplusplus"):
        parse_smp_name("unnet-resnet34")
    with pytest.raises(ConfigError, match="dilated"):
        create_model("deeplabv3plus-densenet121")


def test_any_smp_combination_resolves() -> None:
    assert parse_smp_name("unet-efficientnet-b0") == ("unet", "efficientnet-b0")
    assert parse_smp_name("fpn-tu-resnet18") == ("fpn", "tu-resnet18")
    assert "unetplusplus-vgg11" not in list_models()
    with torch.device("meta"):
        model = create_model("unetplusplus-vgg11", in_channels=3, decoder_attention_type="scse")
    assert isinstance(model, smp.UnetPlusPlus)
    assert model.encoder.features[0].in_channels == 3


def test_list_models_wildcard() -> None:
    assert list_models("uxc*") == ["uxception"]
    fpn = list_models("fpn-*")
    assert fpn and all(n.startswith("fpn-") for n in fpn)
    assert list_models("*resnet34") == sorted(n for n in list_models() if n.endswith("resnet34"))


def test_duplicate_registration_raises() -> None:
    def unet(**kwargs: object) -> torch.nn.Module:
        return UNet()

    with pytest.raises(ConfigError, match="already registered"):
        register_model(unet)


def test_local_encoder_weights_round_trip(tmp_path) -> None:
    source = create_model("unet-resnet18")
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.state_dict(), path)
    loaded = create_model("unet-resnet18", encoder_weights=str(path))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    # the decoder is not in the file: still random, so it differs
    assert not torch.equal(loaded.segmentation_head[0].weight, source.segmentation_head[0].weight)


def test_local_full_model_weights_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    source = create_model("unet")
    path = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_model("unet", encoder_weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    counts = load_weights_file(create_model("unet"), path)
    assert counts == {"loaded": len(source.state_dict()), "missing": 0, "unexpected": 0, "mismatched": 0}


def test_weights_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("unet", encoder_weights=str(tmp_path / "missing.pth"))
    path = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="none of its 1 keys match"):
        create_model("unet", encoder_weights=path)


@pytest.mark.parametrize("name", ["unet-resnet34", "uxception"])
def test_imagenet_offline_fails_fast(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        create_model(name, encoder_weights="imagenet")
    assert time.monotonic() - start < 5


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PNEUMOSEG_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(address: tuple[str, int], timeout: float) -> None:
        assert timeout <= 3
        raise OSError("connection timed out")

    monkeypatch.setattr("socket.create_connection", refuse)
    with pytest.raises(ConfigError, match=r"huggingface.co unreachable"):
        check_online("test weights")
    with pytest.raises(ConfigError, match="unreachable"):
        create_model("unet-resnet18", encoder_weights="imagenet")


def test_unet_has_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match="no 'imagenet' weights"):
        create_model("unet", encoder_weights="imagenet")


def test_models_cli_lists_names_and_counts() -> None:
    from pneumoseg.cli.models import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `models` a subcommand
    result = CliRunner().invoke(app, ["models", "unet*"])
    assert result.exit_code == 0, result.output
    assert "unet-resnet34" in result.output and "0.60 M" in result.output
    result = CliRunner().invoke(app, ["models", "nothing*"])
    assert result.exit_code == 2 and "no model matches" in result.output
