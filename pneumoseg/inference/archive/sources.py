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
from pneumoseg.inference.inputs import iter_inputs

__all__ = ["InputSource", "first_input", "folder_source", "input_source", "iter_folder", "iter_list", "list_source"]

InputSource = Callable[[], Iterable["str | os.PathLike[str]"]]


iter_folder = iter_inputs  #: the folder walk of ``pneumoseg predict``, lazily (one home: predict.py)


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


def input_source(folder: str | os.PathLike[str] | None = None,
                 list_file: str | os.PathLike[str] | None = None) -> tuple[InputSource, str]:
    """The source of ``predict INPUT`` (a file or a folder: ``folder``) or of ``--list FILE`` (``list_file``),
    and the spec naming it in the manifest (``folder:/abs/path`` or ``list:/abs/path``; a resumed call must
    name the same one). Exactly one of the two is given.

    DataError (one line) when the source holds no input; only its first path is looked for.
    """
    if (folder is None) == (list_file is None):
        raise ValueError("input_source takes a folder or a list file, not both or neither")
    if folder is not None:
        source, spec = folder_source(folder), f"folder:{Path(folder).resolve()}"
        first_input(source, f"{folder}: no .dcm, .png or .jpg files found")
    else:
        assert list_file is not None
        source, spec = list_source(list_file), f"list:{Path(list_file).resolve()}"
        first_input(source, f"--list {list_file}: no input paths in it")
    return source, spec
