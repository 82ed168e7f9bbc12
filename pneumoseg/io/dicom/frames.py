"""Guards on a compressed frame, read before any decoder runs: its declared size, its structure, its end.

The first frame's own header (JPEG / JPEG-LS SOF, JPEG 2000 SIZ, JP2 boxes, RLE segment table) is
walked as decoders walk it, without decoding: its size must be readable, within ``max_pixels`` and
equal to the DICOM header's Rows x Columns x SamplesPerPixel, and a JPEG frame must end with EOI.
A frame that fails is refused with one DicomError line; a malformed header is a :class:`FrameError`.
"""

from __future__ import annotations

import itertools

import pydicom
from pydicom.dataset import Dataset

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.text import _int

__all__ = ["FrameError", "frame_size"]


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

