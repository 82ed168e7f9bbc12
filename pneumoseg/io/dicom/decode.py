"""Decode the first frame's stored values: Pillow first for JPEG baseline/extended, else pydicom's plugins.

``_decode`` runs the frame guards (``frames``), then decodes: for an 8-bit grayscale JPEG frame
with ``min_size``, Pillow at a DCT reduction (``Image.draft``); Pillow in full for JPEG
baseline/extended; pydicom's default plugins otherwise, or when Pillow cannot read the frame, but
never after Pillow found it truncated or a decompression bomb. Every failure is one DicomError
line naming the file. The result is stored values, not yet display-mapped (see ``display``).
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
from pydicom.dataset import Dataset

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.frames import _check_codestream, _first_frame
from pneumoseg.io.dicom.text import _error, _int, _printable, _text

# JPEG baseline/extended (the challenge's files): Pillow's libjpeg-turbo decodes about twice as
# fast as the default plugin (values may differ by 1 grey level: lossy JPEG has no exact decode).
_PILLOW_FIRST = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


# Pillow's own refusals: never retried with another decoder.
_PILLOW_REFUSALS = (("truncated", "truncated frame"),
                    ("decompression bomb", "frame refused by Pillow's decompression-bomb limit"),
                    ("exceeds limit", "frame refused by Pillow's decompression-bomb limit"))


def _pillow_refusal(exc: Exception, label: str) -> DicomError | None:
    """The DicomError for one of Pillow's refusals (truncated frame, decompression bomb), else None."""
    if isinstance(exc, PIL.Image.DecompressionBombError):
        return DicomError(f"{label}: frame refused by Pillow's decompression-bomb limit ({_error(exc)})")
    text = str(exc).lower()
    for word, problem in _PILLOW_REFUSALS:
        if word in text:
            return DicomError(f"{label}: {problem} ({_error(exc)})")
    return None


def _pixel_array(ds: Dataset, label: str) -> np.ndarray:
    """The first frame as stored values (colour converted to RGB): (H, W) or (H, W, samples).

    Pillow first for JPEG baseline/extended; the default plugins only when Pillow cannot decode the
    frame, never after Pillow found it truncated or a decompression bomb.
    """
    if str(ds.file_meta.get("TransferSyntaxUID", "")) in _PILLOW_FIRST:
        try:
            ds.pixel_array_options(index=0, decoding_plugin="pillow")
            return ds.pixel_array
        except Exception as exc:
            refusal = _pillow_refusal(exc, label)
            if refusal is not None:
                raise refusal from None
    ds.pixel_array_options(index=0)
    return ds.pixel_array


def _draft_scale(ds: Dataset, min_size: tuple[int, int] | None) -> int:
    """The DCT reduction (2, 4, 8) Pillow's ``draft`` picks for ``min_size`` (height, width), or 1 when
    there is none: no ``min_size``, not an 8-bit one-sample MONOCHROME JPEG frame, or under 2x larger."""
    if min_size is None or str(ds.file_meta.get("TransferSyntaxUID", "")) not in _PILLOW_FIRST:
        return 1
    if (_int(ds, "SamplesPerPixel") != 1 or _int(ds, "BitsAllocated") != 8 or _int(ds, "BitsStored") != 8
            or _text(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2")):
        return 1
    fits = min(_int(ds, "Rows") // min_size[0], _int(ds, "Columns") // min_size[1])  # as Image.draft does
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _reduced_pixel_array(ds: Dataset, label: str, min_size: tuple[int, int], scale: int) -> np.ndarray | None:
    """The first frame decoded by Pillow at DCT scale 1/``scale`` (``Image.draft("L", min_size)``),
    uint8 (ceil(Rows / scale), ceil(Columns / scale)); the frame was checked by ``_check_codestream``.

    Pillow's refusals raise DicomError (no other decoder is tried); None when Pillow cannot decode
    the frame otherwise, for the full decode to try as it would without ``min_size``.
    """
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    expected = ((rows + scale - 1) // scale, (columns + scale - 1) // scale)
    try:
        with PIL.Image.open(io.BytesIO(_first_frame(ds)), formats=("JPEG",)) as image:
            if image.mode != "L":
                return None
            image.draft("L", (min_size[1], min_size[0]))  # Pillow's size is (width, height)
            arr = np.asarray(image)
    except Exception as exc:
        refusal = _pillow_refusal(exc, label)
        if refusal is not None:
            raise refusal from None
        return None
    if arr.shape != expected:
        raise DicomError(f"{label}: reduced decode gave shape {arr.shape}, expected "
                         f"{expected[0]}x{expected[1]} (Rows x Columns {rows}x{columns} at 1/{scale})")
    return arr


def _decode(ds: Dataset, label: str, max_pixels: int,
            min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """(stored values of the first frame, decode scale); see ``read_dicom``'s ``min_size``."""
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        what = f"only {kinds[0]} (not supported)" if kinds else "no pixel data"
        raise DicomError(f"{label}: DICOM file has {what}")
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        _check_codestream(ds, label, max_pixels)
        scale = _draft_scale(ds, min_size)
        arr = _reduced_pixel_array(ds, label, min_size, scale) if min_size is not None and scale > 1 else None
        if arr is None:
            scale, arr = 1, _pixel_array(ds, label)
    except DicomError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        truncated = isinstance(exc, EOFError) or any(
            word in text for word in ("truncat", "less than expected", "insufficient", "end of"))
        problem = "pixel data truncated" if truncated else "cannot decode pixel data"
        name = _printable(syntax.name if syntax else "") or "?"
        raise DicomError(f"{label}: {problem} (transfer syntax {name}): {_error(exc)}") from None
    expected = (_int(ds, "Rows"), _int(ds, "Columns"))
    if scale == 1 and arr.shape[:2] != expected:
        raise DicomError(f"{label}: decoded pixels have shape {arr.shape}, header says {expected[0]}x{expected[1]}")
    return arr, scale
