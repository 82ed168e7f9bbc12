"""The seed's first U-Net: a small from-scratch network (600,585 parameters at in_channels=1).

Input: float32 (N, C, H, W) with H and W divisible by 32 (five 2x2 max-poolings).
Output: logits (N, classes, H, W), or ``(mask_logits, class_logits (N, classes))`` when built
with ``aux_classifier=True``. The seed ended in a sigmoid; here the network returns logits and
the sigmoid is applied by the loss (``pneumoseg.training.losses``) or by ``pneumoseg.scoring.postprocess``.

Layout (the Keras kernel the seed copied, layer for layer):

* encoder: five conv pairs (3x3 conv, "same" padding, ReLU, twice) of widths 8-16-32-64-64, a
  2x2 max-pool after each;
* bottleneck: a conv pair of width 128;
* decoder: five steps of 2x2 stride-2 transposed conv, concatenation with the matching
  encoder output, conv pair; the transposed convs and conv pairs have widths 64-32-32-16-8
  (the seed narrows to 32 one level early, at the 64-wide skip: kept as is);
* head: 1x1 conv to ``classes`` logits.

``unet_bn`` is the same network with BatchNorm after every 3x3 conv (before the ReLU): not in
the seed, but it trains from scratch several times faster (the built-in demo uses it).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pneumoseg.errors import ConfigError
from pneumoseg.models.registry import register_model

__all__ = ["BOTTLENECK_WIDTH", "DECODER_WIDTHS", "ENCODER_WIDTHS", "UNet"]

ENCODER_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 64)
DECODER_WIDTHS: tuple[int, ...] = (64, 32, 32, 16, 8)
BOTTLENECK_WIDTH = 128


class ConvPair(nn.Sequential):
    """(3x3 conv, "same" padding, [BatchNorm,] ReLU) twice; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for a in (in_channels, out_channels):
            layers.append(nn.Conv2d(a, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """2x2 stride-2 transposed conv, concatenation with the skip, conv pair."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = ConvPair(out_channels + skip_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """The seed's U-Net, returning logits.

    Args:
        in_channels: input channels (1 for grayscale, 3 for a replicated image).
        classes: output channels (1 for pneumothorax).
        aux_classifier: add an image-level head on the bottleneck (global average pool,
            dropout 0.2, linear); ``forward`` then returns ``(mask_logits, class_logits)``.
        batch_norm: BatchNorm after every 3x3 conv (``unet_bn``; the seed had none).

    Shapes: (N, in_channels, H, W) float32 -> (N, classes, H, W) logits; H, W divisible by 32,
    otherwise ``forward`` raises ConfigError (pad or resize the input).
    """

    divisor = 2 ** len(ENCODER_WIDTHS)

    def __init__(self, in_channels: int = 1, classes: int = 1, aux_classifier: bool = False,
                 batch_norm: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or classes < 1:
            raise ConfigError(f"UNet: in_channels and classes must be >= 1, got {in_channels}, {classes}")
        self.in_channels = in_channels
        self.classes = classes
        widths = (in_channels, *ENCODER_WIDTHS)
        self.encoder = nn.ModuleList(ConvPair(a, b, batch_norm) for a, b in itertools.pairwise(widths))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvPair(ENCODER_WIDTHS[-1], BOTTLENECK_WIDTH, batch_norm)
        ups = []
        prev = BOTTLENECK_WIDTH
        for skip, out in zip(reversed(ENCODER_WIDTHS), DECODER_WIDTHS, strict=True):
            ups.append(UpBlock(prev, skip, out, batch_norm))
            prev = out
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(prev, classes, 1)
        self.classifier: nn.Module | None = None
        if aux_classifier:
            self.classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(BOTTLENECK_WIDTH, classes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ConfigError(
                f"UNet input height and width must be divisible by {self.divisor} (5 poolings), "
                f"got {h}x{w}: pad or resize to e.g. {-(-h // self.divisor) * self.divisor}x"
                f"{-(-w // self.divisor) * self.divisor}"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        bottleneck = x
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
        logits = self.head(x)
        if self.classifier is not None:
            return logits, self.classifier(bottleneck)
        return logits


def _build_unet(name: str, batch_norm: bool, in_channels: int, classes: int, encoder_weights: str | None,
                aux_classifier: bool, kwargs: dict[str, object]) -> UNet:
    if encoder_weights is not None:
        raise ConfigError(
            f"model {name!r} has no {encoder_weights!r} weights (it is trained from scratch): "
            "use encoder_weights=None or a local weights file"
        )
    if kwargs:
        raise ConfigError(f"model {name!r} takes no options {sorted(kwargs)}")
    return UNet(in_channels=in_channels, classes=classes, aux_classifier=aux_classifier, batch_norm=batch_norm)


@register_model(name="unet")
def _create_unet(*, in_channels: int = 1, classes: int = 1, encoder_weights: str | None = None,
                 aux_classifier: bool = False, **kwargs: object) -> UNet:
    """Registry entry ``unet``: the seed's U-Net (no pretrained weights exist for it)."""
    return _build_unet("unet", False, in_channels, classes, encoder_weights, aux_classifier, kwargs)


@register_model(name="unet_bn")
def _create_unet_bn(*, in_channels: int = 1, classes: int = 1, encoder_weights: str | None = None,
                    aux_classifier: bool = False, **kwargs: object) -> UNet:
    """Registry entry ``unet_bn``: the seed's U-Net with BatchNorm after every 3x3 conv."""
    return _build_unet("unet_bn", True, in_channels, classes, encoder_weights, aux_classifier, kwargs)
