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
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import math
import os
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from pneumoseg.util.atomic import atomic_path
from pneumoseg.util.limits import MAX_PIXELS
from pneumoseg.errors import DicomError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PERCENTILES",
    "RADIOGRAPH_MODALITIES",
    "DicomImage",
    "DicomMeta",
    "DicomSource",
    "format_header",
    "parse_age",
    "pixel_spacing_mm",
    "read_dicom",
    "read_dicom_meta",
    "read_header",
    "spacing_pair",
    "write_dicom",
]

PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for deep images without a usable VOI LUT or window."""

DEFAULT_MAX_PIXELS = MAX_PIXELS
"""Rows x Columns x frames refused above this (64,000,000) when ``max_pixels`` is not given."""

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
"""Modalities read without a warning."""

DicomSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
"""A path, the file's bytes, or a binary file object."""

_AGE = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
_ADVICE = re.compile(r"[^.;:]*\bforce\s*=\s*True\b[^.;]*[.;]?|\s*Please see <[^>]*>[^.;]*[.;]?", re.IGNORECASE)
_MAX_MESSAGE = 300
_LUMA = np.array([0.299, 0.587, 0.114])
# warnings.catch_warnings swaps process-wide state: one reader at a time keeps each file's warnings its own.
_WARNINGS_LOCK = threading.RLock()
_READING = threading.local()


class _DropWhileReading(logging.Filter):
    """Drop pydicom's log records (decoder tracebacks too) while this module reads: each one is
    already a warning in ``DicomMeta.warnings`` or part of the DicomError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_READING, "active", False)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_DropWhileReading())

# JPEG baseline/extended (the challenge's files): Pillow's libjpeg-turbo decodes about twice as
# fast as the default plugin (values may differ by 1 grey level: lossy JPEG has no exact decode).
_PILLOW_FIRST = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


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


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str) -> str:
    """A message on one line: lines joined, advice a CLI user cannot follow (force=True) dropped."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    out = re.sub(r"\s+", " ", _printable(_ADVICE.sub("", out))).strip(" ;")
    return out if len(out) <= _MAX_MESSAGE else out[: _MAX_MESSAGE - 3] + "..."


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_one_line(str(exc))}" if str(exc).strip() else type(exc).__name__


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else _printable(str(value)).strip()


def _int(ds: Dataset, keyword: str) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None else 0
    except Exception:
        return 0


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


# ---------------------------------------------------------------- reading the dataset


def _open(source: DicomSource, name: str | None) -> tuple[str, str, BinaryIO]:
    """(label for messages, stem for the image id, seekable binary stream)."""
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<upload>"
        return _printable(label), Path(label).stem, io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        label = _printable(name or str(path))
        if not path.is_file():
            raise DicomError(f"{label}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
        try:
            return label, path.stem, path.open("rb")
        except OSError as exc:
            raise DicomError(f"{label}: cannot open file ({_error(exc)})") from None
    label = _printable(name or str(getattr(source, "name", "") or "<upload>"))
    try:
        seekable = source.seekable()
    except Exception:
        seekable = False
    return label, Path(label).stem, source if seekable else io.BytesIO(source.read())


def _check_deflate(fp: BinaryIO, label: str, limit: int) -> None:
    """Refuse a Deflate-compressed data set that inflates past ``limit`` bytes (a zip bomb)."""
    start = fp.tell()
    try:
        pydicom.filereader.read_preamble(fp, False)
        file_meta = pydicom.filereader._read_file_meta_info(fp)
        if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := fp.read(1 << 20):
            total += len(inflater.decompress(chunk, limit + 1 - total))
            if total > limit:
                raise DicomError(f"{label}: Deflate-compressed data set inflates to more than {limit} bytes "
                                 f"(the limit for this image size)")
            if inflater.unconsumed_tail or inflater.eof:
                break
    except DicomError:
        raise
    except Exception:  # not parseable here: dcmread reports it
        pass
    finally:
        fp.seek(start)


def _truncation(ds: Dataset, caught: list[warnings.WarningMessage], size: int | None = None) -> str | None:
    """Describe how ``ds`` looks truncated (pydicom warns or stops silently at EOF), else None.

    ``size``: the stream's length in bytes, to check a deferred last element (value not read yet).
    """
    for w in caught:
        if "end of file" in str(w.message).lower():
            return _one_line(str(w.message).split(" in file ")[0])
    if len(ds) == 0:
        return "no data elements after the file meta header"
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        if last.value is None and last.length and size is not None:  # deferred: where its value would end
            if last.value_tell + last.length > size:
                return f"element {last.tag} needs {last.length} bytes, the file ends before"
            return None
        got = len(last.value or b"")
        if got < last.length:
            return f"element {last.tag} has {got} of its {last.length} bytes"
    return None


def _dcmread(fp: BinaryIO, label: str, header_only: bool, caught: list[warnings.WarningMessage],
             force: bool = False, defer_size: int | None = None) -> Dataset:
    """``pydicom.dcmread`` with every failure (truncation too) turned into a DicomError naming ``label``."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=header_only, force=force, defer_size=defer_size)
    except InvalidDicomError as exc:
        raise DicomError(f"{label}: not a DICOM file ({_one_line(str(exc))})") from None
    except (EOFError, OSError) as exc:
        raise DicomError(f"{label}: truncated or unreadable DICOM file ({_error(exc)})") from None
    except Exception as exc:
        raise DicomError(f"{label}: corrupt DICOM header ({_error(exc)})") from None
    size = fp.seek(0, io.SEEK_END) if defer_size is not None else None
    problem = _truncation(ds, caught, size)
    if problem:
        raise DicomError(f"{label}: truncated DICOM file ({problem})")
    return ds


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


def _check_size(ds: Dataset, label: str, max_pixels: int) -> None:
    rows, columns, frames = _int(ds, "Rows"), _int(ds, "Columns"), max(_int(ds, "NumberOfFrames"), 1)
    if rows <= 0 or columns <= 0:
        raise DicomError(f"{label}: DICOM file has no pixel data (Rows x Columns is {rows} x {columns})")
    if rows * columns * frames > max_pixels:
        raise DicomError(f"{label}: image of {rows} x {columns} x {frames} (Rows x Columns x frames) = "
                         f"{rows * columns * frames} pixels is over the limit of {max_pixels} pixels")


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


def _deflate_limit(max_pixels: int) -> int:
    """Bytes a Deflate-compressed data set may inflate to: room for ``max_pixels`` pixels and the header."""
    return 6 * max_pixels + (16 << 20)


@contextlib.contextmanager
def _guarded(label: str) -> Iterator[list[warnings.WarningMessage]]:
    """One read at a time with every warning recorded (the list yielded), pydicom's log records dropped,
    and any exception turned into one printable DicomError line naming ``label``."""
    _READING.active = True
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught, \
                np.errstate(divide="warn", over="warn", invalid="warn", under="ignore"):
            warnings.simplefilter("always")
            yield caught
    except DicomError as exc:
        if str(exc).isprintable():
            raise
        raise DicomError(_printable(str(exc))) from None  # e.g. a UID holding a newline
    except Exception as exc:  # anything pydicom / numpy / a decoder raises: one line naming the file
        raise DicomError(f"{label}: unreadable DICOM data ({_error(exc)})") from None
    finally:
        _READING.active = False


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


# ---------------------------------------------------------------- decoding


class FrameError(ValueError):
    """A compressed frame whose own header is malformed, truncated, or cannot be read."""


_JPEG_SOF_CODES = frozenset((*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                             *range(0xCD, 0xD0), 0xF7))  # SOF0-3, 5-7, 9-11, 13-15, SOF55 (JPEG-LS)
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM, RST0-7: markers without a length
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_START = b"\xff\x4f\xff\x51"  # SOC then SIZ


def _jpeg_size(frame: bytes) -> tuple[int, int, int]:
    """(height, width, components) from the frame header of a JPEG / JPEG-LS codestream.

    The markers are walked as a decoder reads them (ISO 10918-1 B.1.1.2: any number of 0xFF fill
    bytes may precede a marker); a length under 2, a segment running past the data, a scan or an
    end of image before the frame header, or a frame header whose length disagrees with its
    component count is a FrameError: a stream whose size cannot be read is never passed on.
    """
    if frame[:2] != b"\xff\xd8":
        raise FrameError("JPEG frame does not start with SOI (FFD8)")
    end, offset, hierarchical = len(frame), 2, None
    while True:
        if offset >= end:
            raise FrameError("JPEG frame ends before its frame header (SOF)")
        if frame[offset] != 0xFF:
            raise FrameError(f"JPEG marker expected at byte {offset}, found 0x{frame[offset]:02X}")
        while offset < end and frame[offset] == 0xFF:  # fill bytes
            offset += 1
        if offset >= end:
            raise FrameError("JPEG frame ends inside fill bytes, before its frame header (SOF)")
        code = frame[offset]
        offset += 1
        if code in _JPEG_STANDALONE:
            continue
        if code in (0x00, 0xD8, 0xD9, 0xDA):
            what = {0x00: "a stuffed 00 byte", 0xD8: "a second SOI", 0xD9: "EOI", 0xDA: "a scan (SOS)"}[code]
            raise FrameError(f"JPEG frame has {what} before its frame header (SOF)")
        if offset + 2 > end:
            raise FrameError(f"JPEG marker FF{code:02X} at byte {offset - 2} has no length")
        length = int.from_bytes(frame[offset: offset + 2], "big")
        if length < 2 or offset + length > end:
            raise FrameError(f"JPEG marker FF{code:02X} at byte {offset - 2} has an invalid length {length} "
                             f"({end - offset} bytes left)")
        if code in _JPEG_SOF_CODES or code == 0xDE:  # SOFn, or DHP (hierarchical: the whole image's size)
            if length < 8:
                raise FrameError(f"JPEG frame header FF{code:02X} of length {length} (at least 8)")
            height = int.from_bytes(frame[offset + 3: offset + 5], "big")
            width = int.from_bytes(frame[offset + 5: offset + 7], "big")
            components = frame[offset + 7]
            if length != 8 + 3 * components:
                raise FrameError(f"JPEG frame header FF{code:02X} of length {length} for {components} "
                                 f"components (expected {8 + 3 * components})")
            if code == 0xDE:
                hierarchical = (height, width, components)
            elif hierarchical is not None:
                if height > hierarchical[0] or width > hierarchical[1]:
                    raise FrameError(f"JPEG frame of {height} x {width} larger than its hierarchy's "
                                     f"{hierarchical[0]} x {hierarchical[1]}")
                return hierarchical
            else:
                return height, width, components
        offset += length


def _siz_size(stream: bytes, where: str) -> tuple[int, int, int]:
    """(height, width, components) from the SIZ segment of a J2K codestream starting with SOC SIZ."""
    if stream[:4] != _J2K_START:
        raise FrameError(f"{where} does not start with SOC SIZ (FF4F FF51)")
    if len(stream) < 4 + 38:
        raise FrameError(f"{where} ends inside its SIZ segment")
    length = int.from_bytes(stream[4:6], "big")
    x, y, x0, y0, tx, ty, tx0, ty0 = (int.from_bytes(stream[8 + 4 * i: 12 + 4 * i], "big") for i in range(8))
    components = int.from_bytes(stream[40:42], "big")
    if not 1 <= components <= 16384 or length != 38 + 3 * components:
        raise FrameError(f"{where}: SIZ of length {length} for {components} components")
    if len(stream) < 4 + length:
        raise FrameError(f"{where} ends inside its SIZ segment")
    if x <= x0 or y <= y0 or tx == 0 or ty == 0 or tx0 > x0 or ty0 > y0:
        raise FrameError(f"{where}: SIZ declares an empty image or invalid tiles "
                         f"({x} x {y} from {x0}, {y0}; tiles {tx} x {ty} from {tx0}, {ty0})")
    return y - y0, x - x0, components


def _jp2_codestream(frame: bytes) -> bytes:
    """The contents of the first top-level ``jp2c`` box of a JP2 file (ISO 15444-1 I.4), walking boxes."""
    offset, end = 0, len(frame)
    while offset < end:
        if offset + 8 > end:
            raise FrameError(f"JP2 box header at byte {offset} is cut short")
        size = int.from_bytes(frame[offset: offset + 4], "big")
        kind = frame[offset + 4: offset + 8]
        header = 8
        if size == 1:
            if offset + 16 > end:
                raise FrameError(f"JP2 box at byte {offset} is cut short")
            size, header = int.from_bytes(frame[offset + 8: offset + 16], "big"), 16
        elif size == 0:
            size = end - offset  # the last box runs to the end
        if size < header or offset + size > end:
            raise FrameError(f"JP2 box {kind!r} at byte {offset} has an invalid length {size} "
                             f"({end - offset} bytes left)")
        if kind == b"jp2c":
            return frame[offset + header: offset + size]
        offset += size
    raise FrameError("JP2 file has no codestream (jp2c) box")


def frame_size(frame: bytes, syntax: str) -> tuple[int, int, int] | None:
    """(height, width, components) a compressed frame declares for ``syntax``, read as decoders read it.

    None for transfer syntaxes without a size of their own (RLE: see :func:`_check_rle`) or not
    compressed; a FrameError when the frame's header is malformed.
    """
    if syntax in _JPEG_SYNTAXES:
        return _jpeg_size(frame)
    if syntax in _J2K_SYNTAXES:
        if frame[:4] == _J2K_START:
            return _siz_size(frame, "JPEG 2000 codestream")
        if frame[:12] == _JP2_SIGNATURE:
            return _siz_size(_jp2_codestream(frame), "JP2 codestream box")
        raise FrameError("JPEG 2000 frame is neither a J2K codestream (FF4F FF51) nor a JP2 file")
    return None


def _check_rle(frame: bytes, segments: int) -> None:
    """The RLE Lossless header (PS3.5 G.5): ``segments`` segments, offsets from 64, increasing, inside."""
    if len(frame) < 64:
        raise FrameError(f"RLE frame of {len(frame)} bytes has no 64-byte header")
    header = [int.from_bytes(frame[4 * i: 4 * i + 4], "little") for i in range(16)]
    if header[0] != segments:
        raise FrameError(f"RLE frame has {header[0]} segments, the header's samples x bytes need {segments}")
    offsets = header[1: 1 + segments]
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)) or offsets[-1] >= len(frame):
        raise FrameError(f"RLE frame has invalid segment offsets {offsets} ({len(frame)} bytes)")


def _jpeg_truncated(frame: bytes) -> bool:
    """A JPEG / JPEG-LS frame that does not end with EOI (FFD9), after the 00 / FF bytes encoders pad
    frames with to an even length."""
    return not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9")



_JPEG_SYNTAXES = frozenset([*pydicom.uid.JPEGTransferSyntaxes, *pydicom.uid.JPEGLSTransferSyntaxes,
                            *(f"1.2.840.10008.1.2.4.{n}" for n in range(52, 67))])  # + the retired JPEG processes
_J2K_SYNTAXES = frozenset(pydicom.uid.JPEG2000TransferSyntaxes)


def _first_frame(ds: Dataset) -> bytes:
    """The encoded first frame, found the way pydicom's decoder finds it (offset tables included)."""
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=max(_int(ds, "NumberOfFrames"), 1),
                                    extended_offsets=extended)


def _check_codestream(ds: Dataset, label: str, max_pixels: int) -> None:
    """Before any decoder runs: the compressed first frame's own size must be readable, within
    ``max_pixels`` and equal to Rows x Columns x SamplesPerPixel; a JPEG frame must end with EOI.

    RLE has no size of its own: its header must have samples x bytes segments at valid offsets.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in _JPEG_SYNTAXES and syntax not in _J2K_SYNTAXES and syntax != pydicom.uid.RLELossless:
        return
    frame = _first_frame(ds)
    rows, columns, samples = _int(ds, "Rows"), _int(ds, "Columns"), max(_int(ds, "SamplesPerPixel"), 1)
    try:
        if syntax == pydicom.uid.RLELossless:
            segments = samples * ((_int(ds, "BitsAllocated") + 7) // 8)
            if not 1 <= segments <= 15:
                raise FrameError(f"{samples} samples of {_int(ds, 'BitsAllocated')} bits cannot be RLE encoded")
            _check_rle(frame, segments)
            return
        size = frame_size(frame, syntax)
    except FrameError as exc:
        raise DicomError(f"{label}: compressed frame refused before decoding ({exc})") from None
    if size is None:
        return
    height, width, components = size
    if height * width > max_pixels:
        raise DicomError(f"{label}: compressed frame declares {height} x {width} pixels, over the limit of "
                         f"{max_pixels} pixels (header says {rows} x {columns})")
    if size != (rows, columns, samples):
        raise DicomError(f"{label}: compressed frame declares {height} x {width} pixels x {components} "
                         f"components, the header says {rows} x {columns} x {samples} (refused before decoding)")
    if syntax in _JPEG_SYNTAXES and _jpeg_truncated(frame):
        raise DicomError(f"{label}: truncated frame (the JPEG data ends without its end-of-image marker)")


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


def _pixels(ds: Dataset, label: str, max_pixels: int, notes: list[str],
            min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """(display uint8 (H, W), decode scale): the steps of the module docstring, whatever the scale."""
    frames = max(_int(ds, "NumberOfFrames"), 1)
    if frames > 1:
        notes.append(f"{frames} frames: only the first is used")
    photometric = _text(ds, "PhotometricInterpretation")
    arr, scale = _decode(ds, label, max_pixels, min_size)
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        pixels = _palette_to_gray(arr, ds, label)
    else:
        pixels = _to_uint8(_to_gray(arr, label, photometric), ds, label, notes)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels), scale


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


def write_dicom(path: str | os.PathLike[str], ds: pydicom.Dataset) -> Path:
    """Save ``ds`` (a SEG, SR, SC, ...) to ``path`` atomically in the DICOM file format; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
