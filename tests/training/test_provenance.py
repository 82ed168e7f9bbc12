"""A run knows what it was trained on, and every place that shows its output says so (issue 21, item 1).

The session's ``trained_run`` is trained on the synthetic phantoms: its predictions (CSV, manifest,
DICOM SEG / SR / SC from ``predict``, the PACS node and the viewer's downloads), the viewer page,
``/health`` and the report must say "synthetic" and "not for clinical use". A run without
``provenance.json`` (trained before it existed) says "training data unknown" and still works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.config import load_config
from pneumoseg.data.dataset import split_ids
from pneumoseg.inference.folder import predict_to_folder
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.pacs.outputs import OutputOptions, make_outputs
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.service import ServiceSettings, create_app
from pneumoseg.service.settings import ALLOWED_HOSTS_ENV
from pneumoseg.training.provenance import (
    DICOM_LO_MAX,
    PROVENANCE_FILE,
    Provenance,
    build_provenance,
    read_provenance,
    series_description,
)

runner = CliRunner()
ALWAYS = PostProcess(threshold=0.0)  # every pixel positive: every SEG is written


def _says(text: str, kind: str) -> None:
    assert kind in text.lower() and "not for clinical use" in text.lower(), text


@pytest.fixture(scope="module")
def unrecorded_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run as a run trained before provenance.json existed."""
    run = tmp_path_factory.mktemp("old") / "run"
    shutil.copytree(trained_run, run)
    (run / PROVENANCE_FILE).unlink()
    return run


def test_a_run_trained_on_the_synthetic_cache_records_it(trained_run: Path, synth_data: Path,
                                                         synth_cache: Path) -> None:
    assert json.loads((synth_cache / "cache.json").read_text())["synthetic"] is True
    record = json.loads((trained_run / PROVENANCE_FILE).read_text())
    assert record["synthetic"] is True
    assert Path(record["data_source"]) == (synth_data / "dicom")
    assert Path(record["cache"]) == synth_cache.resolve()
    assert (record["n_images"], record["layout"]) == (60, "dicom")
    assert record["splits"] == {s: len(split_ids(synth_cache, s)) for s in ("train", "val", "test")}
    assert sum(record["splits"].values()) == 60
    assert read_provenance(trained_run).describe().startswith("SYNTHETIC phantoms")


def test_a_cache_prepared_before_the_flag_is_told_by_its_source_folder(synth_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(synth_cache, cache)
    meta = json.loads((cache / "cache.json").read_text())
    del meta["synthetic"]
    (cache / "cache.json").write_text(json.dumps(meta))
    cfg = load_config("seed_unet", [f"data.cache={cache}"])
    assert build_provenance(cfg).synthetic is True  # its source folder's README.txt says so
    meta["source_dir"] = str(tmp_path / "gone")
    (cache / "cache.json").write_text(json.dumps(meta))
    gone = build_provenance(cfg)
    assert gone.synthetic is None and "does not say" in gone.note


def test_series_descriptions_fit_a_dicom_lo() -> None:
    for record in (Provenance(True), Provenance(False), Provenance(None)):
        for what in ("SEG", "SR", "SC", "a very long output kind name that does not fit at all"):
            text = series_description(what, [record])
            assert len(text) <= DICOM_LO_MAX and text.endswith("not for clinical use"), text
    assert series_description("SEG", [Provenance(False), Provenance(True)]) == \
        "pneumoseg SEG; synthetic training data; not for clinical use"  # any synthetic member


def test_predict_outputs_say_synthetic_and_not_for_clinical_use(trained_run: Path, synth_data: Path,
                                                                tmp_path: Path) -> None:
    predictor = Predictor([trained_run], device="cpu", postprocess=ALWAYS)
    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:2]
    res = predict_to_folder(predictor, inputs, tmp_path / "out", progress=False, dicom_seg=True, dicom_sr=True,
                            dicom_sc=True)
    assert (res.n_seg, res.n_sr, res.n_sc) == (2, 2, 2)
    preds = pd.read_csv(res.predictions_csv, dtype=str)
    assert set(preds["training_data"]) == {"synthetic training data; not for clinical use"}
    for kind in ("seg", "sr", "sc"):
        for path in (tmp_path / "out" / kind).glob("*.dcm"):
            description = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription)
            assert len(description) <= DICOM_LO_MAX
            _says(description, "synthetic")
    seg = pydicom.dcmread(next((tmp_path / "out" / "seg").glob("*.dcm")), stop_before_pixels=True)
    parameters = str(seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert "SYNTHETIC phantoms" in parameters
    # The PACS node builds the same descriptions.
    image = load_input(inputs[0])
    out = make_outputs(predictor, image, predictor.predict_batch([image])[0],
                       pydicom.dcmread(inputs[0], stop_before_pixels=True), OutputOptions(sr=True, sc=True))
    for ds in out.values():
        _says(str(ds.SeriesDescription), "synthetic")


def test_the_archive_manifest_records_the_training_data(trained_run: Path, synth_data: Path,
                                                        tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((synth_data / "dicom").glob("*.dcm"))[0], inputs)
    result = runner.invoke(app, ["predict", str(trained_run), str(inputs), "--out", str(tmp_path / "o"),
                                 "--no-progress", "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "o" / "manifest.json").read_text())["training_data"]
    _says(training["notice"], "synthetic")
    assert training["runs"][0]["synthetic"] is True
    _says(pd.read_csv(tmp_path / "o" / "predictions.csv")["training_data"][0], "synthetic")


def test_viewer_page_health_and_downloads_say_synthetic(trained_run: Path, synth_data: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "testserver")
    predictor = Predictor([trained_run], device="cpu", batch_size=1, postprocess=ALWAYS)
    dicom = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    with TestClient(create_app([trained_run], ServiceSettings(), predictor=predictor)) as c:
        assert "not for clinical use" in c.get("/").text.lower()
        health = c.get("/health").json()
        assert health["training_data"] == "synthetic"
        _says(health["notice"], "synthetic")
        assert health["provenance"][0]["synthetic"] is True
        body = c.post("/predict", files={"file": (dicom.name, dicom.read_bytes(), "application/dicom")}).json()
        _says(body["notice"], "synthetic")
        for name in ("seg", "sr"):
            r = c.get(body["urls"][name])
            assert r.status_code == 200, r.text
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(r.content), stop_before_pixels=True)
            _says(str(ds.SeriesDescription), "synthetic")


def test_a_run_without_a_record_says_training_data_unknown(unrecorded_run: Path, synth_data: Path,
                                                           tmp_path: Path) -> None:
    predictor = Predictor([unrecorded_run], device="cpu", postprocess=ALWAYS)
    assert predictor.training_data.startswith("Training data unknown")
    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:1]
    res = predict_to_folder(predictor, inputs, tmp_path / "out", progress=False, dicom_seg=True)
    assert pd.read_csv(res.predictions_csv)["training_data"][0] == "training data unknown; not for clinical use"
    seg = pydicom.dcmread(next((tmp_path / "out" / "seg").glob("*.dcm")), stop_before_pixels=True)
    _says(str(seg.SeriesDescription), "training data unknown")
    with TestClient(create_app([unrecorded_run], ServiceSettings(), predictor=predictor)) as c:
        assert c.get("/health", headers={"Host": "127.0.0.1"}).json()["training_data"] == "unknown"
