"""prepare's per-image work, run in the worker processes: read, decode, resize, encode, write, record.

Each item is read, decoded, resized and its three PNGs written atomically, one at a time, so memory
does not grow with the number of images and a killed run leaves no half-written file. After a
chunk, one record file lists its done items (``pneumoseg.data.cache.write_records``). An item that
cannot be prepared gives one failure line naming its file or ImageId and leaves no files; a failed
write (read-only, disk full) stops the run with one DataError line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumoseg.data.cache import INDEX_COLUMNS, output_paths, write_records
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.io.images import encode_bilevel_png, encode_png, read_image, resize_image, resize_mask
from pneumoseg.io.layouts import read_layout_mask
from pneumoseg.io.rle import Annotations
from pneumoseg.util.atomic import atomic_write_bytes
from pneumoseg.util.paths import os_error_line

__all__ = ["Item", "Result", "pixel_spacing_of", "prepare_chunk", "prepare_one", "scan_headers"]


@dataclass(frozen=True)
class Item:
    """One image to prepare; small and picklable (sent to a worker)."""

    image_id: str
    source: str
    key: str
    matched_by: str
    stat: tuple[int, int]
    uid: str = ""  # DICOM layout: the header's SOPInstanceUID (or stem), recorded to skip re-reading it
    mask_source: str = ""  # PNG layout: the mask file ("" = no mask: healthy)
    rles: tuple[str, ...] = ()  # DICOM layout: the image's RLE rows
    rows: tuple[int, ...] = ()
    rle_csv: str = ""


def scan_headers(paths: list[str]) -> list[tuple[str, str, str]]:
    """``(path, SOPInstanceUID or stem, "")`` per readable header, ``(path, "", error line)`` otherwise."""
    from pneumoseg.io.dicom.read import read_dicom_meta  # imported here: pydicom only where DICOMs are read

    out = []
    for path in paths:
        try:
            out.append((path, read_dicom_meta(path).image_id, ""))
        except PneumosegError as exc:
            out.append((path, "", str(exc)))
        except Exception as exc:  # a pydicom surprise on hostile bytes: this file fails, not the run
            out.append((path, "", f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})"))
    return out


def pixel_spacing_of(path: str | os.PathLike[str]) -> float | None:
    """Pixel spacing in mm of a DICOM file for areas (``mm² = px * spacing**2``), or None when unknown
    (``pneumoseg.io.dicom.read.DicomMeta.pixel_spacing_mm``; an unreadable header gives None)."""
    from pneumoseg.io.dicom.read import read_dicom_meta  # imported here: pydicom only where DICOMs are read

    try:
        return read_dicom_meta(path).pixel_spacing_mm
    except PneumosegError:
        return None


_Row = tuple[np.ndarray, np.ndarray, dict[str, Any], tuple[str, ...]]  # image, mask, index fields, warnings


def _dicom_row(item: Item, min_size: int | None) -> _Row:
    """(image, mask at the source's Rows x Columns, index fields, warnings). ``min_size``: the cache
    size for ``read_dicom``'s reduced JPEG decode (the image may then be smaller than the mask), or
    None for the full decode."""
    from pneumoseg.io.dicom.read import read_dicom

    dcm = read_dicom(item.source, min_size=min_size)
    height, width = dcm.meta.rows, dcm.meta.columns  # the source's size, whatever the decode scale
    ann = Annotations(item.rle_csv)
    for rle, line in zip(item.rles, item.rows, strict=True):
        ann.add(item.image_id, rle, line)
    mask = ann.mask(item.image_id, height, width) if item.rles else np.zeros((height, width), dtype=bool)
    meta = dcm.meta
    row = {"patient_id": meta.patient_id or "", "n_annotations": ann.n_annotations(item.image_id),
           "sex": meta.patient_sex or "", "age": "" if meta.patient_age is None else int(meta.patient_age),
           "view_position": meta.view_position or ""}
    spacing = meta.pixel_spacing_mm  # from the header read_dicom parsed: no second read
    row["pixel_spacing_mm"] = "" if spacing is None else spacing
    row["decode_scale"] = dcm.decode_scale
    return dcm.pixels, mask, row, tuple(getattr(meta, "warnings", ()))


def _png_row(item: Item, min_size: int | None = None) -> _Row:
    """As ``_dicom_row`` for the PNG layout; ``min_size`` is unused (PNGs are always read in full)."""
    image = read_image(item.source)
    if item.mask_source:
        mask = read_layout_mask(item.mask_source, image.shape, item.source)
    else:
        mask = np.zeros(image.shape, dtype=bool)
    # No annotation rows in this layout: count the mask's 8-connected regions instead.
    n_regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if mask.any() else 0
    row = {"patient_id": "", "n_annotations": int(n_regions), "sex": "", "age": "", "view_position": "",
           "pixel_spacing_mm": ""}
    return image, mask, row, ()


Result = tuple[str, str, Any, tuple[str, ...]]  # (status "ok"|"failed", image_id, row or message, warnings)


def prepare_one(item: Item, layout: str, out: Path, size: int, rule: str,
                 exact_decode: bool = True) -> Result:
    """Prepare one item. The mask is at the source size (orig_height x orig_width); the image too,
    unless ``exact_decode`` is False and a reduced JPEG decode applied (``_dicom_row``)."""
    paths = output_paths(out, item.image_id)
    try:
        image, mask, extra, warns = (_dicom_row if layout == "dicom" else _png_row)(
            item, None if exact_decode else size)
        row = {"image_id": item.image_id, **extra, "has_pneumothorax": int(mask.any()),
               "mask_area_px": int(np.count_nonzero(mask)), "source": item.source,
               "orig_height": int(mask.shape[0]), "orig_width": int(mask.shape[1]),
               "matched_by": item.matched_by}
        # index.csv's columns, plus the decode scale the records keep for cache.json's count
        row = {**{c: row[c] for c in INDEX_COLUMNS}, "decode_scale": int(extra.get("decode_scale", 1))}
        blobs = (encode_png(resize_image(image, size)), encode_png(resize_mask(mask, size, rule=rule)),  # type: ignore[arg-type]
                 encode_bilevel_png(mask))
    except Exception as exc:  # a bad item is reported; the rest go on
        msg = str(exc) if isinstance(exc, PneumosegError) else f"{type(exc).__name__}: {exc}"
        if item.source not in msg and Path(item.source).name not in msg and item.image_id not in msg:
            msg = f"{item.source}: {msg}"
        return "failed", item.image_id, msg, ()
    try:
        for path, blob in zip(paths, blobs, strict=True):
            atomic_write_bytes(path, blob)
    except OSError as exc:  # read-only, disk full: every item would fail the same way; stop the run
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise DataError(os_error_line(exc)) from None
    return "ok", item.image_id, row, tuple(f"{item.source}: warning: {w}" for w in warns)


def prepare_chunk(items: list[Item], layout: str, out: Path, size: int, rule: str,
                   exact_decode: bool = True) -> list[Result]:
    """Prepare ``items``, then record the done ones in one ``.parts/rec-*.json`` (written last)."""
    results = [prepare_one(it, layout, out, size, rule, exact_decode) for it in items]
    by_id = {it.image_id: it for it in items}
    write_records(out, {i: {"key": by_id[i].key, "row": row, "uid": by_id[i].uid, "stat": list(by_id[i].stat)}
                        for status, i, row, _ in results if status == "ok"})
    return results
