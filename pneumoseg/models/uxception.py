"""The seed's Xception U-Net (``uxception``): an Xception encoder with a residual decoder.

Input: float32 (N, C, H, W), H and W divisible by 32. Output: logits (N, classes, H, W), or
``(mask_logits, class_logits (N, classes))`` with ``aux_classifier=True`` (a head on the
middle block: global average pool, dropout 0.2, linear). The seed ended in a sigmoid; here the
sigmoid is left to the loss and to ``pneumoseg.scoring.postprocess``.

Encoder: timm's ``legacy_xception`` (the port of the Keras Xception the seed used, same
"valid" padding in the stem), built without downloading anything unless
``encoder_weights="imagenet"``. The seed tapped Keras layers 11, 21, 31 and 121: the last
batch-norm of Keras blocks 2, 3, 4 and 13 before their max-pool, at strides 2, 4, 8 and 16 with
128, 256, 728 and 1024 channels. Here the same tensors are taken from timm's ``block1``,
``block2``, ``block3`` and ``block12`` (timm counts blocks from 1 where Keras counts from 2);
the exit flow after block 13 is not built.

Decoder (``start = 16`` as in the seed): LeakyReLU(0.1) on the stride-16 tap, 2x2 max-pool,
dropout 0.5, a middle level of width 512; then five up-steps to widths 256, 128, 64, 32, 16.
Each step: transposed conv 3x3 stride 2, concatenation with the tap of that stride, dropout
(0.5 at strides 16 and 8, 0.1 at strides 4 and 2, 0.5 at full size where there is no tap),
conv 3x3, two residual blocks (LeakyReLU 0.1 + BatchNorm, two conv-BN, add a BatchNorm'd
input), LeakyReLU 0.1. Dropout 0.25, then a 1x1 conv to ``classes`` logits.

Deviation, stated: the stem's unpadded convs make the stride-2 and stride-4 taps 3 and 1
pixels short (H/2 - 3, H/4 - 1); the seed zero-padded them at the top and left by exactly
3 and 1 (Keras ``ZeroPadding2D(((3, 0), (3, 0)))``). Here each tap is zero-padded at the top
and left by whatever it lacks, which is the same 3 and 1 for every H divisible by 32.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pneumoseg.errors import ConfigError
from pneumoseg.models.registry import check_online, download_timeout, register_model

__all__ = ["XCEPTION_TAPS", "UXception"]

START = 16
# (timm block name, channels, stride) of the four taps, shallow first.
XCEPTION_TAPS: tuple[tuple[str, int, int], ...] = (
    ("block1", 128, 2),
    ("block2", 256, 4),
    ("block3", 728, 8),
    ("block12", 1024, 16),
)
_MIDDLE = tuple(f"block{i}" for i in range(4, 12))
_UNUSED = ("conv3", "bn3", "act3", "conv4", "bn4", "act4", "global_pool", "fc")


def _conv_bn(in_channels: int, out_channels: int, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """The seed's residual block: BN(LReLU(x)) -> conv-BN-LReLU -> conv-BN, plus BN(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = nn.LeakyReLU(0.1)
        self.bn = nn.BatchNorm2d(channels)
        self.bn_input = nn.BatchNorm2d(channels)
        self.conv1 = _conv_bn(channels, channels, act=True)
        self.conv2 = _conv_bn(channels, channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(self.bn(self.act(x)))) + self.bn_input(x)


class DecoderLevel(nn.Sequential):
    """Dropout, conv 3x3, two residual blocks, LeakyReLU 0.1 (keeps H and W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Dropout(dropout),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            ResidualBlock(out_channels),
            ResidualBlock(out_channels),
            nn.LeakyReLU(0.1),
        )


def _up(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """Transposed conv 3x3, stride 2, doubling H and W (Keras ``padding="same"``)."""
    return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)


def _pad_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    dh, dw = size[-2] - x.shape[-2], size[-1] - x.shape[-1]
    if dh < 0 or dw < 0:
        raise ConfigError(f"uxception: skip {tuple(x.shape[-2:])} larger than {tuple(size[-2:])}")
    return F.pad(x, (dw, 0, dh, 0)) if dh or dw else x


def _block_with_tap(block: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm Xception ``Block`` whose ``rep`` ends in a max-pool; also return the pre-pool tensor."""
    tap = block.rep[:-1](x)
    out = block.rep[-1](tap)
    if block.skip is not None:
        out = out + block.skipbn(block.skip(x))
    return out, tap


class UXception(nn.Module):
    """The seed's Xception U-Net, returning logits.

    Args:
        in_channels: input channels (1 or 3; with ImageNet weights timm sums the RGB filters
            for 1 channel).
        classes: output channels.
        aux_classifier: add an image-level head on the middle level; ``forward`` then returns
            ``(mask_logits, class_logits)``.
        pretrained: load timm's ImageNet ``legacy_xception`` weights (downloads; see
            ``create_model(..., encoder_weights="imagenet")``).

    Shapes: (N, in_channels, H, W) float32 -> (N, classes, H, W) logits; H, W divisible by 32.
    """

    divisor = 32

    def __init__(
        self, in_channels: int = 1, classes: int = 1, aux_classifier: bool = False, pretrained: bool = False
    ) -> None:
        super().__init__()
        encoder = timm.create_model(
            "legacy_xception", pretrained=pretrained, in_chans=in_channels, num_classes=0
        )
        for name in _UNUSED:
            delattr(encoder, name)
        last: Any = encoder.block12
        last.skip, last.skipbn = None, None  # only its pre-pool tensor is used
        self.encoder = encoder
        widths = [START * m for m in (32, 16, 8, 4, 2, 1)]  # 512 .. 16
        taps = [c for _, c, _ in reversed(XCEPTION_TAPS)]  # 1024, 728, 256, 128
        self.pool = nn.MaxPool2d(2)
        self.middle = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(taps[0], widths[0], 3, padding=1),
            ResidualBlock(widths[0]), ResidualBlock(widths[0]), nn.LeakyReLU(0.1),
        )  # fmt: skip
        self.tap_act = nn.LeakyReLU(0.1)
        dropouts = (0.5, 0.5, 0.1, 0.1, 0.5)
        skip_channels = (*taps, 0)
        self.ups = nn.ModuleList(_up(widths[i], widths[i + 1]) for i in range(5))
        self.levels = nn.ModuleList(
            DecoderLevel(widths[i + 1] + skip_channels[i], widths[i + 1], dropouts[i]) for i in range(5)
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Conv2d(widths[-1], classes, 1))
        self.classifier: nn.Module | None = None
        if aux_classifier:
            self.classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(widths[0], classes)
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four taps at strides 2, 4, 8, 16 (shallow first; the first two are 3 and 1 px short)."""
        e: Any = self.encoder
        x = e.act2(e.bn2(e.conv2(e.act1(e.bn1(e.conv1(x))))))
        x, t2 = _block_with_tap(e.block1, x)
        x, t4 = _block_with_tap(e.block2, x)
        x, t8 = _block_with_tap(e.block3, x)
        for name in _MIDDLE:
            x = getattr(e, name)(x)
        t16 = e.block12.rep[:-1](x)
        return [t2, t4, t8, t16]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ConfigError(f"uxception input height and width must be divisible by 32, got {h}x{w}")
        t2, t4, t8, t16 = self.encode(x)
        t16 = self.tap_act(t16)
        mid = self.middle(self.pool(t16))
        y = mid
        for up, level, skip in zip(self.ups, self.levels, (t16, t8, t4, t2, None), strict=True):
            y = up(y)
            if skip is not None:
                y = torch.cat([y, _pad_to(skip, y.shape)], dim=1)
            y = level(y)
        logits = self.head(y)
        if self.classifier is not None:
            return logits, self.classifier(mid)
        return logits


@register_model(name="uxception")
def _create_uxception(
    *,
    in_channels: int = 1,
    classes: int = 1,
    encoder_weights: str | None = None,
    aux_classifier: bool = False,
    **kwargs: object,
) -> UXception:
    """Registry entry ``uxception``; ``encoder_weights`` None or "imagenet" (timm, downloads)."""
    if kwargs:
        raise ConfigError(f"model 'uxception' takes no options {sorted(kwargs)}")
    if encoder_weights not in (None, "imagenet"):
        raise ConfigError(
            f"model 'uxception': encoder_weights {encoder_weights!r} unknown; valid: None, 'imagenet'"
        )
    if encoder_weights is None:
        return UXception(in_channels, classes, aux_classifier)
    check_online("imagenet weights for the uxception encoder (timm legacy_xception)")
    try:
        with download_timeout():
            return UXception(in_channels, classes, aux_classifier, pretrained=True)
    except OSError as exc:
        raise ConfigError(f"model 'uxception': downloading imagenet weights failed: {exc}") from None
