"""The model's input preprocessing, which travels with its weights: size, channels, mean and std.

A network is trained on, and must be fed, ``(x / 255 - mean_c) / std_c`` per channel ``c`` of a
uint8 gray image replicated to ``in_channels`` channels at ``size`` x ``size`` (timm's
``pretrained_cfg`` idea). This is the one home of that rule: training normalises batches on the
device with it, and the run saves it (``RUN/preprocessing.json``, the checkpoints, the ONNX
metadata) so the predictor, the service and the export read it instead of recomputing it.

The numbers (``from_config``, by ``data.normalize``):

* ``gray``: mean 0.5, std 0.25 on every channel;
* ``imagenet``: ImageNet's per-channel mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
  for 3 channels; for 1 channel the mean of those means and the mean of those stds.

``__call__`` / ``numpy`` do not resize: callers bring images at ``size`` (the predictor resizes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pneumoseg.config import ExperimentConfig
from pneumoseg.errors import ConfigError, DataError

__all__ = ["GRAY_MEAN", "GRAY_STD", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "Preprocessing", "mean_std"]

NORMALIZATIONS: tuple[str, ...] = ("gray", "imagenet")
GRAY_MEAN, GRAY_STD = 0.5, 0.25
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def mean_std(mode: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize: unknown normalisation {mode!r} "
                          f"(valid: {', '.join(NORMALIZATIONS)})")
    if mode == "gray":
        return (GRAY_MEAN,) * in_channels, (GRAY_STD,) * in_channels
    if in_channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """uint8 gray images -> float32 model input (see the module docstring).

    Attributes:
        size: the model's input side (pixels); images are ``size`` x ``size``.
        in_channels: 1 or 3 (the gray image replicated).
        mean, std: per channel, on the [0, 1] scale (``x / 255``); ``len == in_channels``.
    """

    size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"preprocessing: size must be a positive integer, got {self.size!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"preprocessing: in_channels must be 1 or 3, got {self.in_channels!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"preprocessing: {name} must be {self.in_channels} finite number(s) "
                                  f"(one per channel), got {list(values)}")
        if min(self.std) <= 0:
            raise ConfigError(f"preprocessing: std must be > 0, got {list(self.std)}")

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Preprocessing:
        """From ``cfg.data``: ``size``, ``in_channels``, ``normalize`` (gray | imagenet; auto resolved)."""
        d = cfg.data
        mode = d.normalize
        if mode == "auto":
            mode = "gray" if d.in_channels == 1 else "imagenet"
        mean, std = mean_std(mode, d.in_channels)
        return cls(size=d.size, in_channels=d.in_channels, mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """``{"size", "in_channels", "mean": [...], "std": [...]}`` (JSON-ready)."""
        return {"size": self.size, "in_channels": self.in_channels, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; ConfigError names a missing or bad key."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocessing: expected a mapping with size, in_channels, mean, std; "
                              f"got {d!r}")
        missing = [k for k in ("size", "in_channels", "mean", "std") if k not in d]
        if missing:
            raise ConfigError(f"preprocessing: missing key(s) {missing} (need size, in_channels, mean, std)")
        try:
            size, channels = int(d["size"]), int(d["in_channels"])
            mean = tuple(float(v) for v in _seq(d["mean"]))
            std = tuple(float(v) for v in _seq(d["std"]))
        except (TypeError, ValueError):
            raise ConfigError(f"preprocessing: size/in_channels must be integers and mean/std lists of "
                              f"numbers, got {dict(d)}") from None
        return cls(size=size, in_channels=channels, mean=mean, std=std)

    def _check_shape(self, shape: tuple[int, ...], dtype: str) -> None:
        if dtype != "uint8":
            raise DataError(f"preprocessing: expected uint8 images (0..255), got dtype {dtype}")
        ok = len(shape) in (2, 3) or (len(shape) == 4 and shape[1] in (1, self.in_channels))
        if not ok:
            raise DataError(f"preprocessing: expected uint8 (H, W), (N, H, W) or (N, 1, H, W), "
                            f"got shape {shape}")

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (H, W), (N, H, W) or (N, 1, H, W) -> float32 (N, C, H, W) on ``x``'s device."""
        t = torch.as_tensor(x)
        self._check_shape(tuple(t.shape), str(t.dtype).removeprefix("torch."))
        t = t.reshape(-1, *t.shape[-3:]) if t.ndim == 4 else t.reshape(-1, 1, *t.shape[-2:])
        mean = torch.tensor(self.mean, dtype=torch.float32, device=t.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=t.device).view(1, -1, 1, 1)
        out = (t.to(torch.float32) / 255.0 - mean) / std  # broadcasts 1 channel to in_channels
        return out.contiguous()

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """Same as ``__call__`` for numpy (onnxruntime): float32 (N, C, H, W)."""
        a = np.asarray(x)
        self._check_shape(a.shape, str(a.dtype))
        a = a.reshape(-1, *a.shape[-3:]) if a.ndim == 4 else a.reshape(-1, 1, *a.shape[-2:])
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        out = (a.astype(np.float32) / np.float32(255.0) - mean) / std
        return np.ascontiguousarray(out, dtype=np.float32)


def _seq(value: Any) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(value)
    return value
