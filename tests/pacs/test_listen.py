"""``pneumoseg listen`` in process: pynetdicom sender -> Listener -> pynetdicom destination."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from typer.testing import CliRunner

from pneumoseg.errors import ConfigError
from pneumoseg.pacs.listen import Destination, Listener
from pneumoseg.pacs.outputs import OutputOptions, refusal
from pneumoseg.pacs.queue import InstanceQueue
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from tests.pacs.conftest import free_port

SC, CT = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """3 synthetic CR radiographs (Secondary Capture, Modality CR, 256 x 256)."""
    from pneumoseg.data.synth import generate_dataset

    return list(generate_dataset(tmp_path_factory.mktemp("synth"), n=3, size=256, seed=0, progress=False).paths)


class StoreSCP:
    """A Storage SCP that keeps what it receives (the PACS the results go to)."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Dataset] = []
        ae = AE("DEST")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000


@pytest.fixture
def destination() -> Iterator[StoreSCP]:
    scp = StoreSCP()
    yield scp
    scp.server.shutdown()


def _sender(port: int, sop_classes: list[str]) -> object:
    ae = AE("SENDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [EXPLICIT])
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMOSEG")
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize("text, expected", [
    ("PACS@10.0.0.5:104", Destination("PACS", "10.0.0.5", 104)),
    ("ORTHANC@localhost:4242", Destination("ORTHANC", "localhost", 4242)),
    ("A@[::1]:11112", Destination("A", "::1", 11112)),
])
def test_destination_parse(text: str, expected: Destination) -> None:
    assert Destination.parse(text) == expected


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:70000",
                                  "SEVENTEEN_LETTERS@h:1", "A\\B@h:1"])
def test_destination_parse_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"AE@HOST:PORT|not a DICOM AE title"):
        Destination.parse(text)


def _header(**values: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.Modality, ds.SOPInstanceUID = SC, "CR", "1.2.3"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize("values, reason", [
    ({}, None),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "Modality": "DX"}, None),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1", "Modality": ""}, None),  # DX class: any Modality value
    ({"SOPClassUID": CT, "Modality": "CT"}, "SOP Class CT Image Storage"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}, "SOP Class Segmentation Storage"),
    ({"Modality": "OT"}, "Secondary Capture with Modality 'OT' is not a radiograph"),
    ({"Manufacturer": "pneumoseg"}, "an output of pneumoseg itself"),
    ({"SOPInstanceUID": "1.2.x"}, "SOPInstanceUID '1.2.x' is not a valid DICOM UID"),
])
def test_refusal(values: dict[str, str], reason: str | None) -> None:
    found = refusal(_header(**values))
    assert found == reason if reason is None else reason in (found or "")


def test_listen_predicts_and_forwards(pacs_run: Path, synth_files: list[Path], destination: StoreSCP,
                                      tmp_path: Path) -> None:
    predictor = Predictor([pacs_run], device="cpu", batch_size=2)
    queue = InstanceQueue(tmp_path / "q")
    node = Listener(predictor, queue, Destination.parse(f"DEST@127.0.0.1:{destination.port}"), port=0,
                    options=OutputOptions(sr=True))
    stop = threading.Event()
    node.start()
    worker = threading.Thread(target=node.serve, args=(stop,))
    worker.start()
    try:
        assoc = _sender(node.port, [SC, CT])
        assert assoc.send_c_echo().Status == 0x0000
        assert not [c for c in assoc.accepted_contexts if c.abstract_syntax == CT], "CT was negotiated"
        for path in synth_files:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        other = pydicom.dcmread(synth_files[0])
        other.Modality, other.SOPInstanceUID = "OT", "1.2.3.4.5"
        status = assoc.send_c_store(other)
        assert status.Status == 0xC000 and "Modality 'OT' is not a radiograph" in status.ErrorComment
        again = assoc.send_c_store(pydicom.dcmread(synth_files[0]))  # a duplicate: acknowledged, not redone
        assert again.Status == 0x0000
        assoc.release()
        deadline = time.monotonic() + 60
        while queue.status()["sent"] < len(synth_files) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(30)
    status = queue.status()
    assert (status["sent"], status["failed"], status["refused"], status["duplicates"]) == (3, 0, 1, 1)
    assert status["listening"] is False and status["latency_s"]["n"] == 3
    by_class: dict[str, list[Dataset]] = {}
    for ds in destination.received:
        by_class.setdefault(ds.SOPClassUID.name, []).append(ds)
    assert sorted(by_class) == ["Comprehensive 3D SR Storage", "Segmentation Storage"]
    segs = {str(s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID): s
            for s in by_class["Segmentation Storage"]}
    assert len(segs) == len(by_class["Segmentation Storage"]) == 3
    for path in synth_files:
        image = load_input(path)
        seg = segs[image.image_id]
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        expected = predictor.predict_batch([image])[0].mask
        np.testing.assert_array_equal(seg.pixel_array.reshape(expected.shape).astype(bool), expected)
    # One result series per source series and kind: the synthetic images share none.
    assert len({s.SeriesInstanceUID for s in segs.values()}) == 3
    assert all(s.SeriesInstanceUID not in {d.SeriesInstanceUID for d in segs.values()}
               for s in by_class["Comprehensive 3D SR Storage"])


def test_back_pressure_and_destination_outage(pacs_run: Path, synth_files: list[Path], tmp_path: Path) -> None:
    """Full queue -> Out of Resources; destination down -> results wait on disk, sent once it is back."""
    predictor = Predictor([pacs_run], device="cpu", batch_size=2)
    queue = InstanceQueue(tmp_path / "q", max_pending=1)
    port = free_port()
    node = Listener(predictor, queue, Destination.parse(f"DEST@127.0.0.1:{port}"), port=0)
    node.start()  # listening, but no worker: the test drives it with step()
    try:
        assoc = _sender(node.port, [SC])
        assert assoc.send_c_store(pydicom.dcmread(synth_files[0])).Status == 0x0000
        busy = assoc.send_c_store(pydicom.dcmread(synth_files[1]))
        assert busy.Status == 0xA700 and "queue full" in busy.ErrorComment
        node.step()  # predicted; the destination is not there
        assert len(queue.pending("predicted")) == 1
        assert queue.status()["destination_ok"] is False and queue.status()["pending"] == 1
        scp = StoreSCP(port)
        try:
            time.sleep(1.05)  # the first retry comes after 1 s
            node.step()
            assert [d.SOPClassUID.name for d in scp.received] == ["Segmentation Storage"]
            assert queue.status()["sent"] == 1 and queue.status()["destination_ok"] is True
            assert assoc.send_c_store(pydicom.dcmread(synth_files[1])).Status == 0x0000  # room again
        finally:
            scp.server.shutdown()
        assoc.release()
    finally:
        node.close()


def test_cli_listen_refuses_bad_forward(pacs_run: Path, tmp_path: Path) -> None:
    from pneumoseg.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["listen", str(pacs_run), "--forward", "PACS@host", "--queue", str(tmp_path / "q")])
    assert result.exit_code == 2 and "--forward 'PACS@host' is not AE@HOST:PORT" in result.output
    help_text = runner.invoke(app, ["--help"]).output
    assert "listen" in help_text and "dicomweb" in help_text


def test_instance_and_pixel_limits(pacs_run: Path, synth_files: list[Path], tmp_path: Path) -> None:
    """Issue 20 item 6: a C-STORE over the pixel limit was acknowledged and stayed on disk; any size was
    buffered in memory. Now an image over --max-pixels is refused from its header and an instance over
    --max-instance-mb aborts its association as soon as its data passes the limit: neither is stored."""
    predictor = Predictor([pacs_run], device="cpu", batch_size=2)
    queue = InstanceQueue(tmp_path / "q")
    node = Listener(predictor, queue, Destination.parse(f"DEST@127.0.0.1:{free_port()}"), port=0,
                    max_pixels=256 * 256 - 1, max_instance_mb=1.0)
    node.start()
    try:
        assoc = _sender(node.port, [SC])
        status = assoc.send_c_store(pydicom.dcmread(synth_files[0]))  # 256 x 256
        assert status.Status == 0xC000 and "65536 pixels" in status.ErrorComment
        big = pydicom.dcmread(synth_files[1])
        big.Rows = big.Columns = 200  # under the pixel limit; the data set's size is what is over
        big.PixelData = bytes(1000 * 1000) + bytes(200_000)  # 1.2 MB on the wire, made here, never on disk
        result = assoc.send_c_store(big)
        assert "Status" not in result, "the instance was answered, not aborted"
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
        assert queue.status()["refused"] == 2 and "--max-instance-mb" in queue.status()["last_error"]
        assert not list((tmp_path / "q" / "instances").iterdir())
        again = _sender(node.port, [SC])  # the node still serves
        assert again.send_c_echo().Status == 0x0000
        again.release()
    finally:
        node.close()


def test_cli_listen_beyond_loopback_needs_calling_ae(pacs_run: Path, tmp_path: Path) -> None:
    """Issue 20 item 6: any calling AE was accepted on every interface unless --calling-ae was given."""
    from pneumoseg.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["listen", str(pacs_run), "--forward", "PACS@127.0.0.1:104", "--host", "0.0.0.0",
                                 "--queue", str(tmp_path / "q")])
    assert result.exit_code == 2 and "give --calling-ae" in result.output
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", runner.invoke(app, ["listen", "--help"]).output).split())
    assert "ANY caller that can reach the port" in help_text and "Largest instance" in help_text


def test_calling_ae_allow_list(pacs_run: Path, tmp_path: Path) -> None:
    predictor = Predictor([pacs_run], device="cpu", batch_size=2)
    node = Listener(predictor, InstanceQueue(tmp_path / "q"), Destination.parse("DEST@127.0.0.1:104"), port=0,
                    calling_ae_titles=["MODALITY"])
    node.start()
    try:
        ae = AE("SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assert not ae.associate("127.0.0.1", node.port, ae_title="PNEUMOSEG").is_established
    finally:
        node.close()
