"""DICOM SEG output of predict: references, geometry, pixels = the written masks, codes, empty rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

import pneumoseg
from pneumoseg.cli.main import app
from pneumoseg.io.dicom.seg import make_segmentation, read_segmentation
from pneumoseg.errors import DicomError
from pneumoseg.io.images import read_mask, write_png
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import TunedRule, save_tuned
from pneumoseg.inference.folder import predict_to_folder
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from tests.shared_data import SIIM, require_siim

runner = CliRunner()


def _check_seg(seg_path: Path, source_path: Path, mask: np.ndarray, model_name: str) -> None:
    """The SEG at ``seg_path`` reads back (pydicom and highdicom), references its source, holds ``mask``."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    raw = pydicom.dcmread(seg_path)
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert raw.StudyInstanceUID == source.StudyInstanceUID and raw.SeriesInstanceUID != source.SeriesInstanceUID
    assert (raw.Rows, raw.Columns) == (source.Rows, source.Columns) == mask.shape
    ref_series = raw.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    src_item = raw.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert src_item.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert raw.Manufacturer == "pneumoseg" and raw.SeriesDescription
    assert f"pneumoseg {pneumoseg.__version__}" in list(raw.SoftwareVersions)
    segment = raw.SegmentSequence[0]
    assert segment.SegmentLabel == "Pneumothorax" and segment.SegmentAlgorithmType == "AUTOMATIC"
    # viewers (OHIF) draw it in the overlay's red instead of warning and picking a colour
    lab = [int(v) for v in segment.RecommendedDisplayCIELabValue]
    rgb = hd.color.CIELabColor.from_dicom_value(lab).to_rgb()
    assert np.abs(np.subtract(rgb, (255, 40, 40))).max() <= 2, rgb
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "pneumoseg" and algo.AlgorithmVersion == pneumoseg.__version__
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
    assert f"model={model_name}" in algo.AlgorithmParameters
    np.testing.assert_array_equal(raw.pixel_array.astype(bool), mask)

    # highdicom's own segread rejects Pixel Measures without Slice Thickness (no Frame of Reference)
    seg = read_segmentation(seg_path)
    assert (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID) in seg.get_source_image_uids()
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    assert seg.get_segment_description(1).segment_label == "Pneumothorax"


def _partial_threshold(predictor: Predictor, paths: list[Path]) -> PostProcess:
    """A threshold leaving roughly the top 10 % of pixels positive (non-empty, non-full masks)."""
    probs = predictor.probs_at_model_size([load_input(p).pixels for p in paths])
    return PostProcess(threshold=float(np.quantile(probs, 0.9)))


def test_seg_per_dicom_matches_written_masks_and_png_gets_none(trained_run: Path, synth_data: Path,
                                                                 tmp_path: Path) -> None:
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:3]
    png = tmp_path / "plain.png"
    write_png(png, load_input(dicoms[0]).pixels)
    predictor = Predictor([trained_run], device="cpu")
    predictor.postprocess = _partial_threshold(predictor, dicoms)
    out = tmp_path / "out"
    res = predict_to_folder(predictor, [*dicoms, png], out, progress=False, overlays=False, dicom_seg=True)
    assert not res.failures and res.seg_skipped_not_dicom == 1
    assert not (out / "seg" / "plain.dcm").exists()
    written = 0
    for path in dicoms:
        image_id = load_input(path).image_id
        mask = read_mask(out / "masks" / f"{image_id}.png")
        seg_path = out / "seg" / f"{image_id}.dcm"
        assert seg_path.is_file() == bool(mask.any())
        if mask.any():
            _check_seg(seg_path, path, mask, predictor.model_name)
            written += 1
    assert written == res.n_seg >= 1


def test_empty_prediction_gets_a_seg_only_with_dicom_seg_empty(trained_run: Path, synth_data: Path,
                                                              tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # a rule tuned for this run that keeps nothing (p > 1 never): empty masks
    save_tuned(TunedRule(PostProcess(threshold=1.0), TunedRule.key_of([run], "best", False)[0], "best", False,
                         split="val", n_images=1, dice_kaggle=0.0, default_dice_kaggle=0.0))
    dicom = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    image_id = load_input(dicom).image_id
    base = ["predict", str(run), str(dicom), "--no-progress", "--device", "cpu", "--no-overlays", "--dicom-seg"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "--dicom-seg-empty" in result.output and not (tmp_path / "a" / "seg").exists()
    result = runner.invoke(app, [*base, "--dicom-seg-empty", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    _check_seg(tmp_path / "b" / "seg" / f"{image_id}.dcm", dicom, np.zeros((256, 256), bool), "unet")
    result = runner.invoke(app, [*base[:-1], "--out", str(tmp_path / "c")])  # no --dicom-seg: nothing
    assert result.exit_code == 0 and not (tmp_path / "c" / "seg").exists()


@require_siim
def test_seg_of_real_challenge_dicoms(trained_run: Path, tmp_path: Path) -> None:
    dicoms = sorted((SIIM / "dicom").glob("*.dcm"))[:2]
    predictor = Predictor([trained_run], device="cpu")
    predictor.postprocess = _partial_threshold(predictor, dicoms)
    res = predict_to_folder(predictor, dicoms, tmp_path, progress=False, overlays=False, dicom_seg=True)
    assert not res.failures and res.n_seg >= 1
    for path in dicoms:
        mask = read_mask(tmp_path / "masks" / f"{path.stem}.png")
        if mask.any():
            _check_seg(tmp_path / "seg" / f"{path.stem}.dcm", path, mask, predictor.model_name)
            # CR without a frame of reference: no patient geometry is invented for the SEG, but the
            # source's PixelSpacing is carried (no Slice Thickness) and Patient Orientation is kept
            raw = pydicom.dcmread(tmp_path / "seg" / f"{path.stem}.dcm")
            assert "FrameOfReferenceUID" not in raw and raw.PatientOrientation == ""
            measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            source = pydicom.dcmread(path, stop_before_pixels=True)
            assert measures.PixelSpacing == source.PixelSpacing and "SliceThickness" not in measures
            area = mask.sum() * float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
            assert raw.ContentDescription.endswith(f"area {area:.1f} mm2")


def test_make_segmentation_rejects_wrong_size_and_unreferenceable_source(synth_data: Path) -> None:
    source = pydicom.dcmread(sorted((synth_data / "dicom").glob("*.dcm"))[0], stop_before_pixels=True)
    with pytest.raises(DicomError, match="mask shape"):
        make_segmentation(source, np.zeros((10, 10), bool), model_name="unet")
    del source.StudyInstanceUID
    with pytest.raises(DicomError, match="StudyInstanceUID"):
        make_segmentation(source, np.zeros((source.Rows, source.Columns), bool), model_name="unet")
