"""The listener's on-disk queue: every received instance is on disk before it is acknowledged.

Layout of a queue folder ``Q`` (every file written atomically, ``pneumoseg.util.atomic``; the
instances, states and results also fsync'd with their folder, so what was acknowledged survives a
power loss, not only a killed process)::

    Q/instances/<SOPInstanceUID>.dcm       the received instance, as received (DICOM file format)
    Q/state/<SOPInstanceUID>.json          its state: received -> predicted -> sent | failed
    Q/outputs/<SOPInstanceUID>/<kind>.dcm  results made for it (kind: seg, sr, sc; sending order)
    Q/status.json                          the node's health: ``pending`` (= ``received`` + ``predicted``
                                           waiting now), totals since the folder was made (``sent``,
                                           ``failed``) and since start (``refused``, ``duplicates``,
                                           ``full``), latency p50/p95 (s, receipt to sent), settings
    Q/.lock                                held (flock) by the one process that owns the queue

A state file is the commit point: the instance file is written first, then its state; results
are written first, then ``predicted``; each result sent is recorded (``sent_outputs``) before
the next is sent, and ``sent`` last. A process killed at any point therefore resumes where it
was (``InstanceQueue`` re-reads the state files): nothing received is lost, and a result
recorded as sent is never sent again. The one window left is between the destination's
acknowledgement of a C-STORE and the atomic rename that records it; a result re-sent from
there carries the same SOP Instance UID (results are made once and kept on disk), so the
destination receives the same instance again, not a second one.

Bounded: ``offer`` answers ``"full"`` while ``max_pending`` instances wait (received or
predicted), and the node then answers C-STORE with *Out of Resources* (the sender retries
later). Sent instances keep only their state file (``keep=False``, the default): their instance
and results are deleted; failed ones keep theirs for a look, the most recent ``keep_failed`` of
them only (older failed instances keep only their state file), so failures cannot fill the disk.

Re-sends (an instance whose SOPInstanceUID is already known), decided by the SHA-256 of the
received data set without its file meta header (``Entry.sha256``, ``dataset_digest``; the
meta header says which AE and software wrote the file, not what the image is):

* the same bytes as the copy on record, and that copy is waiting, or was sent: ``"duplicate"``
  (acknowledged, nothing done: a sender that repeats itself causes no second result);
* different bytes (a corrected image, or a copy recorded by an older version without a hash):
  ``"requeued"``: the new copy replaces the old one and is predicted; its results supersede the
  earlier ones (a C-STORE cannot delete what the destination already has: the new results are new
  instances in the same result series, with a later Content Date / Time);
* the copy on record failed (unreadable, refused by the destination...): ``"requeued"``, whatever
  its bytes, so a failed instance can be retried by sending it again.

So a sender that guesses a UID cannot pre-empt the real image: the real image, when it comes,
is predicted as well. The earlier copies' hash, state and times are kept in ``Entry.history``
(the last ``_HISTORY`` of them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from pneumoseg.util.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from pneumoseg.errors import DataError
from pneumoseg.util.paths import is_valid_uid

__all__ = ["PENDING_STATES", "STATES", "Entry", "InstanceQueue", "Offer", "dataset_digest"]

STATES = ("received", "predicted", "sent", "failed")
PENDING_STATES = ("received", "predicted")
Offer = Literal["queued", "requeued", "duplicate", "full"]
_LATENCY_WINDOW = 1000  #: latencies kept for status.json's p50 / p95 (the most recent ones)
_HISTORY = 8  #: earlier copies of a re-sent instance recorded in its state file


def dataset_digest(data: bytes) -> str:
    """SHA-256 (hex) of a DICOM file's data set, its preamble and file meta header left out.

    Bytes that are not a DICOM file with a (0002,0000) group length are hashed whole.
    """
    view = memoryview(data)
    if len(data) >= 144 and data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL":
        view = view[144 + int.from_bytes(data[140:144], "little"):]
    return hashlib.sha256(view).hexdigest()


@dataclass
class Entry:
    """One instance's state (``Q/state/<uid>.json``); times are Unix seconds."""

    uid: str
    state: str
    received_at: float
    calling_ae: str = ""
    predicted_at: float | None = None
    sent_at: float | None = None
    outputs: list[str] = field(default_factory=list)       #: result kinds, in sending order
    sent_outputs: list[str] = field(default_factory=list)  #: those the destination acknowledged
    probability: float | None = None
    area_px: int | None = None
    error: str | None = None
    sha256: str = ""  #: of the received data set; "" for state files of older versions
    history: list[dict[str, Any]] = field(default_factory=list)  #: earlier copies (sha256, state, times, error)

    @property
    def latency(self) -> float | None:
        """Seconds from acknowledgement of receipt to the last result sent (None until sent)."""
        return None if self.sent_at is None else self.sent_at - self.received_at


class InstanceQueue:
    """The queue in folder ``root`` (module docstring); thread-safe; one process per folder.

    ``info`` is copied into ``status.json`` (the node's AE title, port, destination...).
    ``keep_failed``: failed instances whose files are kept (the most recent; default ``max_pending``).
    Raises DataError when another process holds the folder.
    """

    def __init__(self, root: str | os.PathLike[str], max_pending: int = 64, keep: bool = False,
                 info: Mapping[str, Any] | None = None, keep_failed: int | None = None) -> None:
        if max_pending < 1:
            raise DataError(f"{root}: max_pending must be >= 1, got {max_pending}")
        self.root = Path(root)
        self.max_pending = max_pending
        self.keep = keep
        self.keep_failed = max_pending if keep_failed is None else max(0, keep_failed)
        self._failed_kept: deque[str] = deque()  #: failed instances that still have files, oldest first
        self.info = dict(info or {})
        for sub in ("instances", "state", "outputs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[bytes] | None = open(self.root / ".lock", "ab")  # held open: the lock
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise DataError(f"{self.root}: queue folder in use by another pneumoseg listen; one process per queue") from None
        self._cond = threading.Condition()
        self._pending: dict[str, Entry] = {}
        self.totals = {"sent": 0, "failed": 0, "refused": 0, "duplicates": 0, "requeued": 0, "full": 0}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.last_error: str | None = None
        self.started_at = time.time()
        self.recovered = self._recover()
        self.write_status()

    # -- files ---------------------------------------------------------------------------------
    def instance_path(self, uid: str) -> Path:
        return self.root / "instances" / f"{uid}.dcm"

    def output_path(self, uid: str, kind: str) -> Path:
        return self.root / "outputs" / uid / f"{kind}.dcm"

    def _state_path(self, uid: str) -> Path:
        return self.root / "state" / f"{uid}.json"

    def _save(self, entry: Entry) -> None:
        atomic_write_text(self._state_path(entry.uid), json.dumps(asdict(entry), sort_keys=True) + "\n", durable=True)

    def _load(self, path: Path) -> Entry | None:
        try:
            data = json.loads(path.read_text())
            return Entry(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _recover(self) -> int:
        """Read every state file; adopt instances written without one. Returns the pending count."""
        failed: list[Entry] = []
        for path in sorted((self.root / "state").glob("*.json")):
            entry = self._load(path)
            if entry is None or entry.state not in STATES:
                self.last_error = f"{path}: unreadable state file; left alone"
                continue
            if entry.state in PENDING_STATES:
                self._pending[entry.uid] = entry
            else:
                self.totals[entry.state] += 1
                if entry.latency is not None:
                    self._latencies.append(entry.latency)
                if entry.state == "failed" and self.instance_path(entry.uid).exists():
                    failed.append(entry)
        for entry in sorted(failed, key=lambda e: (e.received_at, e.uid)):
            self._keep_failed_files(entry.uid)
        for path in sorted((self.root / "instances").glob("*.dcm")):
            uid = path.stem
            if is_valid_uid(uid) and uid not in self._pending and not self._state_path(uid).exists():
                # Killed between the instance and its state: it was never acknowledged, keep it anyway.
                entry = Entry(uid, "received", path.stat().st_mtime, sha256=dataset_digest(path.read_bytes()))
                self._save(entry)
                self._pending[uid] = entry
        for tmp in self.root.rglob(".*.tmp*"):  # temporaries of writes a kill interrupted
            tmp.unlink(missing_ok=True)
        return len(self._pending)

    # -- receiving ------------------------------------------------------------------------------
    def offer(self, uid: str, data: bytes, calling_ae: str = "") -> Offer:
        """Store a received instance (``data``: DICOM file bytes) durably; call before acknowledging.

        A known ``uid`` is a ``"duplicate"`` or ``"requeued"`` by the policy in the module docstring.
        """
        if not is_valid_uid(uid):
            raise DataError(f"SOPInstanceUID {uid[:80]!r} is not a valid DICOM UID; not queued")
        digest = dataset_digest(data)
        with self._cond:
            known = self._pending.get(uid) or (self._load(self._state_path(uid))
                                               if self._state_path(uid).exists() else None)
            if known is not None and known.state != "failed" and known.sha256 == digest:
                self.totals["duplicates"] += 1
                self._write_status_locked()
                return "duplicate"
            if uid not in self._pending and len(self._pending) >= self.max_pending:
                self.totals["full"] += 1
                self._write_status_locked()
                return "full"
            atomic_write_bytes(self.instance_path(uid), data, durable=True)
            entry = Entry(uid, "received", time.time(), calling_ae=calling_ae, sha256=digest)
            if known is not None:
                earlier = {k: getattr(known, k) for k in ("sha256", "state", "received_at", "sent_at", "error")}
                entry.history = [*known.history, earlier][-_HISTORY:]
                if known.state not in PENDING_STATES:  # nobody works on it: clear its old results
                    shutil.rmtree(self.root / "outputs" / uid, ignore_errors=True)
                if uid in self._failed_kept:
                    self._failed_kept.remove(uid)
                self.totals["requeued"] += 1
            self._save(entry)
            self._pending[uid] = entry  # a waiting older copy is superseded: its marks are ignored
            self._write_status_locked()
            self._cond.notify_all()
            return "queued" if known is None else "requeued"

    def note_refused(self, reason: str) -> None:
        with self._cond:
            self.totals["refused"] += 1
            self.last_error = reason
            self._write_status_locked()

    # -- working --------------------------------------------------------------------------------
    def pending(self, state: str, limit: int | None = None) -> list[Entry]:
        """Entries in ``state`` (received | predicted), oldest first."""
        with self._cond:
            found = sorted((e for e in self._pending.values() if e.state == state), key=lambda e: (e.received_at, e.uid))
        return found[:limit] if limit is not None else found

    def wait(self, timeout: float) -> None:
        """Block until something is offered or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def is_current(self, entry: Entry) -> bool:
        """False once a re-sent copy has replaced ``entry`` (its marks are then ignored)."""
        with self._cond:
            return self._pending.get(entry.uid) is entry

    def mark_predicted(self, entry: Entry, outputs: Mapping[str, Dataset], probability: float, area_px: int) -> None:
        """Write ``outputs`` (``{kind: dataset}``, sending order) to disk, then record ``predicted``."""
        for kind, ds in outputs.items():
            with atomic_path(self.output_path(entry.uid, kind), durable=True) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        with self._cond:
            if self._pending.get(entry.uid) is not entry:
                return
            entry.state, entry.predicted_at = "predicted", time.time()
            entry.outputs, entry.sent_outputs = list(outputs), []
            entry.probability, entry.area_px = float(probability), int(area_px)
            self._save(entry)
            self._write_status_locked()

    def mark_output_sent(self, entry: Entry, kind: str) -> None:
        with self._cond:
            if self._pending.get(entry.uid) is not entry:
                return
            entry.sent_outputs.append(kind)
            self._save(entry)

    def mark_sent(self, entry: Entry) -> None:
        with self._cond:
            if self._pending.get(entry.uid) is not entry:
                return
            entry.state, entry.sent_at = "sent", time.time()
            self._finish(entry)
            self._latencies.append(entry.sent_at - entry.received_at)

    def mark_failed(self, entry: Entry, reason: str) -> None:
        with self._cond:
            if self._pending.get(entry.uid) is not entry:
                return
            entry.state, entry.error = "failed", reason
            self.last_error = f"{entry.uid}: {reason}"
            self._finish(entry)

    def _finish(self, entry: Entry) -> None:
        self._save(entry)
        self._pending.pop(entry.uid, None)
        self.totals[entry.state] += 1
        if entry.state == "sent" and not self.keep:  # failed ones stay for a look
            self._remove_files(entry.uid)
        if entry.state == "failed":
            self._keep_failed_files(entry.uid)
        self._write_status_locked()
        self._cond.notify_all()

    def _remove_files(self, uid: str) -> None:
        self.instance_path(uid).unlink(missing_ok=True)
        shutil.rmtree(self.root / "outputs" / uid, ignore_errors=True)

    def _keep_failed_files(self, uid: str) -> None:
        """Keep ``uid``'s files for a look; remove those of the oldest failed beyond ``keep_failed``."""
        self._failed_kept.append(uid)
        while len(self._failed_kept) > self.keep_failed:
            self._remove_files(self._failed_kept.popleft())

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._cond:
            return self._status_locked()

    def _status_locked(self) -> dict[str, Any]:
        counts = {s: 0 for s in PENDING_STATES}
        for entry in self._pending.values():
            counts[entry.state] += 1
        lat = np.asarray(self._latencies, dtype=float)
        return {**self.info, "pid": os.getpid(), "started_at": self.started_at, "updated_at": time.time(),
                "pending": len(self._pending), "max_pending": self.max_pending, **counts, **self.totals,
                "latency_s": ({"p50": round(float(np.percentile(lat, 50)), 4),
                               "p95": round(float(np.percentile(lat, 95)), 4), "n": int(lat.size)}
                              if lat.size else None),
                "last_error": self.last_error}

    def _write_status_locked(self) -> None:
        atomic_write_text(self.root / "status.json", json.dumps(self._status_locked(), indent=1) + "\n")

    def write_status(self, **info: Any) -> None:
        """Rewrite ``status.json`` (``info`` updates the node's settings shown there)."""
        with self._cond:
            self.info.update(info)
            self._write_status_locked()

    def close(self) -> None:
        """Release the folder (status.json says ``listening: false``)."""
        self.write_status(listening=False)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
