"""predict with hostile names and careless output folders: nothing written outside --out, inputs never clobbered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.io.images import write_png

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")

HOSTILE_UIDS = {
    "traversal": "../../escaped",
    "absolute": "/tmp/pneumoseg-absolute-escape",
    "nested": "a/b/c",
    "nul": "1.2.3\x004.5",
    "too_long": "1." + "2" * 70,
}


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture()
def hostile_inputs(synth_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Two good synthetic DICOMs and one per hostile SOPInstanceUID (written with pydicom)."""
    src = sorted((synth_data / "dicom").glob("*.dcm"))
    folder = tmp_path / "sandbox" / "inputs"
    folder.mkdir(parents=True)
    good = []
    for p in src[:2]:
        shutil.copy(p, folder / p.name)
        good.append(p.stem)
    for i, (name, uid) in enumerate(HOSTILE_UIDS.items()):
        ds = pydicom.dcmread(src[2 + i])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # keep the meta header writable
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    return folder, good


def test_hostile_uids_are_refused_one_line_each_and_nothing_escapes(trained_run: Path,
                                                                     hostile_inputs: tuple[Path, list[str]],
                                                                     tmp_path: Path) -> None:
    folder, good = hostile_inputs
    sandbox = tmp_path / "sandbox"
    before = _files_under(tmp_path)
    absolute_target = Path(HOSTILE_UIDS["absolute"] + ".png")
    absolute_target.unlink(missing_ok=True)
    out = sandbox / "out" / "deep"
    result = runner.invoke(app, ["predict", str(trained_run), str(folder), "--out", str(out), "--no-progress",
                                 "--device", "cpu", "--dicom-seg", "--dicom-seg-empty"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for name in HOSTILE_UIDS:
        lines = [ln for ln in result.output.splitlines() if f"{name}.dcm" in ln]
        assert len(lines) == 1, (name, result.output)
    # Everything new lies under --out; the good images were still predicted, CSVs written.
    new = _files_under(tmp_path) - before
    assert new and all(out in p.parents for p in new), sorted(map(str, new - {p for p in new if out in p.parents}))
    assert not absolute_target.exists()
    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert sorted(preds["image_id"]) == sorted(good)
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(good)


def test_output_folder_around_or_inside_the_input_is_refused(trained_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    images = data / "images"
    images.mkdir(parents=True)
    ramp = np.arange(64 * 64).reshape(64, 64)
    write_png(images / "case1.png", (ramp % 256).astype(np.uint8))
    (data / "masks").mkdir()
    truth = data / "masks" / "case1.png"
    write_png(truth, (ramp % 2 * 255).astype(np.uint8))
    stamp = truth.stat().st_mtime_ns
    for out in (data, images, images / "pred"):
        result = runner.invoke(app, ["predict", str(trained_run), str(images), "--out", str(out), "--no-progress",
                                     "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert "overlaps the input" in result.output and len(result.output.strip().splitlines()) == 1
    assert truth.stat().st_mtime_ns == stamp and sorted(os.listdir(data)) == ["images", "masks"]


def test_unwritable_submission_fails_before_any_prediction(trained_run: Path, synth_data: Path,
                                                           tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(trained_run), str(synth_data / "dicom"), "--out", str(out),
                                 "--submission", str(blocker / "sub.csv"), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--submission" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (out / "masks").exists()  # refused before predicting anything


def test_read_only_output_folder_is_one_line(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/pneumoseg-out")  # root ignores permission bits; /proc refuses everyone
    else:
        target = tmp_path / "ro" / "out"
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    result = runner.invoke(app, ["predict", str(trained_run), str(synth_data / "dicom"), "--out", str(target),
                                 "--no-progress", "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write" in result.output and len(result.output.strip().splitlines()) == 1
