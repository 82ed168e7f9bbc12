"""Typed settings of the viewer service (``pneumoseg serve``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pneumoseg.errors import ConfigError

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """What ``create_app`` needs besides the run folders.

    ``max_upload_mb``: largest accepted upload (MB = 10**6 bytes; larger -> HTTP 413).
    ``cache_size``: how many results (image, probability map, mask; ~3 MB each at 1024 px) are
    kept for the PNG routes; the least recently used one is dropped first.
    ``checkpoint``/``device``/``tta``: passed to :class:`~pneumoseg.predict.Predictor`.
    """

    max_upload_mb: float = 50.0
    cache_size: int = 64
    checkpoint: str = "best"
    device: str | None = "cpu"
    tta: bool = False
    title: str = "pneumoseg viewer"

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if int(self.cache_size) != self.cache_size or self.cache_size < 1:
            raise ConfigError(f"cache_size must be an integer >= 1, got {self.cache_size}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device {self.device!r} unknown (valid: cpu, cuda, cuda:N, mps)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
