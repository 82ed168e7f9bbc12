"""``read_dicom(..., min_size=...)``: the reduced (DCT-scaled) JPEG decode that prepare uses.

It must be Pillow's own ``Image.draft`` decode of the frame, apply the same display steps as the
full decode (VOI window, MONOCHROME1 inversion), decode in full whenever no reduction fits, and
keep every guard of the full decode (the frame's own size checked first, truncated frames and
Pillow's refusals refused, never retried with another decoder).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

import pneumoseg.io.dicom.decode as decode_module
from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.frames import _first_frame
from pneumoseg.io.dicom.read import read_dicom
from tests.helpers.dicom import save_dicom, sc_dataset
from tests.io.dicom.test_frame_size import _dicom, _jpeg, _one_line, _sof
from tests.shared_data import SIIM, require_siim

REAL = sorted((SIIM / "dicom").glob("*.dcm"))


def _draft(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Pillow's own reduced decode of the file's first frame (``size`` is Pillow's (width, height))."""
    with Image.open(io.BytesIO(_first_frame(pydicom.dcmread(path))), formats=("JPEG",)) as image:
        image.draft("L", size)
        return np.asarray(image)


@require_siim
@pytest.mark.parametrize(("min_size", "scale"), [(256, 4), (512, 2), (128, 8), ((100, 300), 2), (600, 1)])
def test_real_files_decode_as_pillows_draft(min_size: int | tuple[int, int], scale: int) -> None:
    for path in REAL:
        image = read_dicom(path, min_size=min_size)
        full = read_dicom(path)
        assert image.decode_scale == scale and image.meta == full.meta  # rows/columns stay the header's
        assert image.pixels.shape == (1024 // scale, 1024 // scale) and image.pixels.dtype == np.uint8
        if scale == 1:  # no reduction fits: the full decode, unchanged
            assert np.array_equal(image.pixels, full.pixels)
        else:
            h, w = (min_size, min_size) if isinstance(min_size, int) else min_size
            assert np.array_equal(image.pixels, _draft(path, (w, h)))


def test_odd_sizes_round_up_like_libjpeg(tmp_path: Path) -> None:
    arr = (np.add.outer(np.arange(99), np.arange(70)) % 256).astype(np.uint8)  # 99 rows x 70 columns
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=90)
    path = _dicom(tmp_path / "odd.dcm", out.getvalue(), JPEGBaseline8Bit, rows=99, columns=70)
    image = read_dicom(path, min_size=(20, 17))  # 99 // 20 = 4, 70 // 17 = 4
    assert image.decode_scale == 4 and image.pixels.shape == (25, 18)
    assert np.array_equal(image.pixels, _draft(path, (17, 20)))


def test_window_and_monochrome1_are_applied_as_on_the_full_decode(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "m1.dcm", _jpeg(256), JPEGBaseline8Bit, 256, 256)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 100, 120
    ds.save_as(path, enforce_file_format=True)
    full, reduced = read_dicom(path), read_dicom(path, min_size=64)
    assert reduced.decode_scale == 4
    # The display mapping is per value: learn it from the full decode, apply it to the draft's values.
    with Image.open(io.BytesIO(_first_frame(pydicom.dcmread(path))), formats=("JPEG",)) as image:
        raw = np.asarray(image)
    mapping = {int(v): int(full.pixels[raw == v][0]) for v in np.unique(raw)}
    draft = _draft(path, (64, 64))
    known = np.isin(draft, list(mapping))
    assert known.mean() > 0.9
    expected = np.vectorize(mapping.get)(draft[known])
    assert np.array_equal(reduced.pixels[known], expected)
    assert reduced.pixels.max() > 200 and reduced.pixels.min() < 50  # windowed, not raw


def test_other_files_decode_in_full(tmp_path: Path) -> None:
    arr = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    path = save_dicom(sc_dataset(arr, 8), tmp_path / "plain.dcm")  # uncompressed: nothing to reduce
    image = read_dicom(path, min_size=16)
    assert image.decode_scale == 1 and np.array_equal(image.pixels, read_dicom(path).pixels)


def test_truncated_frame_is_refused_with_the_reduced_decode(tmp_path: Path) -> None:
    real = _jpeg(256)
    path = _dicom(tmp_path / "cut.dcm", real[: len(real) // 2], JPEGBaseline8Bit, 256, 256)
    with pytest.raises(DicomError) as info:
        read_dicom(path, min_size=64)
    assert "truncated frame" in _one_line(info, path)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was reached")

    monkeypatch.setattr(Dataset, "pixel_array", property(refuse))
    monkeypatch.setattr(decode_module.PIL.Image, "open", refuse)


@pytest.mark.parametrize("declared", [(128, 128), (20000, 20000)])
def test_frame_size_differing_from_the_header_is_refused_before_decoding(
        tmp_path: Path, no_decoding: None, declared: tuple[int, int]) -> None:
    real = _jpeg(256)
    at = _sof(real)
    lying = real[:at + 5] + declared[0].to_bytes(2, "big") + declared[1].to_bytes(2, "big") + real[at + 9:]
    path = _dicom(tmp_path / "liar.dcm", lying, JPEGBaseline8Bit, 256, 256)
    with pytest.raises(DicomError) as info:
        read_dicom(path, min_size=64, max_pixels=2**40)
    assert f"compressed frame declares {declared[0]} x {declared[1]} pixels" in _one_line(info, path)


@pytest.mark.parametrize(("message", "expected"), [
    ("image file is truncated (12 bytes not processed)", "truncated frame"),
    ("Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack.",
     "decompression-bomb limit"),
])
def test_pillow_refusal_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str,
                                       expected: str) -> None:
    path = _dicom(tmp_path / "ok.dcm", _jpeg(256), JPEGBaseline8Bit, 256, 256)
    assert read_dicom(path, min_size=64).decode_scale == 4

    def pillow_refuses(*args: object, **kwargs: object) -> None:
        raise OSError(message)

    def other_decoder(self: Dataset) -> None:
        raise AssertionError("another decoder was tried after Pillow's refusal")

    monkeypatch.setattr(decode_module.PIL.Image, "open", pillow_refuses)
    monkeypatch.setattr(Dataset, "pixel_array", property(other_decoder))
    with pytest.raises(DicomError) as info:
        read_dicom(path, min_size=64)
    assert expected in _one_line(info, path)


def test_min_size_must_be_positive(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "ok.dcm", _jpeg(), JPEGBaseline8Bit)
    with pytest.raises(ValueError, match="min_size must be positive"):
        read_dicom(path, min_size=0)


def test_frame_pillow_cannot_open_goes_to_the_full_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _dicom(tmp_path / "ok.dcm", _jpeg(256), JPEGBaseline8Bit, 256, 256)
    full = read_dicom(path)

    def cannot_identify(*args: object, **kwargs: object) -> None:  # not a refusal: the full decode tries
        raise OSError("cannot identify image file <_io.BytesIO object>")

    monkeypatch.setattr(decode_module.PIL.Image, "open", cannot_identify)
    image = read_dicom(path, min_size=64)  # Pillow fails again inside pydicom; the default plugin decodes
    assert image.decode_scale == 1 and image.pixels.shape == (256, 256)
    assert np.abs(image.pixels.astype(int) - full.pixels).max() <= 1  # libjpeg-turbo vs pylibjpeg
