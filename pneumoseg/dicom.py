"""Read chest-radiograph DICOM files: pixels as ``uint8`` (H, W) plus the metadata users look at.

Decoding goes through pydicom 3 with the pylibjpeg plugins, so JPEG Baseline (the challenge's
files), JPEG Lossless, JPEG-LS, JPEG 2000 and RLE Lossless all read. Display conventions:

* orientation as stored (row 0 is the top of the image; no transpose or flip);
* ``MONOCHROME1`` (white = low values) is inverted so that bright = dense, as ``MONOCHROME2``;
* 8-bit unsigned images keep their values; deeper images (12/16-bit, signed, rescaled) go to
  8-bit through the file's VOI LUT or window (centre/width) when it has one, else through
  robust percentiles (0.5 % -> 0, 99.5 % -> 255).

Every failure (missing file, not DICOM, no pixel data, truncated, undecodable) raises one
:class:`~pneumoseg.errors.DicomError` whose message starts with the file path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pneumoseg.errors import DicomError

__all__ = [
    "PERCENTILES",
    "DicomImage",
    "DicomMeta",
    "format_header",
    "parse_age",
    "read_dicom",
    "read_dicom_meta",
]

PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for deep images without a VOI LUT or window."""

_AGE = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class DicomMeta:
    """Header fields of one DICOM file. Missing text tags are ``""``, a missing age is ``None``.

    ``image_id`` is the SOPInstanceUID (the challenge's ImageId), else the file stem;
    ``transfer_syntax`` is the UID string and ``transfer_syntax_name`` its readable name.
    """

    image_id: str
    patient_id: str = ""
    patient_age: int | None = None
    patient_sex: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    rows: int = 0
    columns: int = 0
    bits_stored: int = 0
    photometric: str = ""
    transfer_syntax: str = ""
    transfer_syntax_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-serialisable); ``DicomMeta(**meta.as_dict()) == meta``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DicomImage:
    """A decoded image: ``pixels`` uint8 (H, W), display-ready (see the module docstring)."""

    pixels: np.ndarray
    meta: DicomMeta


def parse_age(value: object) -> int | None:
    """Parse a DICOM Age String (``"038Y"``, ``"38"``, ``"006M"``) into whole years; else None.

    Units D/W/M/Y (none = years) are converted to years and floored.
    """
    match = _AGE.match(str(value)) if value is not None else None
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    return int(number * _AGE_UNIT_DAYS[unit] / _AGE_UNIT_DAYS["Y"] + 1e-9)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _meta_from_dataset(ds: Dataset, path: Path) -> DicomMeta:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return DicomMeta(
        image_id=_text(ds, "SOPInstanceUID") or path.stem,
        patient_id=_text(ds, "PatientID"),
        patient_age=parse_age(ds.get("PatientAge")),
        patient_sex=_text(ds, "PatientSex"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_stored=_int(ds, "BitsStored"),
        photometric=_text(ds, "PhotometricInterpretation"),
        transfer_syntax=str(syntax) if syntax else "",
        transfer_syntax_name=syntax.name if syntax else "",
    )


def _truncation(ds: Dataset, caught: list[warnings.WarningMessage]) -> str | None:
    """Describe how ``ds`` looks truncated (pydicom warns or stops silently at EOF), else None."""
    for w in caught:
        if "end of file" in str(w.message).lower():
            return str(w.message).split(" in file ")[0]
    if len(ds) == 0:
        return "no data elements after the file meta header"
    last = ds.get_item(max(ds.keys()))
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        got = len(last.value or b"")
        if got < last.length:
            return f"element {last.tag} has {got} of its {last.length} bytes"
    return None


def _read_dataset(path: Path, *, header_only: bool) -> Dataset:
    """``pydicom.dcmread`` with every failure (truncation too) turned into a DicomError naming ``path``."""
    if not path.is_file():
        raise DicomError(f"{path}: file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError as exc:
        raise DicomError(f"{path}: not a DICOM file ({exc})") from None
    except (EOFError, OSError) as exc:
        raise DicomError(f"{path}: truncated or unreadable DICOM file ({exc or type(exc).__name__})") from None
    except Exception as exc:
        raise DicomError(f"{path}: corrupt DICOM header ({type(exc).__name__}: {exc})") from None
    problem = _truncation(ds, caught)
    if problem:
        raise DicomError(f"{path}: truncated DICOM file ({problem})")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def read_dicom_meta(path: str | os.PathLike[str]) -> DicomMeta:
    """Read only the header of ``path`` (pixel data is not loaded) and return its DicomMeta."""
    path = Path(path)
    return _meta_from_dataset(_read_dataset(path, header_only=True), path)


# JPEG baseline/extended (the challenge's files): Pillow's libjpeg-turbo decodes about twice as
# fast as the default plugin (values may differ by 1 grey level: lossy JPEG has no exact decode).
_PILLOW_FIRST = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def _pixel_array(ds: Dataset) -> np.ndarray:
    if str(ds.file_meta.get("TransferSyntaxUID", "")) in _PILLOW_FIRST:
        try:
            ds.pixel_array_options(decoding_plugin="pillow")
            return ds.pixel_array
        except Exception:
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _decode(ds: Dataset, path: Path, meta: DicomMeta) -> np.ndarray:
    """Decode the first frame as stored values, (H, W) or (H, W, 3)."""
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        what = f"only {kinds[0]} (not supported)" if kinds else "no pixel data"
        raise DicomError(f"{path}: DICOM file has {what}")
    try:
        arr = _pixel_array(ds)
    except Exception as exc:
        text = str(exc)
        truncated = isinstance(exc, EOFError) or any(
            word in text.lower() for word in ("truncat", "less than expected", "insufficient", "end of")
        )
        problem = "pixel data truncated" if truncated else "cannot decode pixel data"
        raise DicomError(
            f"{path}: {problem} (transfer syntax {meta.transfer_syntax_name or meta.transfer_syntax or '?'}): "
            f"{type(exc).__name__}: {text}"
        ) from None
    frames = _int(ds, "NumberOfFrames") or 1
    if frames > 1:
        arr = arr[0]
    expected = (meta.rows, meta.columns)
    if arr.shape[:2] != expected:
        raise DicomError(f"{path}: decoded pixels have shape {arr.shape}, header says {expected[0]}x{expected[1]}")
    return arr


def _to_gray(arr: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """Collapse colour (H, W, 3) to luminance; pass grayscale through."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        luminance = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.rint(luminance).astype(arr.dtype)
    raise DicomError(f"{path}: unsupported pixel layout {arr.shape} ({_text(ds, 'PhotometricInterpretation')})")


def _has_voi(ds: Dataset) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_range(ds: Dataset) -> tuple[float, float]:
    """(lowest, highest) output of the dataset's VOI LUT or window, found by probing it."""
    if ds.get("VOILUTSequence"):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        probe = np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 2**16), dtype=np.int64)
    else:
        probe = np.array([-1e15, 1e15])
    out = apply_voi_lut(probe, ds)
    return float(np.min(out)), float(np.max(out))


def _scale(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` -> 0 and ``high`` -> 255 linearly, clipping outside; uint8 result."""
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.asarray(arr, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_uint8(arr: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """Stored values (H, W) -> display uint8 (H, W) by VOI/window, as-is (8-bit) or percentiles."""
    if _has_voi(ds):
        values = apply_modality_lut(arr, ds)
        if ds.get("VOILUTSequence") and np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)
        try:
            low, high = _voi_range(ds)
            return _scale(apply_voi_lut(values, ds), low, high)
        except (ValueError, NotImplementedError, AttributeError, IndexError) as exc:
            raise DicomError(f"{path}: invalid VOI LUT / window: {exc}") from None
    plain_8bit = (
        arr.dtype.kind == "u" and _int(ds, "BitsStored") <= 8 and "RescaleSlope" not in ds
        and "ModalityLUTSequence" not in ds
    )
    if plain_8bit:
        return arr.astype(np.uint8)
    values = apply_modality_lut(arr, ds)
    low, high = np.percentile(values, PERCENTILES)
    return _scale(values, float(low), float(high))


def read_dicom(path: str | os.PathLike[str]) -> DicomImage:
    """Read ``path`` into a DicomImage: ``pixels`` uint8 (H, W) display-ready, plus its DicomMeta.

    Multi-frame files give their first frame; colour files their luminance.
    """
    path = Path(path)
    ds = _read_dataset(path, header_only=False)
    meta = _meta_from_dataset(ds, path)
    gray = _to_gray(_decode(ds, path, meta), ds, path)
    pixels = _to_uint8(gray, ds, path)
    if meta.photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return DicomImage(pixels=np.ascontiguousarray(pixels), meta=meta)


def format_header(meta: DicomMeta) -> str:
    """Multi-line header block for a terminal (id, patient, age, sex, modality, body part, view, size)."""
    age = "?" if meta.patient_age is None else str(meta.patient_age)
    lines = [
        ("Image id", meta.image_id),
        ("Patient id", meta.patient_id or "?"),
        ("Patient's age", age),
        ("Patient's sex", meta.patient_sex or "?"),
        ("Modality", meta.modality or "?"),
        ("Body part examined", meta.body_part or "?"),
        ("View position", meta.view_position or "?"),
        ("Image size", f"{meta.rows} x {meta.columns}, {meta.bits_stored} bits stored, {meta.photometric or '?'}"),
        ("Transfer syntax", meta.transfer_syntax_name or meta.transfer_syntax or "?"),
    ]
    width = max(len(label) for label, _ in lines) + 3
    return "\n".join(f"{(label + ' ').ljust(width, '.')}: {value}" for label, value in lines)
