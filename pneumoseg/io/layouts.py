"""Folder layouts on disk: which files are DICOM, the folder walk. No pydicom here (cheap to import).

* DICOM files are the files whose suffix, in any case, is in ``DICOM_SUFFIXES`` (``.dcm``, ``.dicom``);
  images are ``pneumoseg.io.images.IMAGE_SUFFIXES``. ``explore``, ``prepare``, ``predict``,
  ``evaluate`` and the viewer's ``--browse`` all decide by these two tuples.
* The walk (:func:`iter_files`) lists one directory at a time, sorted by name, subfolders walked
  where they sort (the order of ``sorted(root.rglob("*"))``); symlinked folders are not followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pneumoseg.errors import DataError
from pneumoseg.io.images import IMAGE_SUFFIXES

__all__ = [
    "DICOM_SUFFIXES",
    "INPUT_SUFFIXES",
    "find_dicoms",
    "is_dicom_name",
    "iter_files",
]

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
"""Suffixes (compared in lower case) of the files read as DICOM."""
INPUT_SUFFIXES: tuple[str, ...] = DICOM_SUFFIXES + IMAGE_SUFFIXES
"""Suffixes of the files ``predict`` and ``--browse`` take: DICOM, PNG, JPEG."""


def is_dicom_name(name: str | os.PathLike[str]) -> bool:
    """True when the file name's suffix (any case) is one of ``DICOM_SUFFIXES``."""
    return os.path.splitext(os.fspath(name))[1].lower() in DICOM_SUFFIXES


def _walk(folder: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    # One directory's names in memory at a time; sorted, so the walk equals sorted(rglob).
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, suffixes)
        elif os.path.splitext(entry.name)[1].lower() in suffixes and entry.is_file():
            yield Path(entry.path)


def iter_files(root: str | os.PathLike[str], suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Regular files under the folder ``root`` whose lower-cased suffix is in ``suffixes``, lazily,
    in ``sorted(root.rglob("*"))`` order (module docstring). DataError when ``root`` is not a folder."""
    if not Path(root).is_dir():
        raise DataError(f"{root}: no such folder")
    yield from _walk(os.fspath(root), suffixes)


def find_dicoms(dicom_dir: str | os.PathLike[str]) -> list[Path]:
    """Every DICOM file (``DICOM_SUFFIXES``, any case) under ``dicom_dir``, recursively, sorted.

    Raises DataError when the folder is missing or holds no DICOM file.
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found (or not a folder)")
    files = list(iter_files(root, DICOM_SUFFIXES))
    if not files:
        raise DataError(f"{root}: no .dcm files or .dicom files found (searched recursively)")
    return files

