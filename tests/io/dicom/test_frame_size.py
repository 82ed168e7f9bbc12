"""The compressed frame's own size is read the way decoders read it, before any decoder runs.

Reproduces the drill's findings: a fill byte (ISO 10918-1 B.1.1.2) before the SOF hid a
20000 x 20000 frame in a 64 x 64 file; a decoy J2K codestream in an earlier JP2 box was taken for
the SIZ; a truncated JPEG was padded with black rows; Pillow's refusals were retried with another
decoder. ``make fuzz`` runs the property tests with PNEUMOSEG_FUZZ_EXAMPLES examples.
"""

from __future__ import annotations

import io
import os
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, SecondaryCaptureImageStorage

from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.frames import FrameError, frame_size
from pneumoseg.io.dicom.read import read_dicom

N_EXAMPLES = int(os.environ.get("PNEUMOSEG_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("PNEUMOSEG_FUZZ_SEED", "0"))
PROPERTY = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=SEED == 0,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _jpeg(size: int = 64) -> bytes:
    arr = (np.add.outer(np.arange(size), np.arange(size)) * 2 % 256).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _dicom(path: Path, frame: bytes, syntax: str, rows: int = 64, columns: int = 64, bits: int = 8) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was reached")

    monkeypatch.setattr(Dataset, "pixel_array", property(refuse))


def _sof(jpeg: bytes) -> int:
    return jpeg.index(b"\xff\xc0")


def _one_line(exc: pytest.ExceptionInfo[DicomError], path: Path) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


def test_fill_byte_before_a_lying_sof_is_refused_without_decoding(tmp_path: Path, no_decoding: None) -> None:
    real = _jpeg()
    at = _sof(real)
    lying = real[:at] + b"\xff" + real[at: at + 5] + struct.pack(">HH", 20000, 20000) + real[at + 9:]
    path = _dicom(tmp_path / "fill.dcm", lying, JPEGBaseline8Bit)
    start = time.perf_counter()
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "compressed frame declares 20000 x 20000 pixels, over the limit" in _one_line(info, path)
    with pytest.raises(DicomError) as info:  # no limit: still refused, it is not the header's 64 x 64
        read_dicom(path, max_pixels=2**40)
    assert "20000 x 20000 pixels x 1 components, the header says 64 x 64 x 1" in _one_line(info, path)
    assert time.perf_counter() - start < 5


def test_fill_bytes_in_an_honest_jpeg_still_decode(tmp_path: Path) -> None:
    real = _jpeg()
    at = _sof(real)
    path = _dicom(tmp_path / "honest.dcm", real[:at] + b"\xff\xff\xff" + real[at:], JPEGBaseline8Bit)
    assert read_dicom(path).pixels.shape == (64, 64)
    assert frame_size(real[:at] + b"\xff\xff" + real[at:], JPEGBaseline8Bit) == (64, 64, 1)


@pytest.mark.parametrize("length", [0, 1, 0xFFFF])
def test_bogus_segment_length_is_refused_not_passed(tmp_path: Path, no_decoding: None, length: int) -> None:
    real = _jpeg()
    app = real.index(b"\xff\xe0")  # JFIF APP0 before the SOF
    bogus = real[:app + 2] + struct.pack(">H", length) + real[app + 4:]
    path = _dicom(tmp_path / "bogus.dcm", bogus, JPEGBaseline8Bit)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "compressed frame refused before decoding" in _one_line(info, path)


def _siz(width: int, height: int, components: int = 1) -> bytes:
    body = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, width, height, 0, 0, components)
    body += b"\x07\x01\x01" * components
    return b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(body)) + body


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
FTYP = _box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")


def test_jp2_decoy_codestream_in_an_earlier_box_is_not_the_siz(tmp_path: Path, no_decoding: None) -> None:
    jp2 = SIGNATURE + FTYP + _box(b"uuid", bytes(16) + _siz(64, 64)) + _box(b"jp2c", _siz(20000, 20000) + b"\xff\xd9")
    assert frame_size(jp2, JPEG2000Lossless) == (20000, 20000, 1)
    path = _dicom(tmp_path / "decoy.dcm", jp2, JPEG2000Lossless)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "compressed frame declares 20000 x 20000 pixels, over the limit" in _one_line(info, path)


@pytest.mark.parametrize("frame", [
    b"\x00\x00" + _siz(64, 64),  # a raw codestream must start with SOC SIZ
    SIGNATURE + FTYP + _box(b"uuid", _siz(64, 64)),  # no jp2c box at all
    SIGNATURE + struct.pack(">I", 4) + b"ftyp" + _box(b"jp2c", _siz(64, 64)),  # a box length under 8
    SIGNATURE + _box(b"jp2c", b"\x00" + _siz(64, 64)),  # jp2c not starting with SOC SIZ
])
def test_malformed_jpeg_2000_is_refused(tmp_path: Path, no_decoding: None, frame: bytes) -> None:
    path = _dicom(tmp_path / "j2k.dcm", frame + b"\0" * (len(frame) % 2), JPEG2000Lossless)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "compressed frame refused before decoding" in _one_line(info, path)


def test_truncated_jpeg_is_refused_not_padded(tmp_path: Path) -> None:
    real = _jpeg(256)
    path = _dicom(tmp_path / "cut.dcm", real[: len(real) // 2], JPEGBaseline8Bit, 256, 256)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "truncated frame" in _one_line(info, path)


@pytest.mark.parametrize(("message", "expected"), [
    ("image file is truncated (12 bytes not processed)", "truncated frame"),
    ("Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack.",
     "decompression-bomb limit"),
])
def test_pillow_refusal_is_not_retried_with_another_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           message: str, expected: str) -> None:
    path = _dicom(tmp_path / "ok.dcm", _jpeg(), JPEGBaseline8Bit)
    assert read_dicom(path).pixels.shape == (64, 64)
    plugins: list[str] = []
    original = Dataset.pixel_array_options

    def options(self: Dataset, **kwargs: object) -> None:
        plugins.append(str(kwargs.get("decoding_plugin", "")))
        original(self, **kwargs)  # type: ignore[arg-type]

    def pillow_refuses(self: Dataset) -> None:
        raise RuntimeError(f"Unable to decode as exceptions were raised by all available plugins:\n  pillow: {message}")

    monkeypatch.setattr(Dataset, "pixel_array_options", options)
    monkeypatch.setattr(Dataset, "pixel_array", property(pillow_refuses))
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert expected in _one_line(info, path)
    assert plugins == ["pillow"]  # no second try with the default plugins


def test_rle_segment_count_must_match_samples_and_bytes(tmp_path: Path, no_decoding: None) -> None:
    header = struct.pack("<16I", 2, 64, 80, *[0] * 13)  # 2 segments for an 8-bit, 1-sample image
    path = _dicom(tmp_path / "rle.dcm", header + bytes(32), RLELossless)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "RLE frame has 2 segments, the header's samples x bytes need 1" in _one_line(info, path)


# --- properties of the parser -------------------------------------------------------------------

_SEGMENT = st.tuples(st.sampled_from([0xE0, 0xE1, 0xEE, 0xFE, 0xDB, 0xC4, 0xDD]), st.binary(max_size=40))


@st.composite
def _jpeg_streams(draw: st.DrawFn) -> tuple[bytes, tuple[int, int, int]]:
    """A well-formed marker stream: random segments, fill bytes before any marker, one SOF."""
    out = b"\xff\xd8"
    for code, payload in draw(st.lists(_SEGMENT, max_size=6)):
        out += b"\xff" * draw(st.integers(0, 3)) + bytes([0xFF, code]) + struct.pack(">H", 2 + len(payload)) + payload
    height, width, nf = draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), draw(st.integers(1, 4))
    sof = draw(st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCB, 0xF7]))
    out += b"\xff" * draw(st.integers(0, 3)) + bytes([0xFF, sof])
    out += struct.pack(">HBHHB", 8 + 3 * nf, 8, height, width, nf)
    out += b"\x01\x11\x00" * nf + b"\xff\xda" + draw(st.binary(max_size=20))
    return out, (height, width, nf)


def _bounded(frame: bytes, syntax: str) -> object:
    start = time.perf_counter()
    try:
        result: object = frame_size(frame, syntax)
    except FrameError as exc:
        result = exc
    assert time.perf_counter() - start < 1.0
    assert result is None or isinstance(result, FrameError) or (
        isinstance(result, tuple) and all(isinstance(v, int) and v >= 0 for v in result))
    return result


@PROPERTY
@given(_jpeg_streams())
def test_well_formed_jpeg_gives_its_sof(stream: tuple[bytes, tuple[int, int, int]]) -> None:
    assert _bounded(stream[0], JPEGBaseline8Bit) == stream[1]


@PROPERTY
@given(_jpeg_streams(), st.data())
def test_corrupted_jpeg_never_crashes(stream: tuple[bytes, tuple[int, int, int]], data: st.DataObject) -> None:
    frame = bytearray(stream[0])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        kind = data.draw(st.sampled_from(["fill", "length", "byte", "cut"]))
        if kind == "fill":
            frame[at:at] = b"\xff" * data.draw(st.integers(1, 5))
        elif kind == "length" and at + 2 <= len(frame):
            frame[at: at + 2] = struct.pack(">H", data.draw(st.sampled_from([0, 1, 2, 3, 0xFFFF])))
        elif kind == "byte":
            frame[at] = data.draw(st.integers(0, 255))
        else:
            del frame[at:]
            if not frame:
                frame = bytearray(b"\xff")
    _bounded(bytes(frame), JPEGBaseline8Bit)
    _bounded(bytes(frame), pydicom.uid.JPEGLSLossless)


_BOX_KINDS = st.sampled_from([b"ftyp", b"jp2h", b"ihdr", b"colr", b"uuid", b"free", b"res ", b"xml "])


def _tree(depth: int) -> st.SearchStrategy[bytes]:
    """Nested boxes (superboxes hold boxes); payloads may hold decoy codestreams."""
    leaf = st.one_of(st.binary(max_size=24), st.builds(_siz, st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)))
    if depth == 0:
        return st.builds(_box, _BOX_KINDS, leaf)
    return st.builds(_box, _BOX_KINDS, st.one_of(leaf, st.lists(_tree(depth - 1), max_size=3).map(b"".join)))


@PROPERTY
@given(st.lists(_tree(2), max_size=4), st.integers(1, 2**31), st.integers(1, 2**31), st.integers(1, 4))
def test_jp2_gives_the_jp2c_siz_past_nested_decoys(boxes: list[bytes], width: int, height: int, nc: int) -> None:
    jp2 = SIGNATURE + FTYP + b"".join(boxes) + _box(b"jp2c", _siz(width, height, nc) + b"\xff\xd9")
    assert _bounded(jp2, JPEG2000Lossless) == (height, width, nc)


@PROPERTY
@given(st.lists(_tree(2), max_size=4), st.data())
def test_corrupted_jp2_never_crashes(boxes: list[bytes], data: st.DataObject) -> None:
    frame = bytearray(SIGNATURE + b"".join(boxes) + _box(b"jp2c", _siz(64, 64)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        if data.draw(st.booleans()) and at + 4 <= len(frame):
            frame[at: at + 4] = struct.pack(">I", data.draw(st.sampled_from([0, 1, 7, 8, 2**32 - 1])))
        else:
            frame[at] = data.draw(st.integers(0, 255))
    _bounded(bytes(frame), JPEG2000Lossless)
    _bounded(bytes(frame[12:]), pydicom.uid.JPEG2000)


@PROPERTY
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(frame: bytes) -> None:
    for syntax in (JPEGBaseline8Bit, pydicom.uid.JPEGLSLossless, JPEG2000Lossless, RLELossless):
        _bounded(frame, syntax)
        _bounded(b"\xff\xd8" + frame, syntax)
        _bounded(SIGNATURE + frame, syntax)
