"""Typed settings of the viewer service (``pneumoseg serve``): a pydantic dataclass (strict types), checked before
any model loads; a bad value raises ConfigError in one line naming the option."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, field
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, PlainValidator, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pneumoseg.errors import ConfigError
from pneumoseg.util.devices import parse_device
from pneumoseg.util.limits import MAX_PIXELS

__all__ = ["ALLOWED_HOSTS_ENV", "MIN_TOKEN_LEN", "ServiceSettings", "allowed_hosts_from_env"]

ALLOWED_HOSTS_ENV = "PNEUMOSEG_ALLOWED_HOSTS"
"""Extra allowed Host names (comma or space separated), added to ``--allowed-host``."""

MIN_TOKEN_LEN = 16
"""Shortest bearer token accepted (``secrets.token_urlsafe(32)`` gives 43 characters)."""


def _positive(name: str, maximum: float, *, integer: bool = False) -> PlainValidator:
    """A finite number > 0 (an integer, or a whole float made int, when asked), <= ``maximum``."""
    option = "--" + name.replace("_", "-")
    kind = "an integer" if integer else "a number"

    def check(value: Any) -> int | float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and \
                0 < value <= maximum and (not integer or float(value).is_integer()):
            return int(value) if integer else value
        raise ValueError(f"{option} must be {kind} > 0 and <= {maximum:g} (finite), got {value!r}")
    return PlainValidator(check)


def _token(token: str | None) -> str | None:
    if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LEN or not token.isascii()
                              or not token.isprintable() or " " in token):
        length = len(token) if isinstance(token, str) else 0
        raise ValueError(f"--token / PNEUMOSEG_TOKEN must be at least {MIN_TOKEN_LEN} printable ASCII characters "
                         f"without spaces (got {length} characters); make one with "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def allowed_hosts_from_env() -> tuple[str, ...]:
    """The host names in ``$PNEUMOSEG_ALLOWED_HOSTS`` (comma or space separated)."""
    return tuple(h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").replace(",", " ").split() if h)


def _host(name: Any) -> str:
    bad = not isinstance(name, str) or not name or len(name) > 260 or not name.isascii() or \
        not name.isprintable() or any(c in name for c in " /\\@?#,")
    if bad:
        raise ValueError(f"--allowed-host must be a host name or address, optionally with :PORT, got {name!r}")
    return name


def _hosts(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ValueError(f"--allowed-host must be a list of host names, got {names!r}")
    return tuple(_host(name) for name in names)


def _backend(name: str) -> str:
    if name not in ("auto", "torch", "onnx"):
        raise ValueError(f"--backend {name!r} unknown (valid: auto, torch, onnx)")
    return name


def _device(name: str | None) -> str | None:
    try:
        return parse_device(name)  # the one device rule (pneumoseg.util.devices)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


Host = Annotated[str, PlainValidator(_host)]


@pydantic_dataclass(frozen=True, config=ConfigDict(strict=True))
class _Fields:
    """The settings' fields and their rules (pydantic); :class:`ServiceSettings` adds the one-line errors."""

    max_upload_mb: Annotated[float, _positive("max_upload_mb", 100_000)] = 50.0
    max_pixels: Annotated[int, _positive("max_pixels", 2**31 - 1, integer=True)] = MAX_PIXELS
    result_store_mb: Annotated[float, _positive("result_store_mb", 1_000_000)] = 512.0
    cache_size: Annotated[int, _positive("cache_size", 1_000_000, integer=True)] = 64
    max_concurrent: Annotated[int, _positive("max_concurrent", 256, integer=True)] = 2
    token: Annotated[str | None, PlainValidator(_token)] = field(default=None, repr=False)
    checkpoint: str = "best"
    device: Annotated[str | None, AfterValidator(_device)] = "cpu"
    tta: bool = False
    backend: Annotated[str, AfterValidator(_backend)] = "auto"
    title: str = "pneumoseg viewer"
    browse_dir: str | None = None
    truth: str | None = None
    browse_max_files: Annotated[int, _positive("browse_max_files", 10_000_000, integer=True)] = 10_000
    bind_host: Host = "127.0.0.1"
    allowed_hosts: Annotated[tuple[str, ...], PlainValidator(_hosts)] = field(default_factory=allowed_hosts_from_env)
    header_timeout_s: Annotated[float, _positive("header_timeout_s", 3600)] = 10.0
    body_timeout_s: Annotated[float, _positive("body_timeout_s", 86_400)] = 120.0
    keep_alive_s: Annotated[float, _positive("keep_alive_s", 3600)] = 5.0
    max_connections: Annotated[int, _positive("max_connections", 100_000, integer=True)] = 100

    @model_validator(mode="after")
    def _truth_needs_browse(self) -> _Fields:
        if self.truth is not None and self.browse_dir is None:
            raise ValueError("--truth needs --browse DIR (the ground truth of the browsed files)")
        return self


class ServiceSettings(_Fields):
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Validate (pydantic); ConfigError in one line: the first problem, naming the option."""
        try:
            super().__init__(*args, **kwargs)
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["type"] == "value_error":
                message = str(error["ctx"]["error"])
            else:  # a pydantic type error (strict: no coercion), e.g. checkpoint=3
                option = "--" + "-".join(str(p) for p in error["loc"]).replace("_", "-")
                message = f"{option}: {error['msg'].lower()}, got {error['input']!r}"
            raise ConfigError(message) from None

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
