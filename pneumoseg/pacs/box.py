"""A PACS in a box on 127.0.0.1: Orthanc (+ DICOMweb), the OHIF viewer, and ``pneumoseg listen``.

One job, hence its size: starting, wiring and stopping the three servers of ``pneumoseg pacs-demo``.

``PacsBox`` starts, each on a free loopback port:

* **Orthanc** (the Debian package's ``Orthanc`` binary and its DICOMweb plugin) with its storage
  in ``WORKDIR/orthanc``; it accepts C-STORE only from the listener's AE title and host;
* **``pneumoseg listen``** (a subprocess, the CLI command) with the given run, forwarding its
  SEG (+ SR / SC) to Orthanc; its queue in ``WORKDIR/queue``;
* **OHIF** (the prebuilt ``@ohif/app`` ``dist/`` folder, ``make install`` puts it in ``.ohif/dist``)
  served by a small threaded HTTP server (``OhifServer``): the files of ``dist/``, any other path
  answered with ``index.html`` (OHIF's routes are client side), an ``app-config.js`` generated for
  this box (one DICOMweb data source), and ``/dicom-web/...`` passed through to Orthanc's DICOMweb
  root, so that the viewer and its data share one origin (no CORS setup in Orthanc).

``PacsBox.send(files)`` uploads DICOM files to Orthanc (REST) and has Orthanc C-STORE the radiographs
to the listener; ``wait_processed`` waits for the listener's results to arrive in Orthanc;
``viewer_url(study)`` is the OHIF link of a study. ``close`` (or leaving the ``with`` block) stops
the listener (SIGTERM: it finishes its round), the web server and Orthanc, in that order.

Nothing listens beyond 127.0.0.1 except Orthanc's DICOM port, which Orthanc 1.10 cannot bind to
one address: it accepts stores only from the listener's AE title at 127.0.0.1 and no echo.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pneumoseg.errors import ConfigError
from pneumoseg.pacs import PacsError

__all__ = [
    "OHIF_VERSION",
    "ORTHANC_DICOMWEB_PLUGIN",
    "OhifServer",
    "Orthanc",
    "PacsBox",
    "demo_inputs",
    "demo_run",
    "find_ohif",
    "find_orthanc",
    "free_port",
    "ohif_app_config",
    "start_orthanc",
]

#: The @ohif/app release ``make install`` fetches (its ``dist/``): the one this module was checked with.
OHIF_VERSION = "3.13.2"
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_OHIF_DEFAULT = Path(".ohif") / "dist"
_LISTENER_AET = "PNEUMOSEG"
_RADIOGRAPHS = ("CR", "DX", "DR")
_PROXY_HEADERS = ("accept", "content-type", "content-length")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_run(out: str | os.PathLike[str] = "demo-out", log: Any = print) -> Path:
    """The built-in demo's trained run ``OUT/run``; the demo (``pneumoseg demo --out OUT``) is run first when
    its best checkpoint is absent (a few minutes on a CPU; finished steps are reused)."""
    run = Path(out) / "run"
    if not (run / "checkpoints" / "best.ckpt").is_file():
        from pneumoseg.workflows.demo import run_demo

        log(f"no trained run in {run}: running the demo first (a few minutes on a CPU)")
        run_demo(out, progress=False, log=log)
    return run


def demo_inputs(folder: str | os.PathLike[str], limit: int, annotations: str | os.PathLike[str] | None = None) -> list[Path]:
    """Up to ``limit`` DICOM files of ``folder`` (sorted walk); with ``annotations`` (an RLE CSV: the
    demo's ``train-rle.csv``) those with a pneumothorax come first, so the viewer has something to show."""
    from pneumoseg.io.layouts import find_dicoms

    files = find_dicoms(folder)
    if annotations is not None and Path(annotations).is_file():
        from pneumoseg.io.rle import read_annotations

        labels = read_annotations(annotations)
        positive = {k for k, rles in labels.items() if any(r.strip() != "-1" for r in rles)}
        files.sort(key=lambda f: f.stem not in positive)  # stable: positives first, each group sorted
    return files[:limit]


def find_ohif(path: str | os.PathLike[str] | None = None) -> Path:
    """OHIF's built ``dist/`` folder: ``path``, else $PNEUMOSEG_OHIF_DIR, else ``.ohif/dist`` in the current folder.

    Raises ConfigError (how to install it) when the folder has no ``index.html``.
    """
    where = Path(path or os.environ.get("PNEUMOSEG_OHIF_DIR") or _OHIF_DEFAULT)
    if not (where / "index.html").is_file():
        raise ConfigError(f"{where}: no OHIF viewer here (index.html missing); `make install` fetches @ohif/app "
                          f"{OHIF_VERSION}'s dist/ into .ohif/dist (needs npm), or give --ohif DIR")
    return where


def find_orthanc() -> tuple[str, Path]:
    """The Orthanc binary and its DICOMweb plugin; ConfigError (how to install them) when either is missing."""
    binary = shutil.which("Orthanc")
    if binary is None or not ORTHANC_DICOMWEB_PLUGIN.is_file():
        raise ConfigError("Orthanc and its DICOMweb plugin are not installed (Debian: apt-get install orthanc "
                          "orthanc-dicomweb; `make install` does it as root)")
    return binary, ORTHANC_DICOMWEB_PLUGIN


@dataclass
class Orthanc:
    """A running Orthanc on 127.0.0.1 and a few REST helpers (``url``: its HTTP root)."""

    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, data: bytes | None = None, timeout: float = 120) -> Any:
        """One REST call; the decoded JSON answer (None when empty). Raises PacsError on an HTTP error."""
        import requests

        try:
            response = requests.request(method, self.url + path, json=body, data=data, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise PacsError(f"Orthanc {method} {path}: {exc}") from None
        return response.json() if response.content else None

    def upload(self, files: Iterable[Path]) -> list[dict[str, Any]]:
        """POST each file to /instances; Orthanc's answers (ID, ParentStudy, ...), one per file."""
        return [self.rest("POST", "/instances", data=Path(f).read_bytes()) for f in files]

    def file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance (Orthanc's id)."""
        import requests

        try:
            response = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=120)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise PacsError(f"Orthanc GET /instances/{orthanc_id}/file: {exc}") from None
        return response.content

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (Orthanc flushes its index), SIGKILL after ``timeout`` s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orthanc(workdir: Path, *, allowed: dict[str, list[Any]] | None = None, timeout: float = 30) -> Orthanc:
    """Start Orthanc with DICOMweb (``/dicom-web/``) on free loopback ports, storage in ``workdir/orthanc``.

    ``allowed``: Orthanc's DicomModalities (name -> [AET, host, port]): the only callers whose
    C-STORE it accepts. Raises ConfigError when Orthanc is not installed, PacsError when it does
    not answer within ``timeout`` s (with the end of its log).
    """
    binary, plugin = find_orthanc()
    http_port, dicom_port = free_port(), free_port()
    storage = workdir / "orthanc"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "pneumoseg-pacs-box", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1", "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "DicomModalities": allowed or {},
        # Orthanc 1.10 cannot bind its DICOM port to loopback only: accept stores only from known modalities.
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
        "DicomScpTimeout": 10, "StableAge": 1, "ConcurrentJobs": 1,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    log = workdir / "orthanc.log"
    with log.open("ab") as out:
        process = subprocess.Popen([binary, str(path)], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Orthanc(http_port, dicom_port, "ORTHANC", process, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.rest("GET", "/system", timeout=1)
            return server
        except PacsError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise PacsError(f"Orthanc did not start ({log}): {log.read_text(errors='replace')[-1500:]}") from None
            time.sleep(0.1)


def ohif_app_config(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js`` with one DICOMweb data source at ``dicomweb_root`` (no trailing slash).

    Settings for Orthanc's DICOMweb plugin: WADO-RS frames (no /rendered), no includefield in QIDO,
    lazy study loading; the study list on; the CPU-rendering and cross-origin notices off.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (pneumoseg PACS box)", "name": "orthanc",
            "wadoUriRoot": dicomweb_root, "qidoRoot": dicomweb_root, "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False, "supportsReject": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "staticWado": False, "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"}, "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "name": "pneumoseg-pacs-box", "routerBasename": "/", "extensions": [], "modes": [],
        "customizationService": {}, "showStudyList": True, "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False, "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True, "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "orthanc", "dataSources": [source],
    }
    return f"/** pneumoseg PACS box: OHIF {OHIF_VERSION} over Orthanc. */\nwindow.config = {json.dumps(config, indent=1)};\n"


class _Handler(BaseHTTPRequestHandler):
    """Static files of OHIF's dist/ (index.html for unknown paths), the generated config, the DICOMweb proxy."""

    server: OhifServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the box prints what matters

    def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() in _PROXY_HEADERS}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            self._send(502, f"Orthanc unreachable: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self._send(response.status, data, response.getheader("Content-Type") or "application/octet-stream")

    def _static(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/app-config.js":
            self._send(200, self.server.app_config, "application/javascript", {"Cache-Control": "no-store"})
            return
        root = self.server.root
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # a client-side route (/viewer, /segmentation, ...)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(200, target.read_bytes(), content_type)

    def do_GET(self) -> None:
        if self.path.startswith("/dicom-web/"):
            self._proxy()
        else:
            self._static()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.path.startswith("/dicom-web/"):
            self._proxy()
        else:
            self._send(405, b"method not allowed", "text/plain")


class OhifServer(ThreadingHTTPServer):
    """OHIF's dist/ on ``http://127.0.0.1:PORT`` with Orthanc's DICOMweb at ``/dicom-web`` (same origin).

    ``start()`` serves in a daemon thread; ``stop()`` shuts it down and closes the socket.
    """

    daemon_threads = True
    block_on_close = False  # stop() does not wait for browsers' idle keep-alive connections

    def __init__(self, dist: Path, orthanc_port: int, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__((host, port), _Handler)
        self.root = Path(dist).resolve()
        self.orthanc_port = orthanc_port
        self.app_config = ohif_app_config(f"{self.url}/dicom-web").encode()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OhifServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
            self._thread = None
        self.server_close()


def _read_status(queue: Path) -> dict[str, Any]:
    try:
        return json.loads((queue / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class PacsBox:
    """Orthanc + OHIF + ``pneumoseg listen`` on loopback (module docstring). Use as a context manager.

    ``run``: the run folder(s) the listener predicts with (``RUN`` or ``RUN,RUN2``); ``workdir``: Orthanc's
    storage, the listener's queue, and the logs (``orthanc.log``, ``listen.log``); ``listen_args``:
    extra ``pneumoseg listen`` options (e.g. ``["--sc"]``).
    """

    run: str
    workdir: Path
    ohif_dir: Path | None = None
    listen_args: Sequence[str] = ()
    device: str | None = None  #: the listener's --device (None: cuda when available, else cpu)
    orthanc: Orthanc | None = field(default=None, init=False)
    web: OhifServer | None = field(default=None, init=False)
    listener: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def queue(self) -> Path:
        return self.workdir / "queue"

    @property
    def listen_log(self) -> Path:
        return self.workdir / "listen.log"

    def start(self, timeout: float = 300) -> PacsBox:
        """Start Orthanc, OHIF's server and the listener; return once the listener listens.

        Raises ConfigError when OHIF or Orthanc is missing, PacsError when a part does not start
        (everything started is stopped again).
        """
        dist = find_ohif(self.ohif_dir)
        find_orthanc()
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen_port = free_port()
        try:
            self.orthanc = start_orthanc(self.workdir, allowed={"pneumoseg": [_LISTENER_AET, "127.0.0.1", listen_port]})
            self.web = OhifServer(dist, self.orthanc.http_port).start()
            self.listener = self._start_listener(listen_port)
            self._wait("the listener to listen", lambda: _read_status(self.queue).get("listening")
                       and _read_status(self.queue).get("pid") == self.listener.pid, timeout)  # type: ignore[union-attr]
        except BaseException:
            self.close()
            raise
        return self

    def _start_listener(self, port: int) -> subprocess.Popen[bytes]:
        assert self.orthanc is not None
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        command = [sys.executable, "-m", "pneumoseg.cli.main", "listen", self.run, "--forward",
                   f"{self.orthanc.aet}@127.0.0.1:{self.orthanc.dicom_port}", "--port", str(port),
                   "--host", "127.0.0.1", "--ae-title", _LISTENER_AET, "--queue", str(self.queue),
                   "--calling-ae", self.orthanc.aet, *(["--device", self.device] if self.device else []), "--batch-size", "1",
                   *self.listen_args]
        with self.listen_log.open("ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)

    def _wait(self, what: str, condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.listener is not None and self.listener.poll() is not None:
                raise PacsError(f"pneumoseg listen exited ({self.listener.returncode}) while waiting for {what}: "
                                f"{self.listen_log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() > deadline:
                raise PacsError(f"timed out after {timeout:.0f} s waiting for {what} (logs in {self.workdir})")
            time.sleep(0.1)

    def send(self, files: Iterable[Path]) -> dict[str, list[str]]:
        """Upload ``files`` to Orthanc and have it C-STORE the radiographs (CR / DX / DR) to the listener.

        Returns StudyInstanceUID -> SOPInstanceUIDs of the radiographs sent. Raises PacsError when
        Orthanc refuses a file or the store to the listener fails.
        """
        assert self.orthanc is not None, "start() first"
        sent: dict[str, list[str]] = {}
        ids = []
        for answer in self.orthanc.upload(files):
            tags = self.orthanc.rest("GET", f"/instances/{answer['ID']}/simplified-tags")
            if str(tags.get("Modality", "")).upper() in _RADIOGRAPHS:
                ids.append(answer["ID"])
                sent.setdefault(str(tags["StudyInstanceUID"]), []).append(str(tags["SOPInstanceUID"]))
        if ids:
            self.orthanc.rest("POST", "/modalities/pneumoseg/store", ids)  # synchronous: every C-STORE answered
        return sent

    def results(self, study: str) -> dict[str, int]:
        """Modality -> number of instances of that modality in ``study`` (e.g. {"CR": 1, "SEG": 1})."""
        assert self.orthanc is not None, "start() first"
        counts: dict[str, int] = {}
        for series in self.orthanc.rest("POST", "/tools/find", {"Level": "Series", "Expand": True,
                                                                 "Query": {"StudyInstanceUID": study}}):
            modality = str(series["MainDicomTags"].get("Modality", ""))
            counts[modality] = counts.get(modality, 0) + len(series["Instances"])
        return counts

    def wait_processed(self, sent: dict[str, list[str]], timeout: float = 300) -> None:
        """Wait until the listener's queue is empty and every study sent holds a SEG per radiograph sent.

        Raises PacsError on a time-out or when the listener failed an instance (its log names why).
        """
        def done() -> bool:
            status = _read_status(self.queue)
            if status.get("failed"):
                raise PacsError(f"the listener failed {status['failed']} instance(s): see {self.listen_log}")
            return status.get("pending") == 0 and all(self.results(study).get("SEG", 0) >= len(uids)
                                                      for study, uids in sent.items())
        self._wait("the results in Orthanc", done, timeout)

    def viewer_url(self, study: str) -> str:
        """The OHIF link that opens ``study``."""
        assert self.web is not None, "start() first"
        return f"{self.web.url}/viewer?StudyInstanceUIDs={quote(study)}"

    def close(self) -> None:
        """Stop the listener, the web server and Orthanc. Idempotent.

        The listener gets SIGTERM; once its status says it no longer listens (its queue closed, durable
        on disk) it is given 3 s to exit, and SIGKILL after that (an idle ``pneumoseg listen`` can
        linger at interpreter exit), or after 30 s in any case.
        """
        if self.listener is not None:
            if self.listener.poll() is None:
                self.listener.send_signal(signal.SIGTERM)
                deadline, closed_at = time.monotonic() + 30, None
                while self.listener.poll() is None and time.monotonic() < deadline:
                    if closed_at is None and _read_status(self.queue).get("listening") is False:
                        closed_at = time.monotonic()
                    if closed_at is not None and time.monotonic() - closed_at > 3:
                        break
                    time.sleep(0.1)
                if self.listener.poll() is None:
                    self.listener.kill()
                self.listener.wait()
            self.listener = None
        if self.web is not None:
            self.web.stop()
            self.web = None
        if self.orthanc is not None:
            self.orthanc.stop()
            self.orthanc = None

    def __enter__(self) -> PacsBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
