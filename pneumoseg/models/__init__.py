"""Segmentation models: a registry of names -> networks returning logits.

Importing this package registers every model: ``unet`` (the seed's U-Net), ``uxception`` (the
seed's Xception U-Net) and curated smp ``<arch>-<encoder>`` combinations; any other smp
combination is resolved by name. Use ``create_model(name, in_channels=1, classes=1, ...)``.
``Preprocessing`` (``models/preprocessing.py``) is the input rule that travels with the weights.
"""

from __future__ import annotations

from pneumoseg.models import smp_models, unet, uxception  # noqa: F401  (registers models)
from pneumoseg.models.registry import (
    check_online,
    create_model,
    is_model,
    list_models,
    load_weights_file,
    register_model,
    register_resolver,
)
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.models.smp_models import parse_smp_name
from pneumoseg.models.unet import UNet
from pneumoseg.models.uxception import UXception

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
