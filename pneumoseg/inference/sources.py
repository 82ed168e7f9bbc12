"""Streamed inputs for archive prediction: a folder walked lazily, a file list read line by line.

An input source is any zero-argument callable returning a fresh iterable of paths (a generator
is fine); every process (each rank, each DataLoader worker, the final merge) calls it and walks
it in the same order, so the position of an image in that walk is its stable identity for
sharding (rank r of W takes positions i with i % W == r) and for the order of the CSVs.
Nothing is listed up front: prediction starts after the first file is found.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pneumoseg.errors import DataError
from pneumoseg.predict import DICOM_SUFFIXES, IMAGE_SUFFIXES

__all__ = ["InputSource", "first_input", "folder_source", "iter_folder", "iter_list", "list_source"]

InputSource = Callable[[], Iterable["str | os.PathLike[str]"]]
_SUFFIXES = DICOM_SUFFIXES + IMAGE_SUFFIXES


def _walk(folder: str) -> Iterator[Path]:
    # One directory's names in memory at a time; sorted, so the walk equals sorted(rglob).
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif os.path.splitext(entry.name)[1].lower() in _SUFFIXES and entry.is_file():
            yield Path(entry.path)


def iter_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """DICOM / PNG / JPEG files under ``path`` (recursive, lazily), in ``find_inputs``' order.

    Each directory is listed with ``os.scandir`` and sorted by name, and subfolders are walked
    where they sort, which is the order of ``sorted(path.rglob("*"))``. A file ``path`` yields
    itself whatever its suffix. Symlinked files are followed, symlinked folders are not.
    """
    root = Path(path)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    yield from _walk(str(root))


def iter_list(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The paths in a text file, one per line, in file order (blank lines and ``#`` comments skipped).

    Relative paths are taken from the current directory (as on the command line). Read lazily.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                entry = line.rstrip("\r\n")
                if entry.strip() and not entry.lstrip().startswith("#"):
                    yield Path(entry)
    except FileNotFoundError:
        raise DataError(f"--list {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"--list {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def folder_source(path: str | os.PathLike[str]) -> InputSource:
    """An input source walking ``path`` (see ``iter_folder``)."""
    return functools.partial(iter_folder, Path(path))


def list_source(path: str | os.PathLike[str]) -> InputSource:
    """An input source reading the file list ``path`` (see ``iter_list``)."""
    return functools.partial(iter_list, Path(path))


def first_input(source: InputSource, empty: str) -> Path:
    """The first path of ``source`` (found without listing the rest); DataError(``empty``) when there is none."""
    for item in source():
        return Path(item)
    raise DataError(empty)
