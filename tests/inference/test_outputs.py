"""The one DICOM-outputs builder: the SR reports the CSV's score, and predict, the PACS node and the
service export build the same SEG / SR content for the same input (UIDs aside)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from pneumoseg.inference.outputs import (
    OutputMeta,
    Placement,
    build_dicom_outputs,
    image_score,
    reported_score,
)
from pneumoseg.inference.folder import predict_to_folder
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.dicom.sr import SCORE
from tests.pacs.conftest import pacs_run  # noqa: F401 (fixture: an untrained run whose masks are partial)

@pytest.fixture(scope="module")
def predictor(request: pytest.FixtureRequest) -> Predictor:
    """The untrained run of the PACS tests (partial masks at its threshold, 0.55)."""
    return Predictor([request.getfixturevalue("pacs_run")], device="cpu", batch_size=2)


def _sr_values(sr: pydicom.Dataset) -> dict[str, Any]:
    """What an SR reports: presence (SCT code), score, area (value, unit), and the SEG it references."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    image_group = parsed.content.get_image_measurement_groups()[0]
    rois = parsed.content.get_planar_roi_measurement_groups()
    area = rois[0].get_measurements()[0] if rois else None
    [score] = [m for m in image_group.get_measurements() if m.name == SCORE]
    return {"presence": image_group.get_qualitative_evaluations()[0].value.value, "score": score.value,
            "area": None if area is None else (round(area.value, 4), area.unit.value),
            "references_seg": bool(rois)}


def _seg_values(seg: pydicom.Dataset) -> dict[str, Any]:
    """A SEG's pixels and the attributes that describe the segment and its maker (not its UIDs)."""
    segment = seg.SegmentSequence[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    return {"pixels": seg.pixel_array.astype(bool).tobytes(), "shape": seg.pixel_array.shape,
            "label": segment.SegmentLabel, "type": segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            "algorithm": (algorithm.AlgorithmName, str(algorithm.AlgorithmParameters)),
            "content": seg.ContentDescription, "series_description": seg.SeriesDescription,
            "model": seg.ManufacturerModelName, "study": seg.StudyInstanceUID,
            "source": seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID}


def test_the_sr_reports_the_score_of_predictions_csv(predictor: Predictor, synth_data: Path, tmp_path: Path) -> None:
    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:3]
    seen: dict[str, Any] = {}
    res = predict_to_folder(predictor, inputs, tmp_path, progress=False, dicom_seg=True, dicom_sr=True,
                            on_prediction=lambda image, pred: seen.update({pred.image_id: pred}))
    assert not res.failures and res.n_sr == 3
    rows = pd.read_csv(res.predictions_csv, dtype={"image_id": str}).set_index("image_id")
    for image_id, pred in seen.items():
        assert 0 < pred.area_px < pred.mask.size  # the fixture's masks are partial
        reported = _sr_values(pydicom.dcmread(tmp_path / "sr" / f"{image_id}.dcm"))
        row = rows.loc[image_id]
        assert reported["score"] == row["score"]  # the very number of the CSV
        assert reported["score"] == pytest.approx(image_score(pred.prob), abs=1e-6)
        assert reported["score"] < row["probability"]  # not the saturating largest probability
        assert reported["presence"] == "52101004" and reported["area"] is not None  # Present, an area


def test_predict_pacs_and_service_build_the_same_seg_and_sr(predictor: Predictor, synth_data: Path,
                                                            tmp_path: Path) -> None:
    from pneumoseg.pacs.outputs import OutputOptions, make_outputs
    from pneumoseg.service.exports import seg_bytes, sr_bytes
    from pneumoseg.service.inference import ServiceModel

    path = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    res = predict_to_folder(predictor, [path], tmp_path, progress=False, dicom_seg=True, dicom_sr=True)
    image_id = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    from_predict = {kind: pydicom.dcmread(tmp_path / kind / f"{image_id}.dcm") for kind in ("seg", "sr")}

    image = load_input(path)
    pred = predictor.predict_batch([image])[0]
    pacs = make_outputs(predictor, image, pred, pydicom.dcmread(path, stop_before_pixels=True),
                        OutputOptions(sr=True))
    from_pacs = {kind: pydicom.dcmread(_roundtrip(pacs[kind])) for kind in ("seg", "sr")}

    model = ServiceModel(predictor, predictor.runs)
    summary = model.predict_bytes(path.read_bytes(), path.name)
    stored = model.store.get(summary["id"])
    assert stored is not None
    from_service = {"seg": pydicom.dcmread(io.BytesIO(seg_bytes(stored, predictor))),
                    "sr": pydicom.dcmread(io.BytesIO(sr_bytes(stored, predictor)))}

    expected_seg = _seg_values(from_predict["seg"])
    expected_sr = _sr_values(from_predict["sr"])
    assert expected_sr["references_seg"] and 0 < pred.area_px
    csv_score = float(pd.read_csv(res.predictions_csv)["score"][0])
    assert expected_sr["score"] == csv_score == summary["score"]
    for name, made in (("pacs", from_pacs), ("service", from_service)):
        assert _seg_values(made["seg"]) == expected_seg, name
        assert _sr_values(made["sr"]) == expected_sr, name
        assert made["seg"].SOPInstanceUID != from_predict["seg"].SOPInstanceUID  # UIDs are each caller's


def _roundtrip(ds: pydicom.Dataset) -> io.BytesIO:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def test_builder_options_placements_and_argument_checks(synth_data: Path) -> None:
    path = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    source = pydicom.dcmread(path, stop_before_pixels=True)
    shape = (int(source.Rows), int(source.Columns))
    prob = np.zeros(shape, np.float32)
    prob[:8, :8] = 0.9
    empty = np.zeros(shape, bool)
    meta = OutputMeta("unet", {"tta": "false"}, {"sr": "my report"})
    built = build_dicom_outputs(source, empty, meta, prob=prob, sr=True, sc=True, pixels=load_input(path).pixels,
                                placements={"sr": Placement(series_instance_uid="1.2.3", sop_instance_uid="1.2.3.4",
                                                            series_number=7, instance_number=3)})
    assert list(built.datasets()) == ["seg", "sr", "sc"]  # an empty mask still gets a SEG by default
    assert built.score == reported_score(prob) and not built.has_pneumothorax and built.area_px == 0
    assert (built.sr.SeriesInstanceUID, built.sr.SOPInstanceUID, built.sr.SeriesNumber, built.sr.InstanceNumber) \
        == ("1.2.3", "1.2.3.4", 7, 3)
    assert built.sr.SeriesDescription == "my report" and (built.seg.SeriesNumber, built.sc.SeriesNumber) == (99, 101)
    assert _sr_values(built.sr)["presence"] == "272519000"  # Absent
    no_empty_seg = build_dicom_outputs(source, empty, meta, score=0.25, seg_empty=False, sr=True)
    assert list(no_empty_seg.datasets()) == ["sr"] and not _sr_values(no_empty_seg.sr)["references_seg"]
    with pytest.raises(ValueError, match="exactly one"):
        build_dicom_outputs(source, empty, meta, prob=prob, score=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        build_dicom_outputs(source, empty, meta)
    with pytest.raises(ValueError, match="differ in shape"):
        build_dicom_outputs(source, empty, meta, prob=prob[:10])
    with pytest.raises(ValueError, match="pixels"):
        build_dicom_outputs(source, empty, meta, score=0.5, sc=True)
