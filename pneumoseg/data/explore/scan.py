"""Walking a dataset into the table: DICOM headers + RLE labels, or the PNG layout's images + masks.

``scan_dataset`` reads each DICOM header (no decoding), checks that pixel data is there and joins
the annotation rows by ImageId (``layouts.dicom_image_id``); ``scan_png`` decodes each image and
mask of the PNG layout. Both return a ``Scan``: a pandas table with one row per usable file
(columns ``METADATA_COLUMNS`` or ``PNG_COLUMNS``; areas in px at the file's Rows x Columns,
``mask_area_mm2`` from ``dicom.pixel_spacing_mm``; ``file`` relative to the dataset root, POSIX),
plus one line per file left out. Nothing here writes a file; ``summary`` and ``figures`` read
these tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pneumoseg.errors import DataError, DicomError, PneumosegError
from pneumoseg.io.dicom.read import pixel_spacing_mm, read_dicom_meta, read_header
from pneumoseg.io.images import read_image
from pneumoseg.io.layouts import dicom_image_id, read_layout_mask
from pneumoseg.io.rle import Annotations
from pneumoseg.util.paths import one_line
from pneumoseg.util.progress import progress_bar

__all__ = ["METADATA_COLUMNS", "PNG_COLUMNS", "Scan", "scan_dataset", "scan_png"]

METADATA_COLUMNS = [
    "image_id", "patient_id", "patient_age", "patient_sex", "modality", "body_part", "view_position",
    "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "transfer_syntax_name",
    "has_pneumothorax", "n_annotations", "n_rle_rows", "mask_area_px", "pixel_spacing_mm", "pixel_spacing_source",
    "mask_area_mm2", "file", "matched_by",
]
PNG_COLUMNS = ["image_id", "rows", "columns", "has_pneumothorax", "n_regions", "mask_area_px", "file", "mask_file"]


_Spacing = tuple[tuple[float, float], str]  # ((row, column) mm, source attribute): dicom.pixel_spacing_mm


def _pixel_data_and_spacing(path: Path) -> tuple[str | None, _Spacing | None]:
    """(why ``path`` has no usable pixel data (missing, truncated) or None, its pixel spacing or None).

    Pixels are not decoded: the whole data set is read with large values deferred (about 1 ms;
    ``read_header``, which also refuses pixel data cut short); ``read_dicom_meta`` stops before the
    pixel data and so cannot tell.
    """
    try:
        ds = read_header(path, pixels=True, defer_size=4096)
    except DicomError as exc:
        return str(exc).removeprefix(f"{path}: "), None
    if "PixelData" not in ds:
        return "DICOM file has no pixel data", None
    try:
        return None, pixel_spacing_mm(ds)
    except Exception:  # a malformed spacing value pydicom cannot convert: spacing unknown, image still usable
        return None, None


def _spacing_columns(area_px: int, spacing: _Spacing | None) -> dict[str, Any]:
    """pixel_spacing_mm (sqrt(row * column)), pixel_spacing_source, mask_area_mm2 (exact: px * row * column)."""
    if spacing is None:
        return {"pixel_spacing_mm": None, "pixel_spacing_source": "", "mask_area_mm2": None}
    (row, col), source = spacing
    return {"pixel_spacing_mm": round(math.sqrt(row * col), 9), "pixel_spacing_source": source,
            "mask_area_mm2": round(area_px * row * col, 6)}


@dataclass
class Scan:
    """What ``scan_dataset`` found.

    ``table``: one row per usable file (``METADATA_COLUMNS``; ``n_rle_rows`` is -1 for an image
    with no annotation row). ``failures``: one line per file left out (unreadable, no pixel data,
    invalid SOPInstanceUID, undecodable RLE row, duplicate image id). ``file_warnings``:
    ``"<file>: warning: <text>"`` lines from the DICOM reader. ``left_out_ids``: ids (or stems)
    of the files left out, so that their annotation rows are not reported as having no file.
    """

    table: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    file_warnings: list[str] = field(default_factory=list)
    left_out_ids: set[str] = field(default_factory=set)


def scan_dataset(files: list[Path], annotations: Annotations, root: Path, progress: bool = True) -> Scan:
    """Read each header, check its pixel data is there and join the annotations (see ``Scan``)."""
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    file_warnings: list[str] = []
    left_out: set[str] = set()
    taken: dict[str, Path] = {}
    with progress_bar(progress, transient=True) as bar:
        for path in bar.track(files, description="reading headers"):
            key = path.stem
            try:
                meta = read_dicom_meta(path)
                key = meta.image_id
                problem, spacing = _pixel_data_and_spacing(path)
                if problem:
                    raise DataError(f"{path}: {problem}")
                key, matched_by = dicom_image_id(meta.image_id, path, annotations)
                if key in taken:
                    raise DataError(f"{path}: duplicate image id {key!r} (also {taken[key]}); left out")
                rows = annotations.get(key)
                n_annotations = annotations.n_annotations(key) if rows else 0
                area = int(np.count_nonzero(annotations.mask(key, meta.rows, meta.columns))) if n_annotations else 0
            except PneumosegError as exc:
                failures.append(one_line(str(exc)))
                left_out.update({path.stem, key})  # its annotation rows, under either name
                continue
            taken[key] = path
            file_warnings += [one_line(f"{path}: warning: {w}") for w in getattr(meta, "warnings", ())]
            records.append({**meta.as_dict(), "image_id": key,
                            "has_pneumothorax": int(n_annotations > 0), "n_annotations": n_annotations,
                            "n_rle_rows": len(rows) if rows else -1, "mask_area_px": area,
                            **_spacing_columns(area, spacing), "file": path.relative_to(root).as_posix(), "matched_by": matched_by})
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    return Scan(table, failures, file_warnings, left_out)


def scan_png(images: dict[str, Path], masks: dict[str, Path], root: Path, progress: bool = True) -> Scan:
    """Decode every image and mask (``PNG_COLUMNS``; paths relative to ``root``); failures as in ``Scan``.

    A mask whose size differs from its image's is a failure naming both files.
    """
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    with progress_bar(progress, transient=True) as bar:
        for image_id, path in bar.track(sorted(images.items()), description="reading images"):
            mask_path = masks.get(image_id)
            try:
                image = read_image(path)
                mask = read_layout_mask(mask_path, image.shape, path) if mask_path else np.zeros(image.shape, bool)
            except PneumosegError as exc:
                failures.append(one_line(str(exc)))
                continue
            area = int(np.count_nonzero(mask))
            n_regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if area else 0
            records.append({"image_id": image_id, "rows": image.shape[0], "columns": image.shape[1],
                            "has_pneumothorax": int(area > 0), "n_regions": int(n_regions), "mask_area_px": area,
                            "file": path.relative_to(root).as_posix(),
                            "mask_file": mask_path.relative_to(root).as_posix() if mask_path else ""})
    return Scan(pd.DataFrame.from_records(records, columns=PNG_COLUMNS), failures)
