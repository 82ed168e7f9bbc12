"""A DICOM node (pynetdicom) that predicts every radiograph it receives and forwards the results.

``Listener.serve`` runs two things until told to stop:

* a Storage SCP on ``host:port`` answering C-ECHO, and C-STORE of the SOP classes in
  ``pneumoseg.pacs.outputs.INPUT_SOP_CLASSES`` (other classes are not negotiated; Secondary
  Captures that are not CR / DX / DR, pneumoseg's own outputs, invalid UIDs and images over
  ``max_pixels`` are answered with a failure status naming why). Each accepted instance is
  written to the on-disk queue (``pneumoseg.pacs.queue``, fsync'd) **before** the success status
  is returned; while ``max_pending`` instances wait, C-STORE is answered *Out of Resources*
  (0xA700), the sender retries later. Re-sent instances follow the queue's policy (identical
  data set: acknowledged, nothing done; different data set or an earlier failure: predicted
  again). An instance over ``max_instance_bytes`` is never stored: the association is aborted as
  soon as its data passes the limit (pynetdicom would otherwise hold all of it in memory);
  callers whose AE title is not in ``calling_ae_titles`` are rejected (None: any caller);
* a worker that predicts the oldest received instances in batches, writes their results to the
  queue and C-STOREs them (SEG, then SR / SC as configured) to the destination in one
  association per round. An unreachable destination is retried (1 s, doubling to 30 s) and
  nothing is lost meanwhile; a destination that refuses an instance (status other than success,
  warning or 0xA7xx) marks it failed.

One log line per instance (logger ``pneumoseg.listen``): ``sent``, ``failed``, ``refused``,
``duplicate``, ``requeued`` or ``busy``, with its SOPInstanceUID and calling AE title. ``Q/status.json`` is the
node's health: counts per state, totals, latency p50/p95, settings, ``listening``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pneumoseg.errors import ConfigError, PneumosegError
from pneumoseg.io.dicom.read import DEFAULT_MAX_PIXELS
from pneumoseg.util.limits import MAX_INSTANCE_MB
from pneumoseg.util.paths import os_error_line
from pneumoseg.pacs.outputs import INPUT_SOP_CLASSES, OUTPUT_SOP_CLASSES, OutputOptions, make_outputs, \
    predictor_fingerprint, refusal
from pneumoseg.pacs.queue import Entry, InstanceQueue
from pneumoseg.inference.inputs import InputImage, load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.dicom.read import read_header

__all__ = ["DEFAULT_MAX_INSTANCE_MB", "INPUT_TRANSFER_SYNTAXES", "Destination", "Listener", "allowed_callers",
           "is_loopback"]

log = logging.getLogger("pneumoseg.listen")

#: Transfer syntaxes accepted on input: those ``pneumoseg.io.dicom.read.read_dicom`` decodes. When a sender offers
#: several in one presentation context, the first here wins: lossy originals first, so that a JPEG
#: arrives as stored and decodes to the pixels ``pneumoseg predict`` sees in the same file (no
#: transcoding by the sender), then lossless compressed, then uncompressed.
INPUT_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51",   # JPEG Extended
    "1.2.840.10008.1.2.4.91",   # JPEG 2000
    "1.2.840.10008.1.2.4.81",   # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",   # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",      # Explicit VR Big Endian
]
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # 16 printable characters, no backslash
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
_RETRY_MIN, _RETRY_MAX = 1.0, 30.0
DEFAULT_MAX_INSTANCE_MB = MAX_INSTANCE_MB
_P_DATA_TF = 0x04


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_callers(calling_ae: str | None, host: str) -> list[str] | None:
    """``--calling-ae A,B,...`` -> the calling AE titles a node on ``host`` accepts (None: any caller).

    ``'*'`` (or nothing, on a loopback ``host`` only) accepts any caller; ConfigError (one line) when
    nothing is given for a ``host`` other machines can reach.
    """
    if calling_ae is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable from other machines: give --calling-ae A,B,... (the AE titles "
                          f"allowed to store images), or --calling-ae '*' to accept any caller")
    return None if calling_ae is None or calling_ae.strip() == "*" else [t for t in calling_ae.split(",") if t]


def _data_set_bytes(pdu: bytes) -> tuple[int, bool]:
    """(data-set bytes in a P-DATA-TF PDU, whether one of its fragments ends a data set).

    PDU: type (1), reserved (1), length (4), then items: length (4), context id (1), message
    control header (1: bit 0 command, bit 1 last fragment), fragment.
    """
    total, last, pos, end = 0, False, 6, min(len(pdu), 6 + int.from_bytes(pdu[2:6], "big"))
    while pos + 6 <= end:
        length = int.from_bytes(pdu[pos:pos + 4], "big")
        control = pdu[pos + 5]
        if not control & 0x01:
            total += max(length - 2, 0)
            last = last or bool(control & 0x02)
        pos += 4 + length
    return total, last


def _check_ae_title(title: str, what: str) -> str:
    if not _AE_TITLE.fullmatch(title) or not title.strip():
        raise ConfigError(f"{what} {title!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return title


@dataclass(frozen=True)
class Destination:
    """Where results go: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``"PACS@10.0.0.5:104"`` -> Destination; ConfigError naming the value otherwise."""
        match = re.fullmatch(r"(?P<ae>[^@]+)@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})", text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ConfigError(f"--forward {text!r} is not AE@HOST:PORT (e.g. PACS@10.0.0.5:104)")
        return cls(_check_ae_title(match["ae"], "--forward AE title"), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _is_success(code: int) -> bool:
    """Success (0x0000) and the C-STORE warnings (0x0001, 0xB000-0xBFFF): the instance was stored."""
    return code in (0x0000, 0x0001) or 0xB000 <= code <= 0xBFFF


class _Transient(Exception):
    """The destination cannot take results now (unreachable, aborted, out of resources)."""


class Listener:
    """The node (module docstring). ``serve(stop)`` blocks until ``stop`` is set."""

    def __init__(self, predictor: Predictor, queue: InstanceQueue, destination: Destination, *,
                 ae_title: str = "PNEUMOSEG", host: str = "127.0.0.1", port: int = 11112,
                 options: OutputOptions | None = None, batch_size: int | None = None,
                 calling_ae_titles: list[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_instance_mb: float = DEFAULT_MAX_INSTANCE_MB) -> None:
        self.predictor = predictor
        self.queue = queue
        self.destination = destination
        self.ae_title = _check_ae_title(ae_title, "--ae-title")
        self.host, self.port = host, port
        self.options = options or OutputOptions()
        self.batch_size = batch_size or predictor.batch_size
        self.fingerprint = predictor_fingerprint(predictor)
        self.max_pixels = int(max_pixels)
        self.max_instance_bytes = int(max_instance_mb * 1e6)
        self._incoming: dict[int, int] = {}  #: data-set bytes received so far per association (id)
        self._aborting: set[int] = set()  #: associations aborted for an instance over the limit
        self._incoming_lock = threading.Lock()
        self._retry_at, self._retry_wait = 0.0, _RETRY_MIN
        self._server: ThreadedAssociationServer | None = None
        self._scp = AE(ae_title=self.ae_title)
        self._scp.require_called_aet = True
        if calling_ae_titles:
            self._scp.require_calling_aet = [_check_ae_title(t, "--calling-ae") for t in calling_ae_titles]
        self._scp.add_supported_context(Verification)
        for sop_class in INPUT_SOP_CLASSES:
            self._scp.add_supported_context(sop_class, INPUT_TRANSFER_SYNTAXES)
        self._scu = AE(ae_title=self.ae_title)
        for context in StoragePresentationContexts:
            if context.abstract_syntax in OUTPUT_SOP_CLASSES:
                self._scu.add_requested_context(context.abstract_syntax, context.transfer_syntax)

    # -- receiving (association threads) ---------------------------------------------------------
    def _on_data(self, event: evt.Event) -> None:
        """Count a P-DATA PDU's data-set bytes; abort the association once one instance passes the limit."""
        data = event.data
        if not data or data[0] != _P_DATA_TF:
            return
        size, last = _data_set_bytes(data)
        key = id(event.assoc)
        with self._incoming_lock:
            if key in self._aborting:
                return
            total = self._incoming.get(key, 0) + size
            self._incoming[key] = 0 if last else total
            over = total > self.max_instance_bytes
            if over:
                self._aborting.add(key)
        if over:
            calling = str(event.assoc.requestor.ae_title).strip()
            reason = f"instance over the limit of {self.max_instance_bytes / 1e6:g} MB (--max-instance-mb)"
            self.queue.note_refused(f"<from {calling}>: {reason}")
            log.warning("refused <instance> from %s: %s; association aborted", calling, reason)
            event.assoc.abort(block=False)

    def _on_close(self, event: evt.Event) -> None:
        with self._incoming_lock:
            self._incoming.pop(id(event.assoc), None)
            self._aborting.discard(id(event.assoc))

    def _on_store(self, event: evt.Event) -> Dataset | int:
        calling = str(event.assoc.requestor.ae_title).strip()
        size = len(event.request.DataSet.getbuffer()) if event.request.DataSet is not None else 0
        if size > self.max_instance_bytes:  # the data path aborts first; this covers a changed PDU layout
            reason = f"{size / 1e6:.1f} MB over the limit of {self.max_instance_bytes / 1e6:g} MB"
            self.queue.note_refused(f"<from {calling}>: {reason}")
            log.warning("refused <instance> from %s: %s", calling, reason)
            return _status(_CANNOT_UNDERSTAND, reason)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.get("SOPInstanceUID", ""))
            reason = refusal(ds, self.max_pixels)
        except Exception as exc:  # a data set pydicom cannot parse
            self.queue.note_refused(f"undecodable data set from {calling}")
            log.warning("refused <undecodable> from %s: %s", calling, f"{type(exc).__name__}: {exc}"[:200])
            return _status(_CANNOT_UNDERSTAND, "undecodable data set")
        shown = uid[:64] or "<no SOPInstanceUID>"
        if reason is not None:
            self.queue.note_refused(f"{shown}: {reason}")
            log.warning("refused %s from %s: %s", shown, calling, reason)
            return _status(_CANNOT_UNDERSTAND, reason)
        try:
            outcome = self.queue.offer(uid, event.encoded_dataset(include_meta=True), calling)
        except OSError as exc:  # disk full, queue folder gone
            log.error("busy %s from %s: cannot queue it (%s); answered Out of Resources", uid, calling,
                      os_error_line(exc))
            return _status(_OUT_OF_RESOURCES, "cannot write the queue")
        if outcome == "full":
            log.warning("busy %s from %s: %d instances pending; answered Out of Resources", uid, calling,
                        self.queue.max_pending)
            return _status(_OUT_OF_RESOURCES, "queue full, retry later")
        if outcome == "duplicate":
            log.info("duplicate %s from %s: same data set as the copy on record; acknowledged, not queued again",
                     uid, calling)
        elif outcome == "requeued":
            log.info("requeued %s from %s: a different data set, or the copy on record failed; predicted again",
                     uid, calling)
        return 0x0000

    # -- working (the serving thread) --------------------------------------------------------------
    def predict_received(self) -> int:
        """Predict up to ``batch_size`` received instances and store their results; returns how many."""
        batch = self.queue.pending("received", self.batch_size)
        images: list[tuple[Entry, InputImage]] = []
        for entry in batch:
            try:
                images.append((entry, load_input(self.queue.instance_path(entry.uid))))
            except PneumosegError as exc:
                self._fail(entry, str(exc))
        if not images:
            return len(batch)
        try:
            preds = self.predictor.predict_batch([image for _, image in images])
        except Exception as exc:  # a model error must not stop the node
            for entry, _ in images:
                self._fail(entry, f"prediction failed ({type(exc).__name__}: {exc})")
            return len(batch)
        for (entry, image), pred in zip(images, preds, strict=True):
            try:
                source = read_header(self.queue.instance_path(entry.uid))
                outputs = make_outputs(self.predictor, image, pred, source, self.options, self.fingerprint)
                self.queue.mark_predicted(entry, outputs, pred.probability, pred.area_px)
            except PneumosegError as exc:
                self._fail(entry, str(exc))
            except Exception as exc:  # pydicom / highdicom raise many types
                self._fail(entry, f"cannot make its results ({type(exc).__name__}: {exc})")
        return len(batch)

    def send_predicted(self) -> int:
        """C-STORE the results of every predicted instance (one association); returns how many were sent."""
        entries = self.queue.pending("predicted")
        if not entries or time.monotonic() < self._retry_at:
            return 0
        sent = 0
        try:
            assoc = self._scu.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
            if not assoc.is_established:
                raise _Transient("association rejected or destination unreachable")
            try:
                for entry in entries:
                    sent += self._send_entry(assoc, entry)
            finally:
                if assoc.is_established:
                    assoc.release()
        except _Transient as exc:
            if self._retry_wait == _RETRY_MIN:  # once per outage
                log.warning("destination %s: %s; %d instance(s) wait, retrying", self.destination, exc, len(entries))
            self._retry_at = time.monotonic() + self._retry_wait
            self._retry_wait = min(self._retry_wait * 2, _RETRY_MAX)
            self.queue.write_status(destination_ok=False)
            return sent
        self._retry_at, self._retry_wait = 0.0, _RETRY_MIN
        self.queue.write_status(destination_ok=True)
        return sent

    def _send_entry(self, assoc: object, entry: Entry) -> int:
        for kind in [k for k in entry.outputs if k not in entry.sent_outputs]:
            if not self.queue.is_current(entry):  # a re-sent copy replaced it: its own results follow
                return 0
            ds = read_header(self.queue.output_path(entry.uid, kind), pixels=True)
            status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise _Transient("association aborted or timed out during C-STORE")
            if 0xA700 <= code <= 0xA7FF:
                raise _Transient(f"out of resources (status 0x{code:04X})")
            if not _is_success(code):
                self._fail(entry, f"destination {self.destination} refused the {kind.upper()} "
                                  f"(status 0x{code:04X} {status.get('ErrorComment', '')})".rstrip())
                return 0
            self.queue.mark_output_sent(entry, kind)
        self.queue.mark_sent(entry)
        log.info("sent %s from %s: %s -> %s prob=%.4f area_px=%d latency=%.2fs", entry.uid, entry.calling_ae or "?",
                 ",".join(entry.outputs) or "nothing", self.destination, entry.probability or 0.0,
                 entry.area_px or 0, entry.latency or 0.0)
        return 1

    def _fail(self, entry: Entry, reason: str) -> None:
        self.queue.mark_failed(entry, reason)
        log.error("failed %s from %s: %s", entry.uid, entry.calling_ae or "?", reason)

    def step(self) -> bool:
        """One round of work: predict one batch, then send every predicted result. True when there was work."""
        predicted = self.predict_received()
        sent = self.send_predicted()
        return bool(sent or predicted)

    # -- serving -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening (returns at once; ``self.port`` is then the bound port, also when 0 was asked)."""
        if self._server is not None:
            return
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_DATA_RECV, self._on_data),
                    (evt.EVT_CONN_CLOSE, self._on_close)]
        self._server = self._scp.start_server((self.host, self.port), block=False,
                                              evt_handlers=handlers)  # type: ignore[arg-type]
        assert self._server is not None
        self.port = self._server.server_address[1]
        self.queue.write_status(listening=True, ae_title=self.ae_title, host=self.host, port=self.port,
                                forward=str(self.destination), outputs=self.options.describe(),
                                model=self.predictor.model_name)
        if self.queue.recovered:
            log.info("resuming %d queued instance(s) in %s", self.queue.recovered, self.queue.root)

    def serve(self, stop: threading.Event) -> None:
        """Listen (``start``) and work until ``stop`` is set, the queue's earlier instances first."""
        self.start()
        try:
            while not stop.is_set():
                if not self.step():
                    wait = 0.5 if not self.queue.pending("predicted") else max(0.05, self._retry_at - time.monotonic())
                    self.queue.wait(min(wait, 0.5))
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening and release the queue (``status.json``: ``listening: false``)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.queue.close()
