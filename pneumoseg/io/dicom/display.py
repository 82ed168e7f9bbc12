"""Stored values of one frame -> display-ready uint8 (H, W), by the steps ``read``'s docstring lists.

Palette applied then luminance, colour to luminance, Modality LUT, then VOI LUT / window scaled
from its output range, 8-bit values kept, or robust percentiles (``PERCENTILES``); MONOCHROME1
inverted last. Integer images go through a lookup table of their distinct levels, so the peak
memory stays near the image's own size.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.text import _error, _int, _text

__all__ = ["PERCENTILES"]

PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for deep images without a usable VOI LUT or window."""

_LUMA = np.array([0.299, 0.587, 0.114])


def _palette_to_gray(arr: np.ndarray, ds: Dataset, label: str) -> np.ndarray:
    """Indices (H, W) -> palette RGB -> luminance scaled from the palette's range to uint8 (H, W)."""
    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:
        raise DicomError(f"{label}: invalid PALETTE COLOR lookup table ({_error(exc)})") from None
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise DicomError(f"{label}: PALETTE COLOR lookup table gave shape {rgb.shape}, expected (H, W, 3)")
    top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 255.0
    luminance = rgb[..., :3].astype(np.float64) @ _LUMA
    return np.clip(np.rint(luminance * (255.0 / top)), 0, 255).astype(np.uint8)


def _to_gray(arr: np.ndarray, label: str, photometric: str) -> np.ndarray:
    """Collapse colour (H, W, 3) to luminance (rounded, same dtype); pass grayscale through."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return np.rint(arr.astype(np.float64) @ _LUMA).astype(arr.dtype)
    raise DicomError(f"{label}: unsupported pixel layout {arr.shape} ({photometric or 'no photometric'})")


def _voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """(VOI output, lowest, highest possible output) by pydicom's apply_voi_lut; ValueError if unusable."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 2**16
        data = item.LUTData
        n_data = len(data) // 2 if isinstance(data, bytes | bytearray) else 1 if isinstance(data, int) else len(data)
        if n_data < entries:
            raise ValueError(f"VOI LUT has {n_data} entries, its descriptor says {entries}")
        if bits != 8 and not 10 <= bits <= 16:
            raise ValueError(f"VOI LUT entries of {bits} bits (valid: 8, 10-16)")
        if np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)
        table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds)
        low, high = float(np.min(table)), float(np.max(table))
    else:
        for keyword in ("WindowCenter", "WindowWidth"):
            value = ds[keyword].value
            for v in value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]:
                if not np.isfinite(float(v)):
                    raise ValueError(f"{keyword} {v!r} is not a finite number")
        with np.errstate(over="ignore"):  # a sigmoid saturating is its intended result
            low, high = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
    with np.errstate(over="ignore"):
        out = apply_voi_lut(values, ds)
    if not np.isfinite(out).all() or not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("VOI output is not finite")
    return out, min(low, high), max(low, high)


def _scale(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` -> 0 and ``high`` -> 255 linearly, clipping outside; uint8 result."""
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.asarray(arr, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_MAX_LEVELS = 1 << 17  # integer images with at most this many distinct levels go through a lookup table
_CHUNK_PIXELS = 1 << 22  # pixels per slice when counting levels and applying the table (32 MB of int64)


def _levels(arr: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(lowest stored value, count of each value from there) of an integer image, or None.

    None for float images and for ranges wider than ``_MAX_LEVELS``. Counted in slices of
    ``_CHUNK_PIXELS``, so counting costs 32 MB on top of the image, whatever its size.
    """
    if arr.dtype.kind not in "ui" or arr.size == 0:
        return None
    low, high = int(arr.min()), int(arr.max())
    if high - low >= _MAX_LEVELS:
        return None
    flat = arr.reshape(-1)
    counts = np.zeros(high - low + 1, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        counts += np.bincount(flat[start:start + _CHUNK_PIXELS].astype(np.int64) - low, minlength=counts.size)
    return low, counts


def _lookup(table: np.ndarray, arr: np.ndarray, low: int) -> np.ndarray:
    """``table[arr - low]`` (uint8, arr's shape), in slices."""
    out = np.empty(arr.size, dtype=np.uint8)
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        np.take(table, flat[start:start + _CHUNK_PIXELS].astype(np.int64) - low, out=out[start:start + _CHUNK_PIXELS])
    return out.reshape(arr.shape)


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, q: tuple[float, ...]) -> list[float]:
    """``np.percentile(np.repeat(values, counts), q)`` (method "linear") without repeating anything."""
    used = counts > 0
    order = np.argsort(values[used], kind="stable")
    ordered, cumulative = values[used][order], np.cumsum(counts[used][order])
    n = int(cumulative[-1])
    found = []
    for quantile in np.true_divide(q, 100):
        virtual = n * quantile + (1 + quantile * -1) - 1  # numpy's virtual index for "linear"
        below = min(max(int(np.floor(virtual)), 0), n - 1)
        above = min(below + 1, n - 1)
        gamma = virtual - np.floor(virtual)
        a = ordered[np.searchsorted(cumulative, below, side="right")]
        b = ordered[np.searchsorted(cumulative, above, side="right")]
        diff = b - a
        found.append(float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma))
    return found


def _to_uint8(arr: np.ndarray, ds: Dataset, label: str, notes: list[str]) -> np.ndarray:
    """Stored values (H, W) -> display uint8 (H, W) by VOI/window, as-is (8-bit) or percentiles.

    Every step maps each stored value on its own, so an integer image is converted through a
    lookup table of its distinct levels (at most 2**17): the result equals the full-array float64
    computation, but the peak memory is the image plus tens of MB instead of ~4 float64 copies
    (2 GB for 64 MP).
    """
    photometric = _text(ds, "PhotometricInterpretation")
    plain_8bit = (arr.dtype.kind == "u" and _int(ds, "BitsStored") <= 8 and "RescaleSlope" not in ds
                  and "ModalityLUTSequence" not in ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    levels = None if plain_8bit and not has_voi else _levels(arr)
    source = arr if levels is None else np.arange(levels[0], levels[0] + levels[1].size, dtype=arr.dtype)

    def finish(table: np.ndarray) -> np.ndarray:
        return table if levels is None else _lookup(table, arr, levels[0])

    try:
        values = apply_modality_lut(source, ds)
    except Exception as exc:
        raise DicomError(f"{label}: invalid Modality LUT / rescale ({_error(exc)})") from None
    if has_voi and photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            return finish(_scale(*_voi(values, ds)))
        except Exception as exc:
            notes.append(f"unusable VOI LUT / window ({_error(exc)}): contrast from percentiles instead")
    if plain_8bit:
        return arr.astype(np.uint8)
    values = np.asarray(values, dtype=np.float64)
    if levels is None:
        low, high = np.percentile(values, PERCENTILES)
    else:
        low, high = _weighted_percentiles(values, levels[1], PERCENTILES)
    return finish(_scale(values, float(low), float(high)))


def _display(arr: np.ndarray, ds: Dataset, label: str, notes: list[str]) -> np.ndarray:
    """Stored values (H, W) or (H, W, samples) -> display uint8 (H, W), C-contiguous."""
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        pixels = _palette_to_gray(arr, ds, label)
    else:
        pixels = _to_uint8(_to_gray(arr, label, photometric), ds, label, notes)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)
