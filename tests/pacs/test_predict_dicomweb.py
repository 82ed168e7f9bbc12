"""`predict --dicomweb URL --study UID` is `pneumoseg dicomweb` (the round trip itself: test_orthanc.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from pneumoseg.cli.main import app

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_predict_dicomweb_reaches_the_dicomweb_path_and_fails_in_one_line(pacs_run: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"  # nothing listens there
    result = runner.invoke(app, ["predict", str(pacs_run), "--dicomweb", url, "--study", "1.2.3",
                                 "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert url.split("/dicom-web")[0] in result.output and len(result.output.strip().splitlines()) == 1


def test_predict_dicomweb_refuses_mixed_inputs(pacs_run: Path, tmp_path: Path) -> None:
    url = "http://127.0.0.1:1/dicom-web"
    cases = [
        [str(pacs_run), "--dicomweb", url],                                         # no --study
        [str(pacs_run), "--dicomweb", url, "--study", "1.2", "--out", str(tmp_path / "o")],
        [str(pacs_run), str(tmp_path), "--dicomweb", url, "--study", "1.2"],       # an INPUT too
    ]
    for args in cases:
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2 and "--dicomweb URL needs --study" in result.output, args
