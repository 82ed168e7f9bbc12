"""Mask overlays for people to look at: prediction in red, truth in blue (seed notebook colours)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from pneumoseg.atomic import atomic_write_bytes

__all__ = ["PRED_RGB", "TRUTH_RGB", "encode_rgb_png", "overlay", "write_rgb_png"]

PRED_RGB = (255, 40, 40)
TRUTH_RGB = (40, 110, 255)


def _blend(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
    """Tint ``mask`` pixels of ``rgb`` (in place) and draw the mask outline at full colour."""
    if not mask.any():
        return
    tint = np.asarray(color, dtype=np.float32)
    rgb[mask] = ((1 - alpha) * rgb[mask] + alpha * tint).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(mask.shape) / 400))
    cv2.drawContours(rgb, contours, -1, color, thickness)


def overlay(image: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None,
            alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 (H, W, 3) view of a uint8 (H, W) radiograph with masks tinted and outlined.

    ``pred`` (bool (H, W)) is drawn in red, ``truth`` in blue; both may be None. Masks of another
    size are resized (nearest) to the image.
    """
    rgb = np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=2)
    h, w = rgb.shape[:2]
    for mask, color in ((truth, TRUTH_RGB), (pred, PRED_RGB)):
        if mask is None:
            continue
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        _blend(rgb, m, color, alpha)
    return rgb


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 (H, W, 3) array."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()


def write_rgb_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) array as PNG, atomically."""
    atomic_write_bytes(path, encode_rgb_png(rgb))
