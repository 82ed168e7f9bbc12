"""A real Orthanc round trip: Orthanc -> C-STORE -> ``pneumoseg listen`` -> SEG -> Orthanc, and DICOMweb.

The 12 shared challenge DICOMs go to a fresh Orthanc (REST); Orthanc sends them to a
``pneumoseg listen`` subprocess, which is killed (SIGKILL) once its first result is sent and
restarted on the same queue. Orthanc must then hold exactly one SEG per image, in the image's
study, referencing it, with the mask ``Predictor`` gives for the same file; each instance is
logged ``sent`` once. The same through Orthanc's DICOMweb plugin with ``predict_dicomweb``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from tests.pacs.conftest import Orthanc, free_port
from tests.helpers.threads import one_torch_thread
from tests.shared_data import SIIM, require_siim

pytestmark = [require_siim, pytest.mark.slow]
FILES = sorted((SIIM / "dicom").glob("*.dcm"))


@pytest.fixture(scope="module")
def reference(pacs_run: Path) -> dict[str, np.ndarray]:
    """SOPInstanceUID -> bool mask (1024, 1024) from ``Predictor`` on each file (what ``predict`` writes)."""
    from pneumoseg.inference.inputs import load_input
    from pneumoseg.inference.predictor import Predictor

    predictor = Predictor([pacs_run], device="cpu", batch_size=1)
    out = {}
    with one_torch_thread():  # as the listen subprocess (OMP_NUM_THREADS=1): fast on a shared 2-core machine
        for path in FILES:
            image = load_input(path)
            out[image.image_id] = predictor.predict_batch([image])[0].mask
    return out


def _seg_mask(ds: pydicom.Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array).reshape(int(ds.Rows), int(ds.Columns)).astype(bool)


def _check_segs(server: Orthanc, reference: dict[str, np.ndarray], sources: dict[str, pydicom.Dataset]) -> None:
    """One SEG per source in Orthanc, in its study, referencing it, with the reference mask."""
    segs = [pydicom.dcmread(io.BytesIO(server.file(i["ID"]))) for i in server.instances("SEG")]
    referenced = [str(s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
                  for s in segs]
    assert sorted(referenced) == sorted(sources), "not exactly one SEG per source image"
    for seg, uid in zip(segs, referenced, strict=True):
        source = sources[uid]
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert seg.Manufacturer == "pneumoseg"
        mask = _seg_mask(seg)
        assert 0 < mask.sum() < mask.size
        np.testing.assert_array_equal(mask, reference[uid], err_msg=f"SEG of {uid} differs from predict's mask")


def _listen(run: Path, queue: Path, port: int, orthanc: Orthanc, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pneumoseg.cli.main", "listen", str(run), "--forward",
             f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--port", str(port), "--queue", str(queue),
             "--device", "cpu", "--batch-size", "1", "--calling-ae", orthanc.aet],
            stdout=out, stderr=subprocess.STDOUT, env=env)


def _status(queue: Path) -> dict[str, object]:
    try:
        return json.loads((queue / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(what: str, condition: object, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise AssertionError(f"listen exited ({process.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_orthanc_sends_to_listen_killed_and_resumed(orthanc: Orthanc, pacs_run: Path, reference: dict[str, np.ndarray],
                                                    tmp_path: Path) -> None:
    ids = orthanc.upload(FILES)
    port, queue, log = free_port(), tmp_path / "queue", tmp_path / "listen.log"
    orthanc.rest("PUT", "/modalities/pneumoseg", {"AET": "PNEUMOSEG", "Host": "127.0.0.1", "Port": port})

    first = _listen(pacs_run, queue, port, orthanc, log)
    try:
        _wait("listening", lambda: _status(queue).get("listening") and _status(queue).get("pid") == first.pid, first, log)
        assert orthanc.rest("POST", "/modalities/pneumoseg/echo", {}) == {}
        orthanc.rest("POST", "/modalities/pneumoseg/store", ids)  # synchronous: every C-STORE answered
        _wait("the first result sent", lambda: (_status(queue).get("sent") or 0) >= 1, first, log)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    states = [json.loads(p.read_text())["state"] for p in (queue / "state").glob("*.json")]
    assert len(states) == len(FILES), "an acknowledged instance is missing from the queue"
    assert 1 <= states.count("sent") < len(FILES), f"not killed mid-batch: {states}"

    second = _listen(pacs_run, queue, port, orthanc, log)
    try:
        _wait("the queue resumed and emptied", lambda: _status(queue).get("pid") == second.pid
              and _status(queue).get("pending") == 0, second, log, timeout=90)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        second.kill()
    status = _status(queue)
    assert status["sent"] == len(FILES) and status["failed"] == 0 and status["listening"] is False
    text = log.read_text()
    assert "resuming" in text
    sent_lines = [line for line in text.splitlines() if " sent " in line]
    for uid in reference:  # one log line per instance, each result sent once
        assert sum(uid in line for line in sent_lines) == 1, uid
    sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in FILES)}
    _check_segs(orthanc, reference, sources)
    assert not list((queue / "instances").iterdir()), "sent instances are not cleaned from the queue"


def test_dicomweb_round_trip(orthanc: Orthanc, pacs_run: Path, reference: dict[str, np.ndarray]) -> None:
    from pneumoseg.cli.main import app
    from pneumoseg.pacs.dicomweb import predict_dicomweb
    from pneumoseg.pacs.outputs import OutputOptions
    from pneumoseg.inference.predictor import Predictor

    files = FILES[:3]
    orthanc.upload(files)
    sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)}
    url = orthanc.url + "/dicom-web"
    predictor = Predictor([pacs_run], device="cpu", batch_size=1)
    first, *rest = sources.values()
    result = predict_dicomweb(predictor, url, study=first.StudyInstanceUID, series=first.SeriesInstanceUID,
                              options=OutputOptions(sr=True, sc=True))
    assert (result.n_instances, result.n_predicted, result.failures) == (1, 1, [])
    assert result.stored == {"seg": 1, "sr": 1, "sc": 1}
    # Again: already done (its SEG is there), nothing stored twice; the study now holds SEG, SR and SC.
    again = predict_dicomweb(predictor, url, study=first.StudyInstanceUID)
    assert (again.n_instances, again.n_already_done, again.n_not_predicted, again.n_predicted) == (4, 1, 3, 0)
    assert again.stored == {"seg": 0, "sr": 0, "sc": 0}, "the SC overlay was predicted as a radiograph"
    # The CLI, one study each.
    runner = CliRunner()
    for source in rest:
        cli = runner.invoke(app, ["dicomweb", str(pacs_run), "--url", url, "--study", source.StudyInstanceUID,
                                  "--device", "cpu", "--batch-size", "1"])
        assert cli.exit_code == 0, cli.output
        assert "1 SEG" in cli.output
    _check_segs(orthanc, reference, sources)
    assert len(orthanc.instances("SR")) == 1 and len(orthanc.instances("CR")) == 3 + 1  # + the SC overlay (CR)
    missing = runner.invoke(app, ["dicomweb", str(pacs_run), "--url", url, "--study", "1.2.3.4", "--device", "cpu"])
    assert missing.exit_code == 2 and "study 1.2.3.4 not found" in missing.output
