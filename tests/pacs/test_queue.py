"""The listener's on-disk queue: durable before acknowledgement, bounded, resumable, one owner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pneumoseg.errors import DataError
from pneumoseg.pacs.queue import InstanceQueue

UIDS = [f"1.2.3.{i}" for i in range(5)]


def _result(uid: str) -> Dataset:
    """A tiny DICOM data set standing in for a SEG (the queue only stores and re-reads it)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", uid + ".9"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _state(root: Path, uid: str) -> dict[str, object]:
    return json.loads((root / "state" / f"{uid}.json").read_text())


def test_offer_is_on_disk_bounded_and_deduplicated(tmp_path: Path) -> None:
    q = InstanceQueue(tmp_path, max_pending=2)
    assert q.offer(UIDS[0], b"zero", "ORTHANC") == "queued"
    assert (tmp_path / "instances" / f"{UIDS[0]}.dcm").read_bytes() == b"zero"
    assert _state(tmp_path, UIDS[0])["state"] == "received"
    assert _state(tmp_path, UIDS[0])["calling_ae"] == "ORTHANC"
    assert q.offer(UIDS[0], b"zero", "ORTHANC") == "duplicate"  # the same bytes (other bytes: test_resend_policy)
    assert q.offer(UIDS[1], b"one") == "queued"
    assert q.offer(UIDS[2], b"two") == "full"
    assert not (tmp_path / "instances" / f"{UIDS[2]}.dcm").exists()
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["pending"], status["received"], status["duplicates"], status["full"]) == (2, 2, 1, 1)
    with pytest.raises(DataError, match=r"'\.\./evil' is not a valid DICOM UID"):
        q.offer("../evil", b"x")
    # A sent instance leaves room, and is still a duplicate when offered again.
    entry = q.pending("received")[0]
    q.mark_predicted(entry, {"seg": _result(entry.uid)}, 0.7, 12)
    q.mark_output_sent(entry, "seg")
    q.mark_sent(entry)
    assert q.offer(UIDS[2], b"two") == "queued"
    assert q.offer(UIDS[0], b"zero") == "duplicate"
    q.close()


def test_states_and_cleanup(tmp_path: Path) -> None:
    q = InstanceQueue(tmp_path)
    for uid in UIDS[:2]:
        q.offer(uid, b"data")
    sent, failed = q.pending("received")
    assert [sent.uid, failed.uid] == UIDS[:2]  # oldest first
    q.mark_predicted(sent, {"seg": _result(sent.uid), "sr": _result(sent.uid + ".1")}, 0.25, 3)
    assert q.output_path(sent.uid, "sr").is_file() and _state(tmp_path, sent.uid)["outputs"] == ["seg", "sr"]
    q.mark_output_sent(sent, "seg")
    q.mark_output_sent(sent, "sr")
    q.mark_sent(sent)
    q.mark_failed(failed, "unreadable")
    assert not q.instance_path(sent.uid).exists() and not (tmp_path / "outputs" / sent.uid).exists()
    assert q.instance_path(failed.uid).exists(), "a failed instance is kept for a look"
    record = _state(tmp_path, sent.uid)
    assert record["state"] == "sent" and record["sent_outputs"] == ["seg", "sr"] and record["probability"] == 0.25
    status = q.status()
    assert (status["sent"], status["failed"], status["pending"]) == (1, 1, 0)
    assert status["latency_s"]["n"] == 1 and status["last_error"] == f"{failed.uid}: unreadable"
    q.close()


def test_resume_after_a_kill(tmp_path: Path) -> None:
    """A new queue on the folder of a dead one resumes every state, adopts orphans, drops temporaries."""
    q = InstanceQueue(tmp_path, keep=True)
    for uid in UIDS[:4]:
        q.offer(uid, b"data")
    a, b, c, _ = q.pending("received")
    q.mark_predicted(b, {"seg": _result(b.uid), "sr": _result(b.uid + ".1")}, 0.5, 1)
    q.mark_output_sent(b, "seg")  # killed between the SEG and the SR
    q.mark_predicted(c, {"seg": _result(c.uid)}, 0.5, 1)
    q.mark_output_sent(c, "seg")
    q.mark_sent(c)
    q._lock_file.close()  # type: ignore[union-attr]  # the process dies: its lock goes with it
    (tmp_path / "instances" / f"{UIDS[4]}.dcm").write_bytes(b"orphan")  # written, state not yet
    (tmp_path / "state" / ".x.abcd.tmp.json").write_text("{")            # a write the kill interrupted

    r = InstanceQueue(tmp_path)
    assert r.recovered == 4
    assert [e.uid for e in r.pending("received")] == [a.uid, UIDS[3], UIDS[4]]
    (resumed,) = r.pending("predicted")
    assert resumed.uid == b.uid and resumed.outputs == ["seg", "sr"] and resumed.sent_outputs == ["seg"]
    assert r.status()["sent"] == 1
    assert not list(tmp_path.rglob(".*.tmp*"))
    assert r.offer(c.uid, b"data") == "duplicate"
    r.close()


def test_one_process_per_queue(tmp_path: Path) -> None:
    q = InstanceQueue(tmp_path)
    with pytest.raises(DataError, match="in use by another pneumoseg listen"):
        InstanceQueue(tmp_path)
    q.close()
    InstanceQueue(tmp_path).close()
    with pytest.raises(DataError, match="max_pending must be >= 1, got 0"):
        InstanceQueue(tmp_path / "other", max_pending=0)


def _dicom_bytes(uid: str, value: str, implementation: str = "1.2.3.4") -> bytes:
    """A small DICOM file: SOPInstanceUID ``uid``, PatientID ``value``, meta ImplementationClassUID as given."""
    from io import BytesIO

    ds = _result(uid)
    ds.SOPInstanceUID, ds.PatientID = uid, value
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, uid
    ds.file_meta.ImplementationClassUID = implementation
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_resend_policy(tmp_path: Path) -> None:
    """Issue 20 item 3: a known UID used to be 'duplicate' in any state, so a first copy (a guess, a
    corrupt copy, a failure) pre-empted the real image forever. Now: same data set -> duplicate;
    other data set -> requeued (replaces, predicted again); failed -> requeued whatever its bytes."""
    q = InstanceQueue(tmp_path, max_pending=2)
    uid = UIDS[0]
    guess, real = _dicom_bytes(uid, "guess"), _dicom_bytes(uid, "real")
    assert q.offer(uid, guess, "EVIL") == "queued"
    # Only the file meta header differs (another sender's software): the same image.
    assert q.offer(uid, _dicom_bytes(uid, "guess", implementation="9.9"), "OTHER") == "duplicate"
    assert q.offer(uid, real, "PACS") == "requeued"  # waiting: replaced in place
    (entry,) = q.pending("received")
    assert q.instance_path(uid).read_bytes() == real and entry.calling_ae == "PACS"
    assert [h["state"] for h in entry.history] == ["received"] and len(q.pending("received")) == 1

    # Sent: the same bytes again are a duplicate, other bytes are predicted again.
    q.mark_predicted(entry, {"seg": _result(uid)}, 0.5, 1)
    q.mark_output_sent(entry, "seg")
    q.mark_sent(entry)
    assert q.offer(uid, real) == "duplicate"
    fixed = _dicom_bytes(uid, "corrected")
    assert q.offer(uid, fixed) == "requeued"
    (entry,) = q.pending("received")
    assert [h["state"] for h in _state(tmp_path, uid)["history"]] == ["received", "sent"]  # type: ignore[index]

    # A copy superseded while the worker held it: its late marks are ignored.
    stale = entry
    assert q.offer(uid, _dicom_bytes(uid, "third")) == "requeued"
    q.mark_failed(stale, "late failure of the superseded copy")
    assert _state(tmp_path, uid)["state"] == "received" and q.status()["failed"] == 0

    # Failed: the same bytes may be retried; after a restart too.
    (entry,) = q.pending("received")
    q.mark_failed(entry, "destination refused it")
    q.close()
    r = InstanceQueue(tmp_path, max_pending=2)
    assert r.offer(uid, _dicom_bytes(uid, "third")) == "requeued"
    assert r.pending("received")[0].uid == uid and r.status()["requeued"] == 1
    r.close()


def test_failed_files_are_bounded(tmp_path: Path) -> None:
    """Issue 20 item 6: failed instances kept their files forever and did not count towards max_pending."""
    q = InstanceQueue(tmp_path, max_pending=2)
    for uid in UIDS:
        assert q.offer(uid, b"x" * 1000) == "queued"
        q.mark_failed(q.pending("received")[0], "unreadable")
    kept = sorted(p.stem for p in (tmp_path / "instances").glob("*.dcm"))
    assert kept == UIDS[-2:], "only the most recent max_pending failed instances keep their files"
    assert sorted(p.stem for p in (tmp_path / "state").glob("*.json")) == UIDS  # their states stay
    q.close()
    r = InstanceQueue(tmp_path, max_pending=1)  # a smaller bound applies at restart
    assert sorted(p.stem for p in (tmp_path / "instances").glob("*.dcm")) == UIDS[-1:]
    r.close()
