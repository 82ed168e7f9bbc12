"""Uploads (bytes in memory) -> ``InputImage``, with the pixel count checked before decoding.

Uploads are sniffed by content, never by name: ``DICM`` at offset 128 (DICOM), the PNG or JPEG
signature, or a preamble-less DICOM that pydicom parses (one with a File Meta group or image
IOD tags). Nothing is written to disk. The image size is read from the header first (Pillow for
PNG/JPEG, ``read_dicom(max_pixels=...)`` for DICOM) and an image of more than ``max_pixels``
pixels is refused with ImageTooLargeError before any pixel is decoded. Pixels then go through
the same conversions as ``pneumoseg predict`` (``read_image``, ``read_dicom``).

Uploads decode concurrently, each on its own worker thread: the DICOM reader keeps each read's
warnings to itself without a lock (``pneumoseg.io.dicom.capture``), and the one process-wide
setting touched here, Pillow's ``MAX_IMAGE_PIXELS``, is only held under ``_pillow_lock`` while it
is changed, never while anything decodes (benchmarks/bench_service_decode.py measures the gain).
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from pneumoseg.errors import DataError, DicomError, PneumosegError
from pneumoseg.io.images import decode_image
from pneumoseg.util.paths import is_valid_uid
from pneumoseg.inference.inputs import InputImage

__all__ = [
    "JPEG_SIGNATURE",
    "MAX_NAME_CHARS",
    "PNG_SIGNATURE",
    "ImageTooLargeError",
    "Kind",
    "UnsupportedMediaError",
    "decode_upload",
    "display_name",
    "image_header_size",
    "pillow_pixel_limit",
    "sniff",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
MAX_NAME_CHARS = 200
"""Longest upload file name echoed back (longer names are cut)."""
Kind = Literal["dicom", "dicom-no-preamble", "png", "jpeg"]
_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")
_DICOM_TOO_LARGE = "over the limit of"  # how read_dicom words a refusal by max_pixels


class UnsupportedMediaError(PneumosegError):
    """An upload that is neither DICOM nor PNG/JPEG (HTTP 415)."""


class ImageTooLargeError(PneumosegError):
    """An image whose header declares more pixels than ``settings.max_pixels`` (HTTP 413)."""


def display_name(filename: str | None) -> str:
    """The upload's file name as echoed back: last path component, printable, at most 200 characters.

    ``../../x.dcm`` -> ``x.dcm``; ``C:\\dir\\x.png`` -> ``x.png``; empty or missing -> ``upload``.
    Never used as a path: uploads stay in memory.
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME_CHARS]
    return name if name not in ("", ".", "..") else "upload"


def _image_id_from_name(name: str) -> str:
    """A PNG/JPEG's ImageId: the name's stem, as ``pneumoseg predict`` names the same file (``case_.png`` ->
    ``case_``); runs of characters outside ``[A-Za-z0-9._-]`` become ``_`` and a leading ``.`` or ``-`` is
    dropped, as ``safe_name`` requires (``upload`` if nothing is left)."""
    stem = PurePosixPath(name).stem
    return _UNSAFE_STEM.sub("_", stem).lstrip(".-") or "upload"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble and ``DICM``, as pydicom reads it with force."""
    from pneumoseg.io.dicom.read import read_header

    try:
        ds = read_header(data, force=True)
    except DicomError:
        return False
    file_meta = getattr(ds, "file_meta", None)
    has_meta = file_meta is not None and "TransferSyntaxUID" in file_meta
    return has_meta or any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality"))


def sniff(data: bytes) -> Kind:
    """The upload's kind from its first bytes; UnsupportedMediaError when none fits."""
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(data) > 8 and _looks_like_bare_dicom(data):
        return "dicom-no-preamble"
    head = data[:16]
    raise UnsupportedMediaError(
        f"unsupported file type (first bytes {head!r}): upload a DICOM file (.dcm) or a PNG/JPEG image")


# Pillow's decompression-bomb guard is a process-wide setting (``Image.MAX_IMAGE_PIXELS``: warn
# above it, refuse above twice it). While any upload decodes it is lowered so that Pillow itself
# refuses more than the smallest active ``max_pixels`` (it also decodes DICOM JPEG frames, whose
# size the DICOM header may misstate); the original value is restored when the last one ends.
# The lock covers these updates only: decodes themselves run concurrently.
_pillow_lock = threading.Lock()
_pillow_active: list[int] = []
_pillow_saved: list[int | None] = []


@contextmanager
def pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Within the block, Pillow refuses images of more than about ``max_pixels`` pixels (thread-safe)."""
    from PIL import Image

    with _pillow_lock:
        if not _pillow_active:
            _pillow_saved[:] = [Image.MAX_IMAGE_PIXELS]
        _pillow_active.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = max(1, min(_pillow_active) // 2)
    try:
        yield
    finally:
        with _pillow_lock:
            _pillow_active.remove(max_pixels)
            Image.MAX_IMAGE_PIXELS = max(1, min(_pillow_active) // 2) if _pillow_active else _pillow_saved[0]


def image_header_size(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """(height, width) of a PNG/JPEG read from its header only (no pixel is decoded).

    Pillow's format plugins read the header (IHDR, SOF) without ``Image.open``'s own bomb check, so
    the message can give the size. ImageTooLargeError above ``max_pixels``; DataError naming
    ``name`` when the header is unreadable.
    """
    from PIL import JpegImagePlugin, PngImagePlugin

    reader = PngImagePlugin.PngImageFile if data.startswith(PNG_SIGNATURE) else JpegImagePlugin.JpegImageFile
    try:
        with reader(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception as exc:
        raise DataError(f"{name}: not a readable image (PNG or JPEG expected; {type(exc).__name__}: {exc})") from None
    if height * width > max_pixels:
        raise ImageTooLargeError(f"{name}: image too large ({width} x {height} = {width * height:,} pixels); the "
                                 f"limit is {max_pixels:,} pixels (settings.max_pixels / --max-pixels)")
    if height < 1 or width < 1:
        raise DataError(f"{name}: image header declares {width} x {height} pixels")
    return height, width


def _decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W) (``pneumoseg.io.images.decode_image``), size checked from the header first."""
    shape = image_header_size(data, name, max_pixels)
    arr = decode_image(data, name)
    if arr.shape[:2] != shape:
        raise DataError(f"{name}: decoded pixels have shape {arr.shape[:2]}, header says {shape}")
    return arr


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> InputImage:
    """DICOM bytes -> InputImage (ImageId = SOPInstanceUID, checked as ``pneumoseg predict`` does)."""
    from pneumoseg.io.dicom.read import read_dicom

    try:
        dcm = read_dicom(data, max_pixels=max_pixels, name=name)
    except DicomError as exc:
        message = str(exc)
        if _DICOM_TOO_LARGE in message:  # refused from the header or the codestream, nothing decoded
            raise ImageTooLargeError(f"{message} (settings.max_pixels / --max-pixels)") from None
        raise
    uid = dcm.meta.image_id
    if not is_valid_uid(uid):
        raise DicomError(f"{name}: SOPInstanceUID {uid[:80]!r} is not a valid DICOM UID (digits and dots, "
                         "at most 64 characters)")
    return InputImage(uid, dcm.pixels, Path(name), dcm.meta)


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> tuple[InputImage, Kind]:
    """Upload bytes -> (InputImage, kind); ``filename`` only names the upload (see ``display_name``).

    Raises UnsupportedMediaError (not DICOM/PNG/JPEG), ImageTooLargeError (more than
    ``max_pixels`` pixels, from the header), DicomError or DataError (unreadable), each naming
    the upload.
    """
    name = display_name(filename)
    kind = sniff(data)
    with pillow_pixel_limit(max_pixels):
        if kind in ("png", "jpeg"):
            return InputImage(_image_id_from_name(name), _decode_image(data, name, max_pixels), Path(name)), kind
        if kind == "dicom-no-preamble":
            data = b"\0" * 128 + b"DICM" + data
        return _decode_dicom(data, name, max_pixels), kind
