"""The real intensities behind the viewer's window/level, and the DICOM header kept for SEG/SR.

The viewer windows on the image's own values, in the browser, never on the display image:

* DICOM (MONOCHROME1/2): the first frame's stored values through the Modality LUT / rescale
  (``pydicom.pixels.apply_modality_lut``), i.e. the values a PACS viewer windows on. They travel
  as ``uint16`` codes ``q`` with ``value = offset + scale * q``: exact (``scale`` 1) when the values
  are integers spanning at most 65,536 levels, else quantised linearly to 65,536 levels (``exact``
  says which). The default window is the file's first WindowCenter / WindowWidth (linear or
  LINEAR_EXACT), else the 0.5 / 99.5 % percentiles (what ``pneumoseg.io.dicom.read.read_dicom`` maps to
  0 / 255 for such images), else 0..255 for plain 8-bit data. ``invert`` is True for MONOCHROME1
  (low values white).
* PNG / JPEG, and colour or palette DICOM: the uint8 display image (the model's input), 0..255,
  default window 0..255 (the identity).

A window ``(center C, width W)`` maps ``C - W/2`` to black and ``C + W/2`` to white, linearly,
clipping outside (``window_to_uint8``; DICOM's own formula differs by at most one grey level).
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.multival import MultiValue

__all__ = ["Intensities", "dicom_header_bytes", "dicom_intensities", "display_intensities", "window_to_uint8"]

_PERCENTILES = (0.5, 99.5)
_LINEAR = ("", "LINEAR", "LINEAR_EXACT")


@dataclass(frozen=True)
class Intensities:
    """``codes`` uint16 (H, W); ``value = offset + scale * code``; default window and photometric hints.

    ``source``: ``"modality"`` (DICOM Modality-LUT values) or ``"display"`` (the uint8 display image).
    ``unit``: a short label for the values (``RescaleType`` when the file gives one).
    """

    codes: np.ndarray
    offset: float
    scale: float
    exact: bool
    window_center: float
    window_width: float
    window_source: str
    invert: bool
    source: str
    unit: str

    def values(self) -> np.ndarray:
        """float64 (H, W): the real values."""
        return self.offset + self.scale * self.codes.astype(np.float64)

    def compressed(self) -> bytes:
        """zlib stream of the codes as little-endian uint16, row-major (what ``/predict/{id}/values.bin`` sends)."""
        return zlib.compress(np.ascontiguousarray(self.codes, dtype="<u2").tobytes(), 6)

    def describe(self) -> dict[str, Any]:
        """JSON for the viewer: how to turn codes into values, and the default window."""
        codes = self.codes
        lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
        return {"source": self.source, "offset": self.offset, "scale": self.scale, "exact": self.exact,
                "min": self.offset + self.scale * lo, "max": self.offset + self.scale * hi,
                "code_max": hi, "window_center": self.window_center, "window_width": self.window_width,
                "window_source": self.window_source, "invert": self.invert, "unit": self.unit,
                "encoding": "zlib, uint16 little-endian, row-major; value = offset + scale * code"}


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """uint8 (H, W): ``center - width/2`` -> 0, ``center + width/2`` -> 255, linear, clipped, rounded."""
    low = center - width / 2.0
    span = max(float(width), 1e-12)
    out = (np.asarray(values, dtype=np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def display_intensities(pixels: np.ndarray, unit: str = "display value (0-255)") -> Intensities:
    """The uint8 display image itself as intensities, identity window 0..255."""
    return Intensities(np.asarray(pixels, dtype=np.uint16), 0.0, 1.0, True, 127.5, 255.0, "full 8-bit range",
                       False, "display", unit)


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """(uint16 codes, offset, scale, exact) with ``values ~= offset + scale * codes``."""
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(np.equal(np.mod(values, 1.0), 0.0)))
    if integral and hi - lo <= 65535:
        return (values - lo).astype(np.uint16), lo, 1.0, True
    scale = (hi - lo) / 65535.0 if hi > lo else 1.0
    return np.rint((values - lo) / scale).astype(np.uint16), lo, scale, hi == lo


def _first(ds: Any, keyword: str) -> float | None:
    """The first value of a (possibly multi-valued) numeric tag, or None when absent / not finite."""
    value = ds.get(keyword)
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _default_window(ds: Any, values: np.ndarray, arr: np.ndarray) -> tuple[float, float, str]:
    center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
    function = str(ds.get("VOILUTFunction", "") or "").upper()
    if center is not None and width is not None and width > 0 and function in _LINEAR:
        return center, width, "WindowCenter/WindowWidth of the file"
    plain_8bit = (arr.dtype.kind == "u" and int(ds.get("BitsStored", 8) or 8) <= 8 and "RescaleSlope" not in ds
                  and "ModalityLUTSequence" not in ds)
    if plain_8bit:
        return 127.5, 255.0, "full 8-bit range"
    low, high = (float(v) for v in np.percentile(values, _PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return (low + high) / 2.0, high - low, "0.5-99.5 % percentiles"


def dicom_intensities(data: bytes, display: np.ndarray) -> Intensities:
    """The Modality-LUT values of a DICOM's first frame (module docstring), or the display image.

    ``data``: the file's bytes, already read successfully by ``pneumoseg.io.dicom.read.read_dicom`` (so its
    size is within the limits); ``display``: that read's uint8 (H, W). Colour, palette or any
    file whose values cannot be had (or differ in shape) falls back to ``display_intensities``.
    """
    from pydicom.pixels import apply_modality_lut

    from pneumoseg.io.dicom.read import read_header

    try:
        ds = read_header(data, pixels=True, force=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            photometric = str(ds.get("PhotometricInterpretation", "")).strip()
            if photometric not in ("MONOCHROME1", "MONOCHROME2"):
                return display_intensities(display, f"display value (0-255; {photometric or 'no'} photometric)")
            ds.pixel_array_options(index=0)
            arr = ds.pixel_array
            if arr.shape != display.shape:
                return display_intensities(display)
            values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception:
        return display_intensities(display)
    if not np.isfinite(values).all():
        return display_intensities(display)
    codes, offset, scale, exact = _quantise(values)
    center, width, where = _default_window(ds, values, arr)
    unit = str(ds.get("RescaleType", "") or "").strip() or (
        "modality value" if "RescaleSlope" in ds or "ModalityLUTSequence" in ds else "stored value")
    return Intensities(codes, offset, scale, exact, center, width, where, photometric == "MONOCHROME1",
                       "modality", unit)


def dicom_header_bytes(data: bytes) -> bytes:
    """The DICOM file without its pixel data (bytes of a Part 10 file), for SEG / SR later.

    ``data`` starts with the 128-byte preamble and ``DICM``. Pixel Data and the other bulk pixel
    elements are dropped; everything else (UIDs, spacing, patient and study) is kept.
    """
    from pneumoseg.io.dicom.read import read_header

    ds = read_header(data, force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue()
