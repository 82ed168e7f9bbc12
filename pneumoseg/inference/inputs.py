"""Inputs of prediction: radiograph files -> ``InputImage`` (uint8 pixels (H, W) and the ImageId).

``iter_inputs`` / ``find_inputs`` list the DICOM / PNG / JPEG files under a path
(``pneumoseg.io.layouts.INPUT_SUFFIXES``, sorted); ``load_input`` reads one: a DICOM through the
hardened reader (``pneumoseg.io.dicom.read``; ImageId = SOPInstanceUID, checked as a UID), a PNG or
JPEG through ``pneumoseg.io.images`` (ImageId = the file stem, checked as a plain name). The
ImageId names every output file, so a bad one is a DataError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoseg.errors import DataError
from pneumoseg.io.dicom.read import DicomMeta, read_dicom
from pneumoseg.io.images import IMAGE_SUFFIXES, read_image
from pneumoseg.io.layouts import INPUT_SUFFIXES, iter_files
from pneumoseg.util.paths import is_valid_uid, safe_name

__all__ = ["InputImage", "find_inputs", "iter_inputs", "load_input"]


@dataclass(frozen=True)
class InputImage:
    """One radiograph to predict: ``pixels`` uint8 (H, W); ``meta`` only for DICOM input."""

    image_id: str
    pixels: np.ndarray
    path: Path
    meta: DicomMeta | None = None


def iter_inputs(path: str | os.PathLike[str]) -> Iterator[Path]:
    """DICOM / PNG / JPEG files (``pneumoseg.io.layouts.INPUT_SUFFIXES``) under ``path``, lazily, in
    ``sorted(path.rglob("*"))`` order (``layouts.iter_files``). A file ``path`` yields itself whatever
    its suffix.
    """
    root = Path(path)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    yield from iter_files(root, INPUT_SUFFIXES)


def find_inputs(path: str | os.PathLike[str]) -> list[Path]:
    """Every input of :func:`iter_inputs` as a list; DataError when there is none."""
    files = list(iter_inputs(path))
    if not files:
        raise DataError(f"{path}: no .dcm, .png or .jpg files found")
    return files


def load_input(path: str | os.PathLike[str]) -> InputImage:
    """Read a DICOM (ImageId = SOPInstanceUID) or a PNG/JPEG (ImageId = file stem).

    The ImageId names output files, so it is checked (``pneumoseg.util.paths``): a DICOM's UID must be
    digits and dots (<= 64 characters), a stem a plain file name; DataError naming the file otherwise.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return InputImage(safe_name(path.stem, path, "file stem"), read_image(path), path)
    dcm = read_dicom(path)
    uid = dcm.meta.image_id
    if not is_valid_uid(uid):
        shown = repr(uid[:80])
        raise DataError(f"{path}: SOPInstanceUID {shown} is not a valid DICOM UID (digits and dots, "
                        "at most 64 characters); not predicted")
    return InputImage(uid, dcm.pixels, path, dcm.meta)
