"""Issue 20 item 7: the largest accepted image (64 MP, 16-bit) peaked at 2.4 GB in ``read_dicom``.

The display conversion made ~4 float64 copies of the image (modality LUT, percentile, scaling);
it now goes through a lookup table over the image's distinct levels, giving the same pixels.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from pneumoseg.io.dicom.display import PERCENTILES, _scale, _voi
from pneumoseg.io.dicom.read import DEFAULT_MAX_PIXELS, read_dicom
from pneumoseg.util.limits import MAX_PIXELS


def _file(path: Path, arr: np.ndarray, syntax: str = ExplicitVRLittleEndian, **tags: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _reference(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """The former full-array float64 computation."""
    values = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds:
        return _scale(*_voi(values, ds))
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values, PERCENTILES)
    return _scale(values, float(low), float(high))


@pytest.mark.parametrize("tags", [
    {},
    {"RescaleSlope": "0.37", "RescaleIntercept": "-1024", "RescaleType": "US"},
    {"WindowCenter": "1800", "WindowWidth": "900"},
    {"WindowCenter": "1800", "WindowWidth": "900", "VOILUTFunction": "SIGMOID"},
], ids=["percentiles", "rescaled", "window", "sigmoid"])
@pytest.mark.parametrize("signed", [False, True])
def test_lookup_table_gives_the_full_array_result(tmp_path: Path, tags: dict[str, object], signed: bool) -> None:
    rng = np.random.default_rng(7)
    arr = rng.normal(2000, 600, (97, 131)).clip(0, 4095).astype(np.uint16)
    arr[:3] = rng.integers(0, 4096, (3, 131))  # outliers for the percentiles
    if signed:
        arr = (arr.astype(np.int16) - 2048)
        tags = {k: (str(float(v) - 2048) if k == "WindowCenter" else v) for k, v in tags.items()}
    path = _file(tmp_path / "x.dcm", arr, **tags)
    import pydicom

    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(read_dicom(path).pixels, _reference(ds.pixel_array, ds))


def test_one_pixel_limit_everywhere() -> None:
    from pneumoseg.service.settings import ServiceSettings

    assert DEFAULT_MAX_PIXELS == ServiceSettings().max_pixels == MAX_PIXELS == 64_000_000


def test_largest_accepted_image_peaks_below_700_mb(tmp_path: Path) -> None:
    """8000 x 8000 16-bit, deflated (under 1 MB on disk): the peak was 2.4 GB, now ~0.5 GB."""
    n = 8000
    assert n * n <= MAX_PIXELS
    ramp = np.arange(n, dtype=np.uint16) // 8
    path = _file(tmp_path / "big.dcm", (ramp[:, None] + ramp[None, :]) % 4096, DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 2e6
    tracemalloc.start()
    try:
        image = read_dicom(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.pixels.shape == (n, n) and image.pixels.dtype == np.uint8
    assert peak < 700e6, f"peak {peak / 1e6:.0f} MB"
