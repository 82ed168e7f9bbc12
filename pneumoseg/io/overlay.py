"""Mask overlays for people to look at: prediction in red, truth in blue (seed notebook colours)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from pneumoseg.util.atomic import atomic_write_bytes

__all__ = ["PRED_RGB", "TRUTH_RGB", "annotate", "encode_rgb_png", "overlay", "write_rgb_png"]

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


def annotate(rgb: np.ndarray, title: str, legend: bool = True, truth: bool = False) -> np.ndarray:
    """RGB uint8 (H, W, 3) copy of an overlay with ``title`` (image id, score) in a dark band at the top
    and, with ``legend``, a colour key (red = prediction; blue = truth when ``truth``) at the bottom.

    The size is unchanged (so masks and overlays stay pixel-aligned); the text scales with the width.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    scale = max(0.3, w / 1400)
    thick = max(1, round(w / 700))
    band = min(h, int(26 * scale) + 6)
    font = cv2.FONT_HERSHEY_SIMPLEX
    out[:band] = (0.35 * out[:band]).astype(np.uint8)
    cv2.putText(out, title, (4, band - max(3, band // 4)), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    if legend and h > 2 * band:
        keys = [("prediction", PRED_RGB)] + ([("truth", TRUTH_RGB)] if truth else [])
        out[h - band:] = (0.35 * out[h - band:]).astype(np.uint8)
        x = 4
        for text, color in keys:
            side = band - 8
            cv2.rectangle(out, (x, h - band + 4), (x + side, h - 4), color, -1)
            cv2.putText(out, text, (x + side + 4, h - max(3, band // 4)), font, scale, (255, 255, 255), thick,
                        cv2.LINE_AA)
            (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
            x += side + tw + 16
    return out


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 (H, W, 3) array."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()


def write_rgb_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) array as PNG, atomically."""
    atomic_write_bytes(path, encode_rgb_png(rgb))
