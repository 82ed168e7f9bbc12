"""Reads in several threads at once each keep exactly their own warnings, and the reader holds no
process-wide lock and installs nothing when imported (``pneumoseg.io.dicom.capture``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import pneumoseg.io.dicom.read as read_module
from pneumoseg.io.dicom.read import read_dicom, read_header

PADDED = str(get_testdata_file("MR_small_padded.dcm"))  # pydicom warns: pixel data with excess padding
IMPLICIT = str(get_testdata_file("SC_rgb_jpeg.dcm"))  # pydicom warns: explicit VR expected, implicit found
ROOT = Path(__file__).resolve().parents[3]


def _solo(path: str) -> tuple[str, ...]:
    return read_dicom(path).meta.warnings


def test_the_two_files_warn_differently() -> None:
    padded, implicit = _solo(PADDED), _solo(IMPLICIT)
    assert any("excess padding" in w for w in padded) and not any("excess padding" in w for w in implicit)
    assert any("Expected explicit VR" in w for w in implicit) and not any("explicit VR" in w for w in padded)


def test_two_threads_inside_reads_at_once_each_get_their_own_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both threads meet inside their reads (the old process-wide lock made the second wait: the
    barrier broke) and warn there while the main thread warns outside any read."""
    solo = {PADDED: _solo(PADDED), IMPLICIT: _solo(IMPLICIT)}
    barrier = threading.Barrier(3, timeout=20)
    original = read_module._check_image_header

    def meet_inside_the_read(ds: object, label: str, notes: list[str]) -> None:
        original(ds, label, notes)
        warnings.warn(f"marker {Path(label).name} before", stacklevel=1)
        barrier.wait()
        warnings.warn(f"marker {Path(label).name} after", stacklevel=1)
        barrier.wait()

    monkeypatch.setattr(read_module, "_check_image_header", meet_inside_the_read)
    with ThreadPoolExecutor(2) as pool, warnings.catch_warnings(record=True) as main_caught:
        warnings.simplefilter("always")
        futures = {path: pool.submit(read_dicom, path) for path in solo}
        barrier.wait()
        warnings.warn("from the main thread, outside any read", stacklevel=1)
        barrier.wait()
        got = {path: future.result(timeout=60).meta.warnings for path, future in futures.items()}
    assert [str(w.message) for w in main_caught] == ["from the main thread, outside any read"]
    for path, other in ((PADDED, IMPLICIT), (IMPLICIT, PADDED)):
        name, other_name = Path(path).name, Path(other).name
        assert f"UserWarning: marker {name} before" in got[path]
        assert f"UserWarning: marker {name} after" in got[path]
        assert not any(other_name in w or "main thread" in w for w in got[path])
        assert tuple(w for w in got[path] if "marker" not in w) == solo[path]


def test_the_service_decodes_two_dicom_uploads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``decode_upload`` (the service's worker-thread step) holds no lock around the DICOM read: two
    uploads meet inside their reads, and each keeps its own warnings."""
    from pneumoseg.service.decode import decode_upload

    barrier = threading.Barrier(2, timeout=20)
    original = read_module._check_image_header

    def meet_inside_the_read(ds: object, label: str, notes: list[str]) -> None:
        original(ds, label, notes)
        barrier.wait()

    monkeypatch.setattr(read_module, "_check_image_header", meet_inside_the_read)
    uploads = {path: Path(path).read_bytes() for path in (PADDED, IMPLICIT)}
    with ThreadPoolExecutor(2) as pool:
        futures = {path: pool.submit(decode_upload, data, Path(path).name, 10**7) for path, data in uploads.items()}
        got = {path: future.result(timeout=60) for path, future in futures.items()}
    monkeypatch.undo()
    for path, (image, kind) in got.items():
        assert kind == "dicom"
        assert image.meta is not None and image.meta.warnings == _solo(path)


def test_many_concurrent_reads_equal_the_same_reads_one_at_a_time() -> None:
    paths = [PADDED, IMPLICIT, PADDED, IMPLICIT] * 6
    solo = {path: _solo(path) for path in set(paths)}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: read_dicom(p).meta.warnings, paths))
    assert got == [solo[p] for p in paths]


def test_read_header_notes_are_per_thread() -> None:
    def notes_of(path: str) -> list[str]:
        notes: list[str] = []
        read_header(path, notes=notes)
        return notes

    solo = {path: notes_of(path) for path in (PADDED, IMPLICIT)}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(notes_of, [PADDED, IMPLICIT] * 8))
    assert got == [solo[PADDED], solo[IMPLICIT]] * 8


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_hooks_are_inert_outside_a_read() -> None:
    """After a read, warnings and pydicom's log records outside a read behave as without the reader."""
    handler, logger = _Records(), logging.getLogger("pydicom")
    logger.addHandler(handler)
    try:
        image = read_dicom(PADDED)  # pydicom logs its padding warning: dropped inside the read
        assert any("excess padding" in w for w in image.meta.warnings)
        assert not any("padding" in m for m in handler.messages)
        logger.warning("outside a read")
        assert handler.messages == ["outside a read"]
    finally:
        logger.removeHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="outside"):
            warnings.warn("outside a read", stacklevel=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.warn("ignored outside a read", stacklevel=1)  # no error, nothing recorded anywhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("shown outside a read", stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown outside a read"]


def test_a_read_records_its_warnings_even_under_an_error_filter() -> None:
    """The process's filters do not apply inside a read (as ``simplefilter("always")`` did)."""
    solo = _solo(PADDED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_dicom(PADDED).meta.warnings == solo


def test_importing_the_reader_installs_nothing() -> None:
    """No warning filter, warning hook, numpy error state or logging filter changes on import."""
    code = """
import logging, warnings
import numpy, pydicom, PIL.Image
LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")
def state():
    return (list(warnings.filters), warnings._showwarnmsg, warnings.showwarning, numpy.geterr(),
            [list(logging.getLogger(name).filters) for name in LOGGERS])
before = state()
import pneumoseg.io.dicom.read  # imports every reader module
after = state()
assert after == before, (before, after)
print("unchanged")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "unchanged", done.stderr[-2000:]
