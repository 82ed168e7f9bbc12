"""Fixtures for the PACS tests: a small untrained run, reference predictions, a real Orthanc."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
THRESHOLD = 0.55  #: the untrained seeded net's probabilities are ~0.54-0.56: partial masks, never empty or full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pacs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed U-Net at 64 px, untrained (seeded weights, PyTorch's own head init: ``output_prior`` null,
    since the 0.01 foreground prior would make every mask empty), threshold 0.55 in its config."""
    import torch

    from pneumoseg.config import load_config
    from pneumoseg.training.run_folder import init_run

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return init_run(load_config("seed_unet", ["model.name=unet", "data.size=64", "model.output_prior=null",
                                                  f"postprocess.threshold={THRESHOLD}"]),
                        tmp_path_factory.mktemp("pacs") / "run")


@dataclass
class Orthanc:
    """A running Orthanc on 127.0.0.1: REST helpers."""

    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, data: bytes | None = None, timeout: float = 60) -> Any:
        import requests

        response = requests.request(method, self.url + path, json=body, data=data, timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, files: list[Path]) -> list[str]:
        """POST each file to /instances; their Orthanc ids."""
        return [self.rest("POST", "/instances", data=f.read_bytes())["ID"] for f in files]

    def instances(self, modality: str) -> list[dict[str, Any]]:
        """Every instance of a series of ``modality`` (expanded)."""
        found = []
        for series in self.rest("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": modality},
                                                         "Expand": True}):
            found += [self.rest("GET", f"/instances/{i}") for i in series["Instances"]]
        return found

    def file(self, orthanc_id: str) -> bytes:
        import requests

        return requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60).content


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (DICOMweb plugin on) on free loopback ports, its storage in tmp; killed afterwards."""
    binary = shutil.which("Orthanc")
    plugin = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
    if binary is None or not plugin.exists():
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (Debian: apt-get install orthanc "
                    "orthanc-dicomweb; `make install` does it as root)")
    http_port, dicom_port = free_port(), free_port()
    storage = tmp_path / "orthanc-db"
    config = {
        "Name": "pneumoseg-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1", "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "DicomModalities": {},
        # Orthanc 1.10 cannot bind its DICOM port to loopback only: accept stores only from known modalities.
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
        "DicomScpTimeout": 10, "StableAge": 1, "ConcurrentJobs": 1,
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(http_port, dicom_port, "ORTHANC", process)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                server.rest("GET", "/system", timeout=1)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield server
    finally:
        process.kill()  # its storage is thrown away with tmp_path: no need for a clean shutdown
        process.wait()
        log.close()
