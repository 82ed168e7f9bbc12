"""A torch Dataset over the prepared cache, the split lookup and the one input normalisation.

Items are dicts:

* ``image``: float32 (C, H, W), C = ``in_channels`` (1, or 3 = the gray image replicated),
  normalised by :func:`normalize`;
* ``mask``: float32 (1, H, W) in {0, 1};
* ``label``: float32 scalar, 1.0 if the mask has any pixel (for an image-level head);
* ``image_id``: str.

H = W = ``size``; a cache prepared at another size is resized on the fly (images: area
interpolation; masks: ``pneumoseg.images.resize_mask``). A dataset item may be indexed by an
``int`` or by ``(index, seed)``: the seed then fixes the augmentation draw (the samplers in
``pneumoseg.data.sampler`` yield such pairs, so augmentation depends only on run seed, epoch and
position).

Splits (``CACHE/splits.csv``, written by ``pneumoseg split``): with ``fold=None`` the ``split``
column is used as is; with ``fold=k`` the images of fold k are ``val``, the other non-test folds
``train``, and ``test`` stays ``test``.
"""

from __future__ import annotations

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
from pneumoseg.images import read_image, read_mask, resize_image, resize_mask

__all__ = [
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "SegmentationDataset",
    "check_cache",
    "normalize",
    "read_labels",
    "read_splits",
    "split_ids",
]

NORMALIZATIONS: tuple[str, ...] = ("gray", "imagenet")
GRAY_MEAN, GRAY_STD = 0.5, 0.25
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


def normalize(img: np.ndarray | torch.Tensor, in_channels: int = 1, mode: str = "gray") -> torch.Tensor:
    """uint8 image(s) -> float32 model input.

    ``img``: uint8 (H, W) or a batch (N, H, W), values 0..255. Returns (C, H, W) or (N, C, H, W)
    float32 with C = ``in_channels`` (the gray image replicated). ``mode``: ``gray`` =
    ``(x / 255 - 0.5) / 0.25``; ``imagenet`` = ``(x / 255 - mean_c) / std_c`` with ImageNet's
    per-channel mean and std (3 channels). Training, evaluation and prediction all call this.
    """
    if mode not in NORMALIZATIONS:
        raise DataError(f"unknown normalisation {mode!r} (valid: {', '.join(NORMALIZATIONS)})")
    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
    t = torch.as_tensor(np.ascontiguousarray(img) if isinstance(img, np.ndarray) else img)
    if t.ndim not in (2, 3):
        raise DataError(f"expected a uint8 (H, W) image or (N, H, W) batch, got shape {tuple(t.shape)}")
    x = t.to(torch.float32).div_(255.0).unsqueeze(-3)  # (..., 1, H, W)
    x = x.expand(*x.shape[:-3], in_channels, *x.shape[-2:])
    if mode == "gray":
        return (x - GRAY_MEAN) / GRAY_STD
    if in_channels == 1:
        mean, std = torch.tensor(IMAGENET_MEAN).mean(), torch.tensor(IMAGENET_STD).mean()
        return (x - mean) / std
    mean_t = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std_t = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean_t) / std_t


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
    """Images and masks of ``image_ids`` from ``cache``, at ``size`` (see module docstring).

    Args:
        cache: the prepared cache folder.
        image_ids: ids to serve, in order.
        size: output size (None = as stored).
        in_channels, normalization: passed to :func:`normalize`.
        transform: an albumentations pipeline (``pneumoseg.data.augment.build_transform``) or None.
    """

    def __init__(self, cache: str | os.PathLike[str], image_ids: Sequence[str], *, size: int | None = None,
                 in_channels: int = 1, normalization: str = "gray", transform: Any | None = None) -> None:
        self.cache = Path(cache)
        self.image_ids = list(image_ids)
        self.size = size
        self.in_channels = in_channels
        self.normalization = normalization
        self.transform = transform
        normalize(np.zeros((2, 2), np.uint8), in_channels, normalization)  # validates both options

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (H, W) image, bool (H, W) mask) of item ``index`` at ``self.size``."""
        image_id = self.image_ids[index]
        img = read_image(self.cache / "images" / f"{image_id}.png")
        mask = read_mask(self.cache / "masks" / f"{image_id}.png")
        if img.shape != mask.shape:
            raise DataError(f"{self.cache}: image {image_id} is {img.shape} but its mask is {mask.shape}")
        if self.size is not None and img.shape != (self.size, self.size):
            img, mask = resize_image(img, self.size), resize_mask(mask, self.size)
        return img, mask

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, tuple | list) else (int(item), None)
        img, mask = self.load(index)
        if self.transform is not None:
            img, mask = apply_transform(self.transform, img, mask, seed)
        return {
            "image": normalize(img, self.in_channels, self.normalization).contiguous(),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "label": torch.tensor(float(mask.any())),
            "image_id": self.image_ids[index],
        }
