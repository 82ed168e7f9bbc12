"""Typed settings of the viewer service (``pneumoseg serve``), validated before any model loads."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pneumoseg.errors import ConfigError
from pneumoseg.util.devices import parse_device
from pneumoseg.util.limits import MAX_PIXELS

__all__ = ["ALLOWED_HOSTS_ENV", "MIN_TOKEN_LEN", "ServiceSettings", "allowed_hosts_from_env"]

ALLOWED_HOSTS_ENV = "PNEUMOSEG_ALLOWED_HOSTS"
"""Extra allowed Host names (comma or space separated), added to ``--allowed-host``."""

MIN_TOKEN_LEN = 16
"""Shortest bearer token accepted (``secrets.token_urlsafe(32)`` gives 43 characters)."""


def _check_number(name: str, value: object, *, integer: bool = False, maximum: float | None = None) -> None:
    """ConfigError unless ``value`` is a finite number > 0 (an integer when asked), <= ``maximum``."""
    option = "--" + name.replace("_", "-")
    kind = "an integer" if integer else "a number"
    ok = False
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        ok = (not integer or float(value).is_integer()) and (maximum is None or value <= maximum)
    if not ok:
        upper = f" and <= {maximum:g}" if maximum is not None else ""
        raise ConfigError(f"{option} must be {kind} > 0{upper} (finite), got {value!r}")


def _check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_LEN or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"--token / PNEUMOSEG_TOKEN must be at least {MIN_TOKEN_LEN} printable ASCII characters "
                          f"without spaces (got {len(token)} characters); make one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def allowed_hosts_from_env() -> tuple[str, ...]:
    """The host names in ``$PNEUMOSEG_ALLOWED_HOSTS`` (comma or space separated)."""
    return tuple(h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").replace(",", " ").split() if h)


def _check_host(name: str) -> None:
    bad = not name or len(name) > 260 or not name.isascii() or not name.isprintable() or any(
        c in name for c in " /\\@?#,")
    if bad:
        raise ConfigError(f"--allowed-host must be a host name or address, optionally with :PORT, got {name!r}")


@dataclass(frozen=True)
class ServiceSettings:
    """What ``create_app`` needs besides the run folders. Every number must be finite and > 0.

    ``max_upload_mb``: largest accepted upload (MB = 10**6 bytes; larger -> HTTP 413).
    ``max_pixels``: largest decoded image (rows x columns, read from the PNG/JPEG/DICOM header
    before decoding; larger -> HTTP 413).
    ``result_store_mb``: bytes of recent results kept for the PNG routes (compressed PNGs plus
    the JSON answer); the least recently used are dropped first, a result larger than the whole
    budget is answered but not kept. ``cache_size``: at most this many results besides.
    ``max_concurrent``: uploads decoded / predicted / post-processed at once (an image of
    ``max_pixels`` = 64,000,000 peaks near 2 GB: an 8000 x 8000 16-bit DICOM measured +1.9 GB);
    others wait their turn without holding a thread.
    ``token``: when set, every API route but ``/health`` and the page needs
    ``Authorization: Bearer <token>`` (never shown in ``repr``/``to_dict``).
    ``checkpoint``/``device``/``tta``/``backend``: passed to :class:`~pneumoseg.inference.predictor.Predictor`
    (``backend`` auto: onnxruntime on CPU when ``RUN/model.onnx`` matches the checkpoint, else torch).
    ``browse_dir``: a folder whose DICOM / PNG files the viewer steps through (``--browse``), at most
    ``browse_max_files`` of them; ``truth``: a ``train-rle.csv`` with their ground truth (``--truth``).
    ``bind_host``: the address the server listens on; requests must name it, a loopback name, or one
    of ``allowed_hosts`` (``NAME`` or ``NAME:PORT``; default ``$PNEUMOSEG_ALLOWED_HOSTS``) in their
    Host header (else 400), and a POST/PUT/PATCH/DELETE from a browser must come from such an origin
    (else 403). ``header_timeout_s``: a request head must be complete within this many seconds (else
    408, closed); ``body_timeout_s``: its body within this many seconds after; ``keep_alive_s``: an
    idle kept-alive connection is closed after this; ``max_connections``: connections beyond this
    many open ones are answered 503 and closed (see :mod:`pneumoseg.service.connections`).
    """

    max_upload_mb: float = 50.0
    max_pixels: int = MAX_PIXELS
    result_store_mb: float = 512.0
    cache_size: int = 64
    max_concurrent: int = 2
    token: str | None = field(default=None, repr=False)
    checkpoint: str = "best"
    device: str | None = "cpu"
    tta: bool = False
    backend: str = "auto"
    title: str = "pneumoseg viewer"
    browse_dir: str | None = None
    truth: str | None = None
    browse_max_files: int = 10_000
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = field(default_factory=allowed_hosts_from_env)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    keep_alive_s: float = 5.0
    max_connections: int = 100

    def __post_init__(self) -> None:
        _check_number("max_upload_mb", self.max_upload_mb, maximum=100_000)
        _check_number("max_pixels", self.max_pixels, integer=True, maximum=2**31 - 1)
        _check_number("result_store_mb", self.result_store_mb, maximum=1_000_000)
        _check_number("cache_size", self.cache_size, integer=True, maximum=1_000_000)
        _check_number("max_concurrent", self.max_concurrent, integer=True, maximum=256)
        object.__setattr__(self, "max_pixels", int(self.max_pixels))
        object.__setattr__(self, "cache_size", int(self.cache_size))
        _check_number("browse_max_files", self.browse_max_files, integer=True, maximum=10_000_000)
        object.__setattr__(self, "max_concurrent", int(self.max_concurrent))
        object.__setattr__(self, "browse_max_files", int(self.browse_max_files))
        _check_number("header_timeout_s", self.header_timeout_s, maximum=3600)
        _check_number("body_timeout_s", self.body_timeout_s, maximum=86_400)
        _check_number("keep_alive_s", self.keep_alive_s, maximum=3600)
        _check_number("max_connections", self.max_connections, integer=True, maximum=100_000)
        object.__setattr__(self, "max_connections", int(self.max_connections))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        for name in (self.bind_host, *self.allowed_hosts):
            _check_host(name)
        if self.truth is not None and self.browse_dir is None:
            raise ConfigError("--truth needs --browse DIR (the ground truth of the browsed files)")
        if self.token is not None:
            _check_token(self.token)
        if self.backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"--backend {self.backend!r} unknown (valid: auto, torch, onnx)")
        object.__setattr__(self, "device", parse_device(self.device))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def result_store_bytes(self) -> int:
        return int(self.result_store_mb * 1_000_000)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a dict, the token replaced by whether one is set."""
        out = asdict(self)
        out["token"] = self.token is not None
        return out
