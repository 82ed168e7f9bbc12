"""``pneumoseg serve RUN --browse DIR``: the DICOM / PNG files under a folder, predicted on demand.

Files are listed once at start (recursive, sorted by relative path, at most ``max_files``).
A name from a request is only ever used relative to the folder: it must be a listed relative
POSIX path; ``(root / name).resolve()`` must still lie inside ``root.resolve()`` (symbolic links
leading out are refused) and be a regular file. Ground truth comes from ``--truth train-rle.csv``
(``pneumoseg.io.rle.read_annotations``; keyed by the ImageId: SOPInstanceUID for DICOM, file stem
for PNG) or, in the PNG layout, from ``DIR/masks/<stem>.png`` (``pneumoseg.io.layouts.read_layout_mask``:
the positivity rule prepare, explore and evaluate read masks by; a 0/1 mask is positive); the
``masks`` folder is then left out of the list.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pneumoseg.errors import ConfigError, DataError
from pneumoseg.inference.inputs import InputImage
from pneumoseg.io.layouts import INPUT_SUFFIXES, MASKS_DIR, match_label, read_layout_mask
from pneumoseg.io.rle import Annotations, read_annotations

__all__ = ["MASKS_DIR", "BrowseFolder", "BrowseNameError"]



class BrowseNameError(DataError):
    """A requested name that is not one of the listed files (HTTP 404)."""


@dataclass(frozen=True)
class _Listing:
    names: tuple[str, ...]
    truncated: bool


class BrowseFolder:
    """The listed files of ``root``, their ground truth, and which stored result each one has."""

    def __init__(self, root: str | os.PathLike[str], truth_csv: str | os.PathLike[str] | None = None,
                 max_files: int = 10_000) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"--browse {self.root}: not a folder")
        self._real_root = self.root.resolve()
        self.masks_dir = self._real_root / MASKS_DIR
        self.has_png_masks = self.masks_dir.is_dir()
        self.annotations: Annotations | None = read_annotations(truth_csv) if truth_csv is not None else None
        self.truth_csv = None if truth_csv is None else Path(truth_csv)
        listing = self._scan(max_files)
        self.names = listing.names
        self.truncated = listing.truncated
        self.max_files = max_files
        self._index = {n: i for i, n in enumerate(self.names)}
        self._results: dict[str, str] = {}
        self._lock = threading.Lock()

    def _scan(self, max_files: int) -> _Listing:
        """Relative POSIX paths of DICOM / PNG / JPEG files under the root, sorted, capped."""
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self._real_root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and not (self.has_png_masks and here / d == self.masks_dir))
            for f in filenames:
                if f.startswith(".") or not f.lower().endswith(INPUT_SUFFIXES):
                    continue
                path = here / f
                if path.is_file() and self._inside(path.resolve()):
                    found.append(path.relative_to(self._real_root).as_posix())
        found.sort()
        return _Listing(tuple(found[:max_files]), len(found) > max_files)

    def _inside(self, path: Path) -> bool:
        return path == self._real_root or path.is_relative_to(self._real_root)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of a listed name; BrowseNameError otherwise."""
        if name not in self._index:
            raise BrowseNameError(f"{name[:200]!r} is not one of the {len(self.names)} files listed under --browse "
                                  "(names are relative paths as GET /browse lists them)")
        return self._index[name]

    def path(self, name: str) -> Path:
        """The file of a listed ``name``, after ``resolve()`` and a containment check (BrowseNameError)."""
        self.index(name)
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name or "\0" in name:
            raise BrowseNameError(f"{name[:200]!r}: only plain relative paths inside the browsed folder are served")
        path = (self._real_root / pure).resolve()
        if not self._inside(path) or not path.is_file():
            raise BrowseNameError(f"{name[:200]!r} resolves outside the browsed folder or is no longer a file")
        return path

    def truth(self, name: str, image: InputImage) -> tuple[np.ndarray, str] | None:
        """Ground truth of the listed ``name`` decoded as ``image``: (bool (H, W), source) or None."""
        shape = image.pixels.shape
        if self.annotations is not None:
            key, how = match_label(PurePosixPath(name).stem, self.annotations,
                                   image.image_id if image.meta is not None else None)
            if how != "none":
                return self.annotations.mask(key, *shape), f"{self.truth_csv.name if self.truth_csv else 'csv'}"
        if self.has_png_masks:
            mask_path = (self.masks_dir / f"{PurePosixPath(name).stem}.png").resolve()
            if mask_path.is_file() and self._inside(mask_path):
                return read_layout_mask(mask_path, shape, name), f"{MASKS_DIR}/{mask_path.name}"
        return None

    def has_truth_file(self, name: str) -> bool | None:
        """True / False when a PNG-layout mask decides it, None when only the CSV (by ImageId) can tell."""
        if self.has_png_masks and (self.masks_dir / f"{PurePosixPath(name).stem}.png").is_file():
            return True
        return None if self.annotations is not None else False

    def result_id(self, name: str) -> str | None:
        with self._lock:
            return self._results.get(name)

    def remember(self, name: str, result_id: str) -> None:
        with self._lock:
            self._results[name] = result_id
