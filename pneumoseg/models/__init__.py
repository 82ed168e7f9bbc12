"""Segmentation models: a registry of names -> networks returning logits.

The registry (``models/registry.py``) holds ``unet`` (the seed's U-Net), ``uxception`` (the
seed's Xception U-Net) and curated smp ``<arch>-<encoder>`` combinations; any other smp
combination is resolved by name. Use ``create_model(name, in_channels=1, classes=1, ...)``.
``Preprocessing`` (``models/preprocessing.py``) is the input rule that travels with the weights.

The names below are imported on first use (PEP 562), and the built-in models are registered on the
registry's first lookup: importing this package (e.g. for ``Preprocessing`` on the ONNX path)
imports neither segmentation_models_pytorch nor timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumoseg.models.preprocessing import Preprocessing
    from pneumoseg.models.registry import (
        check_online,
        create_model,
        is_model,
        list_models,
        load_weights_file,
        register_model,
        register_resolver,
    )
    from pneumoseg.models.smp_models import parse_smp_name
    from pneumoseg.models.unet import UNet
    from pneumoseg.models.uxception import UXception

#: public name -> the module that defines it
_HOMES = {
    "Preprocessing": "preprocessing",
    "UNet": "unet",
    "UXception": "uxception",
    "check_online": "registry",
    "create_model": "registry",
    "is_model": "registry",
    "list_models": "registry",
    "load_weights_file": "registry",
    "parse_smp_name": "smp_models",
    "register_model": "registry",
    "register_resolver": "registry",
}

__all__ = [
    "Preprocessing",
    "UNet",
    "UXception",
    "check_online",
    "create_model",
    "is_model",
    "list_models",
    "load_weights_file",
    "parse_smp_name",
    "register_model",
    "register_resolver",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
