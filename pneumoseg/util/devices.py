"""The one reading of a device string (``--device``, ``ServiceSettings.device``): no torch import.

Valid: ``cpu``, ``cuda``, ``cuda:N`` (GPU number N >= 0) and ``mps``; ``None`` means "cuda when
available, else cpu" and is resolved where torch is loaded (``pneumoseg.inference.predictor``).
"""

from __future__ import annotations

import re

from pneumoseg.errors import ConfigError

__all__ = ["DEVICES_HELP", "accelerator_of", "parse_device"]

DEVICES_HELP = "cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def parse_device(text: str | None, what: str = "--device") -> str | None:
    """``text`` stripped and lower-cased when it names a device, ``None`` for ``None`` (auto).

    ConfigError (one line naming ``what``) for anything else, e.g. ``gpu`` or ``cuda:x``.
    """
    if text is None:
        return None
    device = text.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"{what} {text!r} unknown (valid: {DEVICES_HELP})")
    return device


def accelerator_of(device: str | None) -> str:
    """Lightning's ``accelerator`` for a parsed device: ``cpu``, ``gpu`` (cuda, cuda:N), ``mps``; ``auto`` for None."""
    if device is None:
        return "auto"
    kind = device.split(":")[0]
    return "gpu" if kind == "cuda" else kind
