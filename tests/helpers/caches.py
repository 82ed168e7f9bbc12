"""Tiny learnable prepared caches (the ``pneumoseg prepare`` layout) for the CPU training tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

#: the header of a cache's index.csv
INDEX_HEADER = ("image_id,patient_id,has_pneumothorax,mask_area_px,n_annotations,sex,age,view_position,"
                "source,orig_height,orig_width\n")


def make_cache(root: Path, n: int, size: int = 64, seed: int | None = None, n_test: int = 0,
               record_size: bool = True) -> Path:
    """``n`` noisy ``size`` px images ``img000``..., the even ones with a bright disc (the mask, 255).

    Splits: the last ``n_test`` are test, the quarter before them (``n // 4``) validation, the rest
    train. ``seed`` of the image noise defaults to ``n``; ``record_size`` writes cache.json
    (``{"size": size}``), as ``prepare`` does. Returns ``root``.
    """
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(n if seed is None else seed)
    index, splits = [], []
    for i in range(n):
        image_id = f"img{i:03d}"
        img = rng.normal(90, 20, (size, size))
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            cx, cy = rng.integers(size // 5, size - size // 5, 2).tolist()
            cv2.circle(mask, (cx, cy), int(rng.integers(size // 12, size // 6)), 255, -1)
            img[mask > 0] += 80
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), np.clip(img, 0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{image_id}.png"), mask)
        index.append(f"{image_id},p{i},{int(i % 2 == 0)},{int((mask > 0).sum())},1,M,40,PA,x,{size},{size}\n")
        split = "test" if i >= n - n_test else "val" if i >= n - n // 4 else "train"
        splits.append(f"{image_id},{split}\n")
    (root / "index.csv").write_text(INDEX_HEADER + "".join(index))
    (root / "splits.csv").write_text("image_id,split\n" + "".join(splits))
    if record_size:
        (root / "cache.json").write_text(json.dumps({"size": size}))
    return root
