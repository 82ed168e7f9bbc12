"""Parse one source into a pydicom Dataset under the guards that come before any pixel.

The only place ``pydicom.dcmread`` is called. A source (path, bytes or binary file object) is
opened into a seekable stream with a label for messages; a Deflate-compressed data set is refused
when it would inflate past the limit for the image size (a zip bomb); a truncated file (pydicom
warns, or stops silently at the end) is refused; Rows x Columns x frames is checked against
``max_pixels`` from the header. Each refusal is one DicomError line that starts with the label.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.text import _error, _int, _one_line, _printable

DicomSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
"""A path, the file's bytes, or a binary file object."""


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


def _check_size(ds: Dataset, label: str, max_pixels: int) -> None:
    rows, columns, frames = _int(ds, "Rows"), _int(ds, "Columns"), max(_int(ds, "NumberOfFrames"), 1)
    if rows <= 0 or columns <= 0:
        raise DicomError(f"{label}: DICOM file has no pixel data (Rows x Columns is {rows} x {columns})")
    if rows * columns * frames > max_pixels:
        raise DicomError(f"{label}: image of {rows} x {columns} x {frames} (Rows x Columns x frames) = "
                         f"{rows * columns * frames} pixels is over the limit of {max_pixels} pixels")


def _deflate_limit(max_pixels: int) -> int:
    """Bytes a Deflate-compressed data set may inflate to: room for ``max_pixels`` pixels and the header."""
    return 6 * max_pixels + (16 << 20)
