"""Mutation fuzzing of ``read_dicom`` over the real SIIM DICOMs: truncation, byte flips in the header and
in the pixel data, element length fields rewritten to huge or short values.

In every case ``read_dicom`` returns uint8 (H, W) pixels or raises one DicomError line naming the input;
no other exception, no warning reaching the terminal, no file written, bounded memory.
The default run is ~60 cases (a few seconds); a long run::

    PNEUMOSEG_FUZZ_EXAMPLES=5000 PNEUMOSEG_FUZZ_SEED=1 python -m pytest -q -p no:cacheprovider tests/io/dicom/test_fuzz_dicom.py
"""

from __future__ import annotations

import os
import resource
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from pneumoseg.io.dicom.read import read_dicom
from pneumoseg.errors import DicomError
from tests.shared_data import SIIM, require_siim

pytestmark = require_siim

N_EXAMPLES = int(os.environ.get("PNEUMOSEG_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("PNEUMOSEG_FUZZ_SEED", "0"))
MAX_GROWTH_BYTES = 1 << 30  # peak resident memory may grow by less than 1 GB over the whole run
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _files() -> list[bytes]:
    return [p.read_bytes() for p in sorted((SIIM / "dicom").glob("*.dcm"))]


def length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size in bytes) of each top-level element's length field, explicit VR little endian,
    from the file meta group to the first undefined length (the encapsulated pixel data)."""
    fields, pos = [], 132
    while pos + 8 <= len(data):
        vr = data[pos + 4: pos + 6]
        if vr in _LONG_VRS:
            fields.append((pos + 8, 4))
            (length,) = struct.unpack_from("<I", data, pos + 8)
            if length == 0xFFFFFFFF:
                break
            pos += 12 + length
        else:
            fields.append((pos + 6, 2))
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return fields


def pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) Pixel Data element."""
    return data.rindex(b"\xe0\x7f\x10\x00")


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random mutation of ``data`` and a description of it (to reproduce a failure)."""
    kind = rng.choice(["truncate", "flip-header", "flip-pixels", "length"])
    out = bytearray(data)
    pixels = pixel_data_offset(data)
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return bytes(out[:cut]), f"truncate at {cut}"
    if kind in ("flip-header", "flip-pixels"):
        low, high = (128, pixels + 12) if kind == "flip-header" else (pixels + 12, len(data))
        where = rng.integers(low, high, size=int(rng.integers(1, 9)))
        for i in where:
            out[i] = int(rng.integers(0, 256))
        return bytes(out), f"{kind} at {sorted(where.tolist())}"
    offset, size = length_fields(data)[int(rng.integers(0, len(length_fields(data))))]
    top = 0xFFFF if size == 2 else 0xFFFFFFFF
    value = int(rng.choice([0, 1, 3, top - 1, top, top // 2, int(rng.integers(0, top))]))
    out[offset: offset + size] = value.to_bytes(size, "little")
    return bytes(out), f"length field at {offset} ({size} bytes) = {value:#x}"


def _cases(n: int, seed: int) -> list[tuple[str, bytes, str]]:
    files, rng = _files(), np.random.default_rng(seed)
    cases = []
    for i in range(n):
        source = int(rng.integers(0, len(files)))
        data, what = mutate(files[source], rng)
        cases.append((f"case{i}-file{source}", data, what))
    return cases


def test_length_fields_walk_the_real_files() -> None:
    for data in _files():
        fields = length_fields(data)
        assert len(fields) > 10  # the file meta group and the patient/image tags
        assert data[fields[-1][0] - 8: fields[-1][0] - 4] == b"\xe0\x7f\x10\x00"  # stops at Pixel Data


def test_mutated_real_dicoms_decode_or_fail_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    outcomes = {"decoded": 0, "refused": 0}
    for name, data, what in _cases(N_EXAMPLES, SEED):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                image = read_dicom(data, name=name)
            except DicomError as exc:
                text = str(exc)
                assert "\n" not in text and text.startswith(f"{name}: "), f"{what}: {text!r}"
                assert "force=True" not in text, f"{what}: {text}"
                outcomes["refused"] += 1
            except BaseException as exc:  # the point: nothing else may come out
                pytest.fail(f"{name} ({what}, seed {SEED}): {type(exc).__name__}: {exc}")
            else:
                assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2, what
                assert all("\n" not in w for w in image.meta.warnings), what
                outcomes["decoded"] += 1
        assert not caught, f"{what}: warnings escaped: {[str(w.message) for w in caught]}"
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_peak
    assert growth < MAX_GROWTH_BYTES, f"peak memory grew by {growth / 2**20:.0f} MiB"
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == N_EXAMPLES


def test_prepare_over_mutated_files_reports_each_on_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pneumoseg.cli.main import app

    folder = tmp_path / "in"
    folder.mkdir()
    for name, data, _ in _cases(12, SEED + 1):
        (folder / f"{name}.dcm").write_bytes(data)
    rle = tmp_path / "rle.csv"
    rle.write_text("ImageId, EncodedPixels\n1.2.3.4, -1\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["prepare", "--dicom-dir", str(folder), "--rle", str(rle), "--out",
                                      str(tmp_path / "cache"), "--size", "256", "--workers", "1", "--no-progress"],
                                env={"COLUMNS": "4000", "NO_COLOR": "1"})
    assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output[-3000:]
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for path in sorted(folder.glob("*.dcm")):
        try:
            read_dicom(path)
        except DicomError:
            lines = [line for line in result.output.splitlines() if f"{path}:" in line]
            assert len(lines) == 1, f"{path.name}: {lines}"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] != "cache"] == []  # only --out gets files
