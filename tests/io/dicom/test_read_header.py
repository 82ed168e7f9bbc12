"""``read_header``: every DICOM read outside the pixel reader goes through the same guards (one
DicomError line naming the file, warnings caught), and no module outside ``pneumoseg/io/dicom`` calls
pydicom's ``dcmread`` itself."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

import pneumoseg
from pneumoseg.cli.main import app
from pneumoseg.errors import DicomError
from pneumoseg.io.dicom.read import read_header
from tests.helpers.dicom import write_dicom

PACKAGE = Path(pneumoseg.__file__).parent


def _with_invalid_study_uid(path: Path) -> Path:
    """A valid image whose StudyInstanceUID ``1.2.x!`` makes pydicom warn when the value is converted."""
    write_dicom(path, np.zeros((16, 16), np.uint8))
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = "1.2.x!"
        ds.save_as(path)
    return path


def test_dcmread_is_called_only_in_the_dicom_reader_package() -> None:
    calls = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bdcmread\s*\(", line) and "io/dicom" not in p.relative_to(PACKAGE).as_posix()]
    assert calls == []


def test_read_header_refuses_bad_files_with_one_line_naming_them(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", np.zeros((16, 16), np.uint8))
    assert read_header(tmp_path / "good.dcm").SOPInstanceUID == good
    assert "PixelData" not in read_header(tmp_path / "good.dcm")
    assert "PixelData" in read_header(tmp_path / "good.dcm", pixels=True)
    raw = (tmp_path / "good.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-100])
    (tmp_path / "text.dcm").write_text("not a dicom")
    cases = [(tmp_path / "missing.dcm", "file not found"), (tmp_path / "text.dcm", "not a DICOM file")]
    for path, what in cases:
        with pytest.raises(DicomError, match=what) as info:
            read_header(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    for kwargs in ({"pixels": True}, {"pixels": True, "defer_size": 64}):
        with pytest.raises(DicomError, match="truncated DICOM file") as info:
            read_header(tmp_path / "cut.dcm", **kwargs)
        assert str(info.value).startswith(f"{tmp_path / 'cut.dcm'}: ") and "\n" not in str(info.value)
    # A bare stream (no preamble, no DICM) reads only with force, as uploads are sniffed.
    bare = raw[132:]
    with pytest.raises(DicomError, match=r"^<upload>: not a DICOM file"):
        read_header(bare)
    assert read_header(bare, force=True, name="bare").PatientID == "P1"


def test_read_header_catches_pydicom_warnings_into_notes(tmp_path: Path) -> None:
    path = _with_invalid_study_uid(tmp_path / "w.dcm")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_header(path, notes=notes)
        text = str(ds)  # values were converted inside the reader: printing warns no more
    assert caught == [] and "1.2.x!" in text
    assert len(notes) == 1 and "Invalid value for VR UI" in notes[0] and "\n" not in notes[0]
    assert "force=True" not in notes[0] and "Please see" not in notes[0]


def test_explore_full_header_reads_through_the_reader_and_lets_no_warning_through(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    _with_invalid_study_uid(root / "w.dcm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["explore", str(root), "--out", str(tmp_path / "out"), "--no-progress",
                                          "--samples", "0", "--full-header"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught] == []
    assert "Study Instance UID" in result.output and "1.2.x!" in result.output
    lines = [line for line in result.output.splitlines() if "Invalid value for VR UI" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{root / 'w.dcm'}: warning: UserWarning: "), result.output
