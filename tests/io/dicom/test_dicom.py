"""Tests for pneumoseg.io.dicom.read: the real challenge files, every compressed syntax, display mapping, errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pneumoseg.io.dicom.read import DicomMeta, format_header, parse_age, read_dicom, read_dicom_meta
from pneumoseg.errors import DicomError
from tests.helpers.dicom import save_dicom, sc_dataset
from tests.shared_data import SIIM

SIIM_DICOM = SIIM / "dicom"
FIRST = "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"


def _real_files() -> list[Path]:
    files = sorted(SIIM_DICOM.glob("*.dcm"))
    if not files:
        pytest.skip(f"real SIIM sample not found at {SIIM_DICOM} (only present on the dev machines)")
    return files


#: a Secondary Capture with the patient, body part and view that the header tests read back
chest_dataset = partial(sc_dataset, PatientID="P-1", PatientAge="045Y", PatientSex="F", BodyPartExamined="CHEST",
                        ViewPosition="AP")


def _ramp(bits: int, shape: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """A smooth ramp plus noise using the full ``bits`` range (uint8 or uint16)."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = (xx / (shape[1] - 1) * 0.7 + yy / (shape[0] - 1) * 0.3) * top
    arr = np.clip(base + rng.normal(0, top * 0.02, shape), 0, top)
    return arr.astype(np.uint8 if bits <= 8 else np.uint16)


def _expected_percentile(arr: np.ndarray) -> np.ndarray:
    low, high = np.percentile(arr.astype(np.float64), (0.5, 99.5))
    return np.clip(np.rint((arr - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


# --- the real challenge files ---------------------------------------------------------------


def test_real_files_decode_to_1024_uint8_with_their_metadata() -> None:
    for path in _real_files():
        image = read_dicom(path)
        ref = pydicom.dcmread(path)  # independent reference: plain pydicom
        assert image.pixels.shape == (1024, 1024) and image.pixels.dtype == np.uint8
        # 8-bit MONOCHROME2, as stored. Lossy JPEG: Pillow (ours) and pydicom's default decoder
        # may differ by one grey level on a few pixels.
        diff = np.abs(image.pixels.astype(int) - ref.pixel_array.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05, path.name
        meta = image.meta
        assert meta.image_id == path.stem == ref.SOPInstanceUID
        assert meta.patient_id == ref.PatientID and meta.patient_sex == ref.PatientSex
        assert meta.patient_age == int(ref.PatientAge)
        assert meta.view_position == ref.ViewPosition in ("PA", "AP")
        assert (meta.modality, meta.body_part) == ("CR", "CHEST")
        assert (meta.rows, meta.columns, meta.bits_stored, meta.photometric) == (1024, 1024, 8, "MONOCHROME2")
        assert meta.transfer_syntax == JPEGBaseline8Bit
        assert read_dicom_meta(path) == meta


def test_real_file_known_values_and_header() -> None:
    _real_files()
    meta = read_dicom_meta(SIIM_DICOM / f"{FIRST}.dcm")
    assert meta.patient_id == "17d405a3-a0d2-4901-b33a-63906aa48d9f"
    assert (meta.patient_age, meta.patient_sex, meta.view_position) == (38, "M", "PA")
    assert meta.transfer_syntax_name == "JPEG Baseline (Process 1)"
    header = format_header(meta)
    for text in (meta.patient_id, "38", "M", "CR", "CHEST", "PA", "1024 x 1024"):
        assert text in header
    assert DicomMeta(**meta.as_dict()) == meta


@pytest.mark.parametrize(
    ("text", "years"),
    [("038Y", 38), ("38", 38), ("005Y", 5), ("018M", 1), ("006M", 0), ("052W", 0), ("400D", 1),
     ("", None), (None, None), ("abc", None), ("38.5", None)],
)
def test_parse_age(text: str | None, years: int | None) -> None:
    assert parse_age(text) == years


# --- compressed transfer syntaxes -------------------------------------------------------------


def _jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """Encode (H, W) as JPEG Lossless, process 14, predictor 1 (first-order), one Huffman table.

    The table gives each difference category 0..16 a 5-bit code equal to the category.
    """
    height, width = arr.shape
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    bits = []
    for d in (x - pred).ravel().tolist():
        cat = abs(d).bit_length()
        bits.append(f"{cat:05b}")
        if cat:
            bits.append(f"{(d if d > 0 else d + (1 << cat) - 1):0{cat}b}")
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    sof = b"\xff\xc3\x00\x0b" + bytes([precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    sof += b"\x01\x01\x11\x00"
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4\x00\x24\x00" + counts + bytes(range(17))
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof + dht + sos + data + b"\xff\xd9"


def _compressed(tmp_path: Path, syntax: UID, arr: np.ndarray, bits: int) -> Path:
    ds = chest_dataset(arr, bits)
    if syntax == JPEGLosslessSV1:  # pydicom has no encoder for it: build the stream by hand
        ds.PixelData = encapsulate([_jpeg_lossless(arr, bits)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        encoder = get_encoder(syntax)
        if not encoder.is_available:
            pytest.skip(f"no {syntax.name} encoder installed: {encoder.missing_dependencies}")
        ds.compress(syntax)
    return save_dicom(ds, tmp_path / f"{bits}bit.dcm")


_SYNTAXES = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless,
             "jpeg-lossless": JPEGLosslessSV1}
_CASES = [(name, bits) for name in _SYNTAXES for bits in (8, 12, 16)
          if (name, bits) != ("jpeg-lossless", 16)]  # the hand-made encoder covers up to 15 bits


@pytest.mark.parametrize(("name", "bits"), _CASES, ids=[f"{n}-{b}bit" for n, b in _CASES])
def test_lossless_syntaxes_round_trip(tmp_path: Path, name: str, bits: int) -> None:
    syntax = _SYNTAXES[name]
    arr = _ramp(bits)
    path = _compressed(tmp_path, syntax, arr, bits)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    image = read_dicom(path)
    assert image.meta.transfer_syntax == syntax and image.meta.bits_stored == bits
    expected = arr if bits == 8 else _expected_percentile(arr)  # no window: percentiles
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == arr.shape
    assert np.array_equal(image.pixels, expected)


def test_orientation_is_as_stored(tmp_path: Path) -> None:
    arr = np.zeros((40, 60), dtype=np.uint8)
    arr[:5, :10] = 200  # top-left block stays top-left, no transpose
    pixels = read_dicom(save_dicom(chest_dataset(arr, 8), tmp_path / "o.dcm")).pixels
    assert pixels.shape == (40, 60) and np.array_equal(pixels, arr)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = _ramp(8)
    image = read_dicom(save_dicom(chest_dataset(arr, 8, "MONOCHROME1"), tmp_path / "m1.dcm"))
    assert np.array_equal(image.pixels, 255 - arr)
    deep = _ramp(12)
    image = read_dicom(save_dicom(chest_dataset(deep, 12, "MONOCHROME1"), tmp_path / "m1_12.dcm"))
    assert np.array_equal(image.pixels, 255 - _expected_percentile(deep))


def test_16bit_uses_window_when_present(tmp_path: Path) -> None:
    arr = _ramp(12)
    center, width = 2000.0, 801.0
    ds = chest_dataset(arr, 12, WindowCenter=center, WindowWidth=width)
    pixels = read_dicom(save_dicom(ds, tmp_path / "w.dcm")).pixels
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    assert (pixels[arr <= low] == 0).all() and (pixels[arr > high] == 255).all()
    inside = (arr > low) & (arr <= high)
    expected = ((arr[inside] - (center - 0.5)) / (width - 1) + 0.5) * 255
    assert inside.sum() > 100 and np.abs(pixels[inside] - expected).max() <= 1
    assert not np.array_equal(pixels, _expected_percentile(arr))


def test_16bit_uses_voi_lut_sequence(tmp_path: Path) -> None:
    arr = _ramp(12)
    lut = np.clip((np.arange(4096) - 1000) * 4095 // 2000, 0, 4095)  # a 12-bit LUT: 1000..3000 -> full
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", lut.tolist())
    ds = chest_dataset(arr, 12, VOILUTSequence=[item])
    pixels = read_dicom(save_dicom(ds, tmp_path / "lut.dcm")).pixels
    assert np.array_equal(pixels, np.rint(lut[arr] * 255 / 4095).astype(np.uint8))


def test_16bit_without_window_uses_percentiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(1000, 2000, (64, 64)).astype(np.uint16)
    arr[0, :5], arr[1, :5] = 0, 65535  # outliers must not squash the contrast
    pixels = read_dicom(save_dicom(chest_dataset(arr, 16), tmp_path / "p.dcm")).pixels
    assert np.array_equal(pixels, _expected_percentile(arr))
    assert (pixels[0, :5] == 0).all() and (pixels[1, :5] == 255).all()
    assert np.percentile(pixels, 50) > 100  # the bulk spans the range


def test_rgb_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    pixels = read_dicom(save_dicom(chest_dataset(rgb, 8, "RGB"), tmp_path / "rgb.dcm")).pixels
    assert pixels.shape == (8, 8) and (pixels == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)).all()


# --- errors -----------------------------------------------------------------------------------


def test_non_dicom_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a DICOM file\n" * 20)
    for read in (read_dicom, read_dicom_meta):
        with pytest.raises(DicomError, match="not a DICOM file") as info:
            read(path)
        assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="file not found"):
        read_dicom(tmp_path / "nope.dcm")


def test_dicom_without_pixel_data_raises(tmp_path: Path) -> None:
    ds = chest_dataset(_ramp(8), 8)
    del ds.PixelData
    path = save_dicom(ds, tmp_path / "nopix.dcm")
    assert read_dicom_meta(path).rows == 48  # the header alone is fine
    with pytest.raises(DicomError, match="no pixel data") as info:
        read_dicom(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("syntax", [None, RLELossless])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_truncated_file_raises(tmp_path: Path, syntax: str | None, keep: float) -> None:
    ds = chest_dataset(_ramp(8, (128, 128)), 8)
    if syntax:
        ds.compress(syntax)
    full = save_dicom(ds, tmp_path / "full.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(DicomError, match="truncated") as info:
        read_dicom(path)
    assert str(path) in str(info.value)


def test_truncated_real_file_raises(tmp_path: Path) -> None:
    source = _real_files()[0]
    data = source.read_bytes()
    for cut in (600, len(data) // 2):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        with pytest.raises(DicomError, match="truncated") as info:
            read_dicom(path)
        assert str(path) in str(info.value)
