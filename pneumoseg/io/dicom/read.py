"""Read chest-radiograph DICOM files: pixels as ``uint8`` (H, W) plus the metadata users look at.

Decoding goes through pydicom 3 with the pylibjpeg plugins, so JPEG Baseline (the challenge's
files), JPEG Lossless, JPEG-LS, JPEG 2000, RLE Lossless and Deflate all read. A source is a path,
``bytes`` or a binary file object (messages then name ``name=`` or ``<upload>``).

Display conventions (each step is pydicom's own function):

* orientation as stored (row 0 is the top of the image; no transpose or flip);
* multi-frame images give their **first frame** (only that frame is decoded);
* ``PALETTE COLOR``: the palette is applied (``apply_color_lut``), then the luminance
  0.299 R + 0.587 G + 0.114 B is scaled from the palette's range (0..2**bits - 1) to 0..255;
  RGB / YBR images give their luminance (rounded, same dtype);
* ``MONOCHROME1``/``MONOCHROME2`` with a VOI LUT or window: ``apply_voi_lut(apply_modality_lut(x))``
  scaled linearly to 0..255 from the VOI output range: the LUT's lowest..highest entry, or the
  window's output range as pydicom defines it (``apply_windowing``: y_min..y_max);
* otherwise 8-bit unsigned images without rescale keep their values, and deeper images (12/16-bit,
  signed, rescaled, or an unusable VOI LUT/window, which adds a warning) go through
  ``apply_modality_lut`` then robust percentiles (0.5 % -> 0, 99.5 % -> 255);
* ``MONOCHROME1`` (white = low values) is inverted last (255 - x), so bright = dense.

Refused, each with one :class:`~pneumoseg.errors.DicomError` line that starts with the file:
missing file, not DICOM (no 128-byte preamble + ``DICM``), truncated, undecodable, non-image SOP
classes (Segmentation, RT Dose/Plan/Structure Set, SR, waveforms, DICOMDIR, any known SOP class
whose name lacks "Image Storage"), no pixel data, images whose Rows x Columns x frames exceed
``max_pixels`` (checked from the header and the compressed codestream, before decoding),
and compressed frames whose own size is unreadable or differs from the header, and truncated JPEG frames.
Modalities other than CR/DX/DR and the warnings pydicom or numpy raise while reading are returned
in ``DicomMeta.warnings`` (one line each); nothing is printed.

This module is the reader's public API (what callers import) and the header fields users see.
The work is split by job: ``parse`` (open, Deflate bomb, ``dcmread``, truncation, size limit),
``frames`` (the compressed frame's own size, checked before decoding), ``decode`` (stored values
of the first frame), ``display`` (stored values -> uint8), ``capture`` (each read's own warnings,
with no lock, so reads run concurrently) and ``text`` (one-line messages, tolerant header values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.capture import capturing
from pneumoseg.io.dicom.decode import _decode
from pneumoseg.io.dicom.display import _display
from pneumoseg.io.dicom.parse import DicomSource, _check_deflate, _check_size, _dcmread, _deflate_limit, _open
from pneumoseg.io.dicom.text import _error, _int, _one_line, _printable, _text
from pneumoseg.util.atomic import atomic_path
from pneumoseg.util.limits import MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "RADIOGRAPH_MODALITIES",
    "DicomImage",
    "DicomMeta",
    "area_mm2",
    "format_header",
    "parse_age",
    "pixel_spacing_mm",
    "read_dicom",
    "read_dicom_meta",
    "read_header",
    "spacing_pair",
    "write_dicom",
]

DEFAULT_MAX_PIXELS = MAX_PIXELS
"""Rows x Columns x frames refused above this (64,000,000) when ``max_pixels`` is not given."""

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
"""Modalities read without a warning."""

_AGE = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class DicomMeta:
    """Header fields of one DICOM file. Missing text tags are ``""``, a missing age is ``None``.

    ``image_id`` is the SOPInstanceUID (the challenge's ImageId), else the file stem;
    ``transfer_syntax`` is the UID string and ``transfer_syntax_name`` its readable name;
    ``warnings``: one-line texts (unusual modality, pydicom/numpy warnings met while reading),
    printed by callers as ``f"{file}: warning: {w}"``; ``pixel_spacing_mm``: mm per pixel for areas
    (``sqrt(row * column)`` of :func:`pixel_spacing_mm`, so ``mm² = px * spacing**2``), None when unknown.
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
    warnings: tuple[str, ...] = ()
    pixel_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "warnings", tuple(self.warnings))  # a JSON list comes back as a tuple

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-serialisable); ``DicomMeta(**meta.as_dict()) == meta``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DicomImage:
    """A decoded image: ``pixels`` uint8 (H, W), display-ready (see the module docstring).

    ``decode_scale``: 1 for a full decode (H, W = Rows, Columns); 2, 4 or 8 when ``read_dicom(...,
    min_size=...)`` decoded a JPEG frame at that DCT reduction (H, W = ceil(Rows / s), ceil(Columns / s)).
    """

    pixels: np.ndarray
    meta: DicomMeta
    decode_scale: int = 1


def parse_age(value: object) -> int | None:
    """Parse a DICOM Age String (``"038Y"``, ``"38"``, ``"006M"``) into whole years; else None.

    Units D/W/M/Y (none = years) are converted to years and floored.
    """
    match = _AGE.match(str(value)) if value is not None else None
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    return int(number * _AGE_UNIT_DAYS[unit] / _AGE_UNIT_DAYS["Y"] + 1e-9)


def _meta_from_dataset(ds: Dataset, stem: str, notes: list[str]) -> DicomMeta:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return DicomMeta(
        image_id=_text(ds, "SOPInstanceUID") or stem,
        patient_id=_text(ds, "PatientID"),
        patient_age=parse_age(_text(ds, "PatientAge") or None),
        patient_sex=_text(ds, "PatientSex"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_stored=_int(ds, "BitsStored"),
        photometric=_text(ds, "PhotometricInterpretation"),
        transfer_syntax=_printable(str(syntax)) if syntax else "",
        transfer_syntax_name=_printable(syntax.name) if syntax else "",
        warnings=tuple(dict.fromkeys(notes)),
        pixel_spacing_mm=_area_spacing(ds),
    )


def _area_spacing(ds: Dataset) -> float | None:
    found = pixel_spacing_mm(ds)
    if found is None:
        return None
    (row, col), _ = found
    return round(math.sqrt(row * col), 9)


def _sop_class(ds: Dataset) -> UID | None:
    for owner in (ds, getattr(ds, "file_meta", None)):
        keyword = "SOPClassUID" if owner is ds else "MediaStorageSOPClassUID"
        try:
            value = owner.get(keyword) if owner is not None else None
        except Exception:
            value = None
        if value:
            return UID(str(value))
    return None


def _check_image_header(ds: Dataset, label: str, notes: list[str]) -> None:
    """Refuse non-image SOP classes; note a modality that is not a radiograph's."""
    sop = _sop_class(ds)
    if sop is not None and sop.type == "SOP Class" and "Image Storage" not in sop.name:
        raise DicomError(f"{label}: SOP Class {sop.name} ({sop}) is not an image to segment")
    modality = _text(ds, "Modality")
    if modality not in RADIOGRAPH_MODALITIES:
        shown = f"modality {modality}" if modality else "no Modality"
        notes.append(f"{shown} (expected {', '.join(RADIOGRAPH_MODALITIES)}: a radiograph)")


def _read(source: DicomSource, name: str | None, header_only: bool, max_pixels: int,
          min_size: tuple[int, int] | None = None) -> tuple[DicomMeta, np.ndarray | None, int]:
    """Read (and unless ``header_only`` decode) one source, with every warning caught into the meta.

    Returns (meta, pixels or None, decode scale: see ``read_dicom``'s ``min_size``)."""
    label, stem, fp = _open(source, name)
    notes: list[str] = []
    try:
        with _guarded(label) as caught:
            _check_deflate(fp, label, limit=_deflate_limit(max_pixels))
            ds = _dcmread(fp, label, True, caught)
            _check_image_header(ds, label, notes)
            if header_only:
                return _finish_meta(ds, stem, notes, caught), None, 1
            _check_size(ds, label, max_pixels)
            ds = _dcmread(fp, label, False, caught)
            pixels, scale = _pixels(ds, label, max_pixels, notes, min_size)
            return _finish_meta(ds, stem, notes, caught), pixels, scale
    finally:
        if fp is not source:
            fp.close()


@contextlib.contextmanager
def _guarded(label: str) -> Iterator[list[warnings.WarningMessage]]:
    """This read's warnings recorded (the list yielded; ``capture.capturing``: no lock, other threads'
    reads run meanwhile), pydicom's log records dropped, and any exception turned into one printable
    DicomError line naming ``label``."""
    try:
        with capturing() as caught:
            yield caught
    except DicomError as exc:
        if str(exc).isprintable():
            raise
        raise DicomError(_printable(str(exc))) from None  # e.g. a UID holding a newline
    except Exception as exc:  # anything pydicom / numpy / a decoder raises: one line naming the file
        raise DicomError(f"{label}: unreadable DICOM data ({_error(exc)})") from None


def _finish_meta(ds: Dataset, stem: str, notes: list[str], caught: list[warnings.WarningMessage]) -> DicomMeta:
    notes = notes + [_one_line(f"{w.category.__name__}: {w.message}") for w in caught]
    return _meta_from_dataset(ds, stem, [n for n in notes if n])


def read_dicom_meta(source: DicomSource, *, name: str | None = None) -> DicomMeta:
    """Read only the header of ``source`` (pixel data is not loaded) and return its DicomMeta.

    Non-image SOP classes are refused; a missing Pixel Data element is not checked here.
    """
    return _read(source, name, True, DEFAULT_MAX_PIXELS)[0]


def read_header(source: DicomSource, *, name: str | None = None, pixels: bool = False, force: bool = False,
                defer_size: int | None = None, notes: list[str] | None = None) -> Dataset:
    """The pydicom Dataset of ``source``, for what ``DicomMeta`` does not hold: a source header for
    SEG / SR / SC outputs, a SEG or output read back, the full header ``explore`` prints.

    Header only (reading stops before the pixel data) unless ``pixels``: then the whole data set,
    pixel data read but not decoded (``defer_size``: values longer than this many bytes are read
    when accessed; a deferred last element that would run past the end still counts as truncated).
    ``force``: also parse a stream without the 128-byte preamble and ``DICM`` (a bare upload).
    Any SOP class is read (SEG and SR too). The guards of :func:`read_dicom` apply: a missing file,
    not DICOM, truncated, a corrupt header or a Deflate bomb raise one DicomError line naming the
    file. Every value is converted here, so pydicom's warnings about invalid values are caught (never
    printed) and, when ``notes`` is given, appended to it as one-line texts.
    """
    label, _, fp = _open(source, name)
    try:
        with _guarded(label) as caught:
            _check_deflate(fp, label, limit=_deflate_limit(DEFAULT_MAX_PIXELS))
            ds = _dcmread(fp, label, not pixels, caught, force=force, defer_size=defer_size)
            if defer_size is None:
                ds.walk(lambda _ds, _elem: None)  # converts every raw value (sequences too) inside the guard
            if notes is not None:
                notes += [n for n in (_one_line(f"{w.category.__name__}: {w.message}") for w in caught) if n]
            return ds
    finally:
        if fp is not source:
            fp.close()


def read_dicom(source: DicomSource, *, max_pixels: int | None = None, name: str | None = None,
               min_size: int | tuple[int, int] | None = None) -> DicomImage:
    """Read ``source`` into a DicomImage: ``pixels`` uint8 (H, W) display-ready, plus its DicomMeta.

    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``): Rows x Columns x frames above it are refused
    from the header, before any pixel data is decoded. Multi-frame files give their first frame.

    ``min_size`` (``(height, width)`` or one int for both; for callers that downscale anyway, such
    as prepare): an 8-bit grayscale JPEG baseline/extended frame is decoded by libjpeg at the
    largest DCT reduction of 2, 4 or 8 whose result still has at least ``min_size`` rows and
    columns (Pillow's ``Image.draft``; ``decode_scale`` says which), so ``pixels`` is
    ceil(Rows / s) x ceil(Columns / s); the meta keeps the header's Rows and Columns. Not lossless:
    libjpeg's scaled IDCT is not the full decode averaged (docs/data.md gives the measured
    difference). Every other file, or when no reduction fits, is decoded in full as without it.
    The same guards apply (the frame's own size checked before decoding, truncated frames and
    Pillow's refusals refused, never retried with another decoder) and the same display steps.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    wanted = None if min_size is None else _hw_pair(min_size)
    meta, pixels, scale = _read(source, name, False, limit, wanted)
    assert pixels is not None
    return DicomImage(pixels=pixels, meta=meta, decode_scale=scale)


def _hw_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"min_size must be positive, got {size!r}")
    return int(height), int(width)


def _pixels(ds: Dataset, label: str, max_pixels: int, notes: list[str],
            min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """(display uint8 (H, W), decode scale): the steps of the module docstring, whatever the scale."""
    frames = max(_int(ds, "NumberOfFrames"), 1)
    if frames > 1:
        notes.append(f"{frames} frames: only the first is used")
    arr, scale = _decode(ds, label, max_pixels, min_size)
    return _display(arr, ds, label, notes), scale


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


def spacing_pair(source: Any, keyword: str) -> tuple[float, float] | None:
    """``source.<keyword>`` as (row, column) mm when it holds two finite positive numbers, else None."""
    value = source.get(keyword)
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair[0], pair[1]


def pixel_spacing_mm(source: Any) -> tuple[tuple[float, float], str] | None:
    """(row, column) spacing in mm of the source's pixels and the attribute it comes from, or None.

    PixelSpacing (0028,0030) first: in a projection radiograph it is the spacing in the patient
    (calibrated, or corrected for magnification), the one a viewer measures with (PS3.3 10.7.1.3).
    Without it, ImagerPixelSpacing (0018,1164) divided by EstimatedRadiographicMagnificationFactor
    (0018,1114) when present, which the standard gives as the spacing at the patient's isocentre
    (basis ``"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"``); else ImagerPixelSpacing
    itself, at the detector, which overstates areas in the patient by the magnification (~10 % for
    a PA chest). None when the source has neither (or only invalid values).
    """
    spacing = spacing_pair(source, "PixelSpacing")
    if spacing is not None:
        return spacing, "PixelSpacing"
    spacing = spacing_pair(source, "ImagerPixelSpacing")
    if spacing is None:
        return None
    try:
        factor = float(source.get("EstimatedRadiographicMagnificationFactor") or 0)
    except (TypeError, ValueError):
        factor = 0.0
    if math.isfinite(factor) and factor > 0:
        return (spacing[0] / factor, spacing[1] / factor), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    return spacing, "ImagerPixelSpacing"


def area_mm2(mask: np.ndarray, source: Any) -> float | None:
    """Area in mm² of ``mask`` (bool (H, W), the source image's pixel grid), or None without a spacing.

    Pixel count times row spacing times column spacing, the spacing from ``pixel_spacing_mm``.
    """
    found = pixel_spacing_mm(source)
    if found is None:
        return None
    (row, col), _ = found
    return float(np.count_nonzero(mask)) * row * col


def write_dicom(path: str | os.PathLike[str], ds: pydicom.Dataset) -> Path:
    """Save ``ds`` (a SEG, SR, SC, ...) to ``path`` atomically in the DICOM file format; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
