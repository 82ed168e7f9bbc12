"""Folder layouts on disk: which files are DICOM, the folder walk, the PNG images/ + masks/ layout.
No pydicom here (cheap to import).

* DICOM files are the files whose suffix, in any case, is in ``DICOM_SUFFIXES`` (``.dcm``, ``.dicom``);
  images are ``pneumoseg.io.images.IMAGE_SUFFIXES``. ``explore``, ``prepare``, ``predict``,
  ``evaluate`` and the viewer's ``--browse`` all decide by these two tuples.
* The walk (:func:`iter_files`) lists one directory at a time, sorted by name, subfolders walked
  where they sort (the order of ``sorted(root.rglob("*"))``); symlinked folders are not followed.
* The PNG layout (``prepare --png-dir``, ``explore --png-dir``, ``serve --browse``):
  ``DIR/images/<name>.(png|jpg|jpeg)`` with optional ``DIR/masks/<name>.png``, paired by file stem
  (:func:`find_png_pairs`). A mask is read by ONE rule, :func:`read_layout_mask` (that of
  ``pneumoseg.io.images.read_mask``): 0/255 masks are positive above 127, a mask whose maximum is 1
  (a 0/1 mask) is positive where it is 1; it must have its image's size.
* A label (an RLE row, a mask) is matched to an image by :func:`match_label`: the DICOM's
  SOPInstanceUID first, then the file stem (PNG / JPEG: the stem only). prepare, explore, evaluate
  and ``--browse --truth`` all use it.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoseg.errors import DataError
from pneumoseg.io.images import IMAGE_SUFFIXES, read_mask
from pneumoseg.util.paths import is_valid_uid, one_line, safe_name

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGES_DIR",
    "INPUT_SUFFIXES",
    "MASKS_DIR",
    "PngPairs",
    "dicom_image_id",
    "find_dicoms",
    "find_png_pairs",
    "is_dicom_name",
    "iter_files",
    "match_label",
    "read_layout_mask",
]

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
"""Suffixes (compared in lower case) of the files read as DICOM."""
INPUT_SUFFIXES: tuple[str, ...] = DICOM_SUFFIXES + IMAGE_SUFFIXES
"""Suffixes of the files ``predict`` and ``--browse`` take: DICOM, PNG, JPEG."""
IMAGES_DIR = "images"
"""PNG layout: the images, ``DIR/images/<name>.(png|jpg|jpeg)``."""
MASKS_DIR = "masks"
"""PNG layout: the ground truth of image ``<name>``, ``DIR/masks/<name>.png``."""


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


@dataclass(frozen=True)
class PngPairs:
    """The PNG layout of a folder, paired by file stem.

    ``images``: image_id (the stem, ``paths.safe_name``) -> image file; ``masks``: image_id -> mask, for
    the images that have one; ``orphans``: stems of masks without an image (sorted); ``failures``: one
    line per image left out (a stem that cannot name a file, or one already taken in sorted order).
    """

    root: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    orphans: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def masks_dir(self) -> Path:
        return self.root / MASKS_DIR


def find_png_pairs(png_dir: str | os.PathLike[str]) -> PngPairs:
    """The images of ``png_dir/images/`` (suffix in ``IMAGE_SUFFIXES``, any case) and their masks
    ``png_dir/masks/<stem>.png``. DataError when the folder, its ``images/`` or any image is missing."""
    root = Path(png_dir)
    if not root.is_dir():
        raise DataError(f"{root}: PNG folder not found (or not a folder)")
    images_dir, masks_dir = root / IMAGES_DIR, root / MASKS_DIR
    if not images_dir.is_dir():
        raise DataError(f"{root}: no {IMAGES_DIR}/ folder (the PNG layout is {IMAGES_DIR}/<name>.png with optional "
                        f"{MASKS_DIR}/<name>.png, 0/255)")
    found = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    images: dict[str, Path] = {}
    failures: list[str] = []
    for path in found:
        try:
            image_id = safe_name(path.stem, path, "file name")
        except DataError as exc:
            failures.append(one_line(str(exc)))
            continue
        if image_id in images:
            failures.append(one_line(f"{path}: duplicate image id {image_id!r} (also {images[image_id]}); left out"))
        else:
            images[image_id] = path
    masks = {p.stem: p for p in sorted(masks_dir.glob("*.png")) if p.is_file()} if masks_dir.is_dir() else {}
    stems = {p.stem for p in found}
    return PngPairs(root, images, {i: p for i, p in masks.items() if i in images},
                    sorted(i for i in masks if i not in stems), failures)


def read_layout_mask(mask_path: str | os.PathLike[str], shape: tuple[int, ...],
                     image: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A ground-truth mask as ``bool (H, W)`` by the one positivity rule (module docstring).

    ``shape``: its image's (H, W); a mask of another size is a DataError naming both files
    (``image``: the image's path, for the message).
    """
    mask = read_mask(mask_path)
    if mask.shape != tuple(shape[:2]):
        raise DataError(f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but image {image or 'its image'} is "
                        f"{shape[0]}x{shape[1]}")
    return mask


def match_label(stem: str, labelled: Container[str], uid: str | None = None) -> tuple[str, str]:
    """``(key, matched_by)`` of an image's label in ``labelled`` (ImageIds of an RLE CSV, mask stems).

    ``uid``: a DICOM's SOPInstanceUID (None for PNG / JPEG). The UID first (``"uid"``), then the
    file ``stem`` (``"stem"``); with neither, ``(uid or stem, "none")``. Names are not checked here.
    """
    if uid is not None and uid in labelled:
        return uid, "uid"
    if stem in labelled:
        return stem, "stem"
    return (stem if uid is None else uid), "none"


def dicom_image_id(uid: str, path: str | os.PathLike[str], labelled: Container[str]) -> tuple[str, str]:
    """``(image_id, matched_by)`` of the DICOM file ``path`` (:func:`match_label`), safe as a file name.

    ``uid`` is the header's SOPInstanceUID (``DicomMeta.image_id``: the stem when the header has
    none). A UID other than the stem must be a valid DICOM UID (a NUL byte, ``/`` or ``..`` is
    refused even when the stem matches), and a stem used as the id must pass ``safe_name``.
    Raises DataError naming ``path``.
    """
    stem = Path(path).stem
    if uid != stem and not is_valid_uid(uid):
        shown = repr(uid[:80] + ("..." if len(uid) > 80 else ""))
        raise DataError(f"{path}: SOPInstanceUID {shown} is not a valid DICOM UID (digits and dots, "
                        "at most 64 characters)")
    image_id, how = match_label(stem, labelled, uid)
    if image_id == stem and not is_valid_uid(stem):
        safe_name(stem, path, "file name")
    return image_id, how
