"""Training augmentations (albumentations): the seed's default pipeline, presets, YAML specs.

Every pipeline takes and returns ``image`` uint8 (H, W) and ``mask`` uint8 (H, W) (0/1, 0/255 or a
soft 0..255 target): spatial transforms move the mask with the image (nearest-neighbour for the
mask, so soft values are kept, never blended), pixel transforms touch the image only. Randomness
comes from a seed per call (``apply_transform``), so a sample's augmentation depends only on
(run seed, epoch, position), not on workers or restarts.

Presets (``size`` is the training size):

* ``seed``: the seed's pipeline: HorizontalFlip(p=0.5); OneOf([RandomBrightnessContrast,
  RandomGamma], p=0.3); OneOf([ElasticTransform(alpha=120, sigma=6), GridDistortion,
  OpticalDistortion(distort_limit=0.5)], p=0.3); RandomSizedCrop(min_max_height=(0.7*size, size),
  size=(size, size), p=0.25). (Albumentations 2 dropped ``alpha_affine`` and ``shift_limit``.)
* ``light``: HorizontalFlip(p=0.5); RandomBrightnessContrast(p=0.3); Affine(scale 0.9-1.1,
  translate 5%, rotate +-10 degrees, p=0.3).
* ``winner``: the SIIM winner's geometric augmentations: HorizontalFlip(p=0.5); Affine(scale
  0.9-1.1, translate 6.25 %, rotate +-15 degrees, p=0.5) (shift-scale-rotate);
  ElasticTransform(alpha=30, sigma=5, p=0.3); RandomBrightnessContrast(p=0.3). Best of the
  augmentations compared on the 42 real images (docs/benchmarks.md, small-data).
* ``none``: no augmentation.

A custom pipeline is a list of specs ``{name: TransformName, **params}`` looked up in
albumentations by class name; composites (``OneOf``, ``SomeOf``, ``Sequential``) take
``transforms: [specs]``. A string parameter ``"size"`` or ``"<number>*size"`` (e.g. ``"0.7*size"``)
becomes that many pixels, rounded. Example (YAML)::

    augment:
      transforms:
        - {name: HorizontalFlip, p: 0.5}
        - {name: OneOf, p: 0.3, transforms: [{name: RandomGamma}, {name: RandomBrightnessContrast}]}
        - {name: RandomSizedCrop, min_max_height: ["0.7*size", size], size: [size, size], p: 0.25}
"""

from __future__ import annotations

import difflib
import random
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoseg.errors import ConfigError

__all__ = [
    "PRESETS",
    "apply_transform",
    "build_transform",
    "light_transforms",
    "seed_transforms",
    "transforms_from_specs",
    "winner_transforms",
]

PRESETS: tuple[str, ...] = ("seed", "light", "winner", "none")
_SIZE_EXPR = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+)\s*\*\s*)?size\s*$")


def seed_transforms(size: int) -> list[Any]:
    """The seed's default train transforms for square images of ``size`` pixels."""
    import albumentations as A

    return [
        A.HorizontalFlip(p=0.5),
        A.OneOf([A.RandomBrightnessContrast(), A.RandomGamma()], p=0.3),
        A.OneOf([A.ElasticTransform(alpha=120, sigma=120 * 0.05), A.GridDistortion(),
                 A.OpticalDistortion(distort_limit=0.5)], p=0.3),
        A.RandomSizedCrop(min_max_height=(int(0.7 * size), size), size=(size, size), p=0.25),
    ]


def light_transforms(size: int) -> list[Any]:
    """A milder pipeline: flip, brightness/contrast, small affine."""
    import albumentations as A

    del size
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(p=0.3),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.3),
    ]


def winner_transforms(size: int) -> list[Any]:
    """Flip, shift-scale-rotate, a mild elastic warp, brightness/contrast (the ``winner`` preset)."""
    import albumentations as A

    del size
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-15, 15), p=0.5),
        A.ElasticTransform(alpha=30, sigma=5, p=0.3),
        A.RandomBrightnessContrast(p=0.3),
    ]


def _resolve_size(value: Any, size: int) -> Any:
    if isinstance(value, str):
        match = _SIZE_EXPR.match(value)
        if match:
            return round(float(match.group(1) or 1.0) * size)
        return value
    if isinstance(value, list | tuple):
        return tuple(_resolve_size(v, size) for v in value)
    return value


def _one(spec: Any, size: int, where: str) -> Any:
    import albumentations as A

    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'name' (an albumentations transform), "
                          f"got {spec!r}")
    name = spec["name"]
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
        valid = [n for n in dir(A) if isinstance(getattr(A, n), type)
                 and issubclass(getattr(A, n), A.BasicTransform | A.BaseCompose)]
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: unknown albumentations transform {name!r}{hint}")
    params = {k: _resolve_size(v, size) for k, v in spec.items() if k != "name"}
    if issubclass(cls, A.BaseCompose):
        children = params.pop("transforms", None)
        if not isinstance(children, Sequence) or isinstance(children, str) or not children:
            raise ConfigError(f"{where} ({name}): needs 'transforms', a non-empty list of specs")
        params["transforms"] = transforms_from_specs(children, size, f"{where}.transforms")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            built = cls(**params)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(f"{where} ({name}): bad parameters {params}: {detail}") from None
    for warning in caught:
        if "not valid for transform" in str(warning.message):
            raise ConfigError(f"{where} ({name}): {warning.message}")
    return built


def transforms_from_specs(specs: Sequence[Any], size: int, where: str = "augment.transforms") -> list[Any]:
    """Build albumentations transforms from ``[{name: ..., **params}, ...]``; ConfigError on bad specs."""
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        raise ConfigError(f"{where}: expected a list of transform specs, got {specs!r}")
    return [_one(spec, size, f"{where}[{i}]") for i, spec in enumerate(specs)]


def build_transform(preset: str = "seed", size: int = 512,
                    transforms: Sequence[Mapping[str, Any]] | None = None) -> Any | None:
    """The train pipeline (``albumentations.Compose``) or None for no augmentation.

    ``transforms`` (specs), when given, replace the preset. Unknown presets, transform names or
    parameters raise ConfigError.
    """
    import albumentations as A

    if transforms is not None:
        items = transforms_from_specs(transforms, size)
    elif preset == "seed":
        items = seed_transforms(size)
    elif preset == "light":
        items = light_transforms(size)
    elif preset == "winner":
        items = winner_transforms(size)
    elif preset == "none":
        return None
    else:
        raise ConfigError(f"unknown augmentation preset {preset!r} (valid: {', '.join(PRESETS)})")
    return A.Compose(items, p=1.0) if items else None


def apply_transform(transform: Any | None, image: np.ndarray, mask: np.ndarray,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` to uint8 ``image`` (H, W) and ``mask`` (H, W); returns (image, mask).

    A ``bool`` mask comes back ``bool``; a ``uint8`` mask (0/255 or soft 0..255) comes back
    ``uint8`` with its values kept. ``seed`` fixes the draw (same seed, same result); None uses
    the pipeline's own state.
    """
    as_bool = mask.dtype == bool
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    if transform is None:
        return image, mask_u8.astype(bool) if as_bool else mask_u8
    if seed is not None:
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(image=image, mask=mask_u8)
    img, msk = out["image"], out["mask"]
    if img.ndim == 3:
        img = img[..., 0]
    if msk.ndim == 3:
        msk = msk[..., 0]
    msk = np.asarray(msk)
    return np.ascontiguousarray(img), (msk > 0) if as_bool else np.ascontiguousarray(msk, dtype=np.uint8)
