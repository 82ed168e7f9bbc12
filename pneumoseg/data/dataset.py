"""A torch Dataset over the prepared cache and the split lookup. Items are uint8; the model normalises.

Items are dicts:

* ``image``: uint8 (1, H, W), the gray image as stored (0..255). Normalisation (mean/std,
  channels) is the model's :class:`~pneumoseg.models.preprocessing.Preprocessing`, applied on the
  device after the transfer (``SegmentationModule.on_after_batch_transfer``): 4x less host->device
  traffic than float32;
* ``mask``: uint8 (1, H, W), the training target times 255 (:func:`mask_to_target` turns it into
  float32 in [0, 1]): 0/255 for binary caches, the covered fraction 0..255 for soft caches;
* ``label``: float32 scalar, 1.0 if the mask has any nonzero pixel (for an image-level head);
* ``image_id``: str.

Soft masks: ``CACHE/cache.json`` with ``"mask_rule": "soft"`` stores in ``CACHE/masks/<id>.png``
the covered fraction of each low-resolution pixel (0..255); the target is then ``png / 255``
(resized with area interpolation). Any other rule (``"fraction"``, ``"any"``, none) stores 0/255
masks and the target is binary (``read_mask``; resized with ``resize_mask``). Metrics binarise
targets at 0.5; :meth:`SegmentationDataset.load` returns that binary mask (png >= 128).

H = W = ``size``; a cache prepared at another size is resized on the fly (images: area
interpolation). A dataset item may be indexed by an ``int`` or by ``(index, seed)``: the seed then
fixes the augmentation draw (the samplers in ``pneumoseg.data.sampler`` yield such pairs, so
augmentation depends only on run seed, epoch and position).

Splits (``CACHE/splits.csv``, written by ``pneumoseg split``): with ``fold=None`` the ``split``
column is used as is; with ``fold=k`` the images of fold k are ``val``, the other non-test folds
``train``, and ``test`` stays ``test``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pneumoseg.data.augment import apply_transform
from pneumoseg.errors import DataError
from pneumoseg.io.images import read_image, read_mask, resize_image, resize_mask

__all__ = [
    "MASK_RULES",
    "SegmentationDataset",
    "check_cache",
    "mask_rule",
    "mask_to_target",
    "read_labels",
    "read_splits",
    "split_ids",
]

SPLITS = ("train", "val", "test")
#: ``cache.json``'s ``mask_rule`` values: ``soft`` masks hold fractions, the others 0/255.
MASK_RULES = ("fraction", "any", "soft")


def mask_to_target(mask: torch.Tensor) -> torch.Tensor:
    """uint8 mask from the dataset (0..255) -> float32 target in [0, 1] (``mask / 255``), same device."""
    return mask.to(torch.float32) / 255.0


def mask_rule(cache: str | os.PathLike[str]) -> str:
    """``mask_rule`` of ``CACHE/cache.json``: soft | fraction | any (``any`` when absent)."""
    path = Path(cache) / "cache.json"
    if not path.is_file():
        return "any"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc}); rerun `pneumoseg prepare`") from None
    rule = meta.get("mask_rule", "any") if isinstance(meta, dict) else "any"
    if rule not in MASK_RULES:
        raise DataError(f"{path}: unknown mask_rule {rule!r} (valid: {', '.join(MASK_RULES)})")
    return str(rule)


def check_cache(cache: str | os.PathLike[str]) -> Path:
    """The cache folder if it has images/, masks/, index.csv and splits.csv; DataError otherwise."""
    root = Path(cache)
    if not root.is_dir():
        raise DataError(f"cache {root} not found: run `pneumoseg prepare ... --out {root}` first")
    for name in ("images", "masks", "index.csv"):
        if not (root / name).exists():
            raise DataError(f"{root / name} not found: {root} is not a prepared cache "
                            "(run `pneumoseg prepare`)")
    if not (root / "splits.csv").is_file():
        raise DataError(f"{root / 'splits.csv'} not found: run `pneumoseg split {root}` first")
    return root


def read_splits(cache: str | os.PathLike[str]) -> pd.DataFrame:
    """``CACHE/splits.csv`` as a DataFrame (image_id str, split, optional fold int)."""
    path = check_cache(cache) / "splits.csv"
    try:
        df = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable splits CSV ({exc})") from None
    missing = {"image_id", "split"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; rerun `pneumoseg split {Path(cache)}`")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split value(s) {bad} (valid: {', '.join(SPLITS)})")
    return df


def split_ids(cache: str | os.PathLike[str], split: str, fold: int | None = None) -> list[str]:
    """Image ids of ``split`` (train | val | test), for ``fold`` if given (see module docstring)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
    df = read_splits(cache)
    if fold is None or split == "test":
        return df.loc[df["split"] == split, "image_id"].tolist()
    if "fold" not in df.columns:
        raise DataError(f"{Path(cache) / 'splits.csv'} has no fold column (fold={fold} asked): "
                        f"run `pneumoseg split {Path(cache)} --folds K` first")
    folds = pd.to_numeric(df["fold"], errors="coerce").fillna(-1).astype(int)
    valid = sorted(set(folds[(df["split"] != "test") & (folds >= 0)]))
    if fold not in valid:
        raise DataError(f"fold {fold} not in {Path(cache) / 'splits.csv'} (valid folds: {valid})")
    usable = (df["split"] != "test") & (folds >= 0)
    chosen = usable & ((folds == fold) if split == "val" else (folds != fold))
    return df.loc[chosen, "image_id"].tolist()


def read_labels(cache: str | os.PathLike[str], image_ids: Sequence[str]) -> np.ndarray:
    """bool (N,): has_pneumothorax of each id, from ``CACHE/index.csv``."""
    path = Path(cache) / "index.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: run `pneumoseg prepare` first")
    index = pd.read_csv(path, dtype={"image_id": str}, usecols=["image_id", "has_pneumothorax"])
    labels = index.set_index("image_id")["has_pneumothorax"]
    missing = [i for i in image_ids if i not in labels.index]
    if missing:
        raise DataError(f"{path}: {len(missing)} image id(s) of splits.csv missing, e.g. {missing[:3]}; "
                        "rerun `pneumoseg split`")
    return labels.reindex(list(image_ids)).to_numpy().astype(bool)


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Images and targets of ``image_ids`` from ``cache``, at ``size`` (see module docstring).

    Args:
        cache: the prepared cache folder.
        image_ids: ids to serve, in order.
        size: output size (None = as stored).
        transform: an albumentations pipeline (``pneumoseg.data.augment.build_transform``) or None.
        soft: targets are soft (png / 255); None = from ``cache.json``'s ``mask_rule``.
    """

    def __init__(self, cache: str | os.PathLike[str], image_ids: Sequence[str], *, size: int | None = None,
                 transform: Any | None = None, soft: bool | None = None) -> None:
        self.cache = Path(cache)
        self.image_ids = list(image_ids)
        self.size = size
        self.transform = transform
        self.soft = mask_rule(self.cache) == "soft" if soft is None else soft

    def __len__(self) -> int:
        return len(self.image_ids)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.image_ids[index]
        img = read_image(self.cache / "images" / f"{image_id}.png")
        mask_path = self.cache / "masks" / f"{image_id}.png"
        mask = read_image(mask_path) if self.soft else read_mask(mask_path)
        if img.shape != mask.shape:
            raise DataError(f"{self.cache}: image {image_id} is {img.shape} but its mask is {mask.shape}")
        return img, mask

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (H, W) image, bool (H, W) mask) of item ``index`` at ``self.size`` (soft: cut at 0.5)."""
        img, target = self.load_target(index)
        return img, target >= 128

    def load_target(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (H, W) image, uint8 (H, W) target x 255) of item ``index`` at ``self.size``."""
        img, mask = self._read(index)
        size = self.size
        if size is None or img.shape == (size, size):
            return img, mask if self.soft else mask.astype(np.uint8) * np.uint8(255)
        if self.soft:
            return resize_image(img, size), resize_image(mask, size)
        return resize_image(img, size), resize_mask(mask, size).astype(np.uint8) * np.uint8(255)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, tuple | list) else (int(item), None)
        img, target = self.load_target(index)
        if self.transform is not None:
            img, target = apply_transform(self.transform, img, target, seed)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.uint8))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(target, dtype=np.uint8))[None],
            "label": torch.tensor(float(target.any())),
            "image_id": self.image_ids[index],
        }
