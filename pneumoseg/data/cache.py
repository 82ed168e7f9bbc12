"""The prepared cache's format on disk: paths, index.csv, cache.json notes, resume records, read_truth.

Layout (written by ``pneumoseg.data.prepare``; see docs/architecture.md)::

    CACHE/images/<image_id>.png   uint8 grayscale, size x size (area interpolation; DICOM JPEGs at least
                                  twice the size are first decoded at a DCT reduction unless
                                  ``exact_decode``: see ``prepare_dicom``)
    CACHE/masks/<image_id>.png    size x size training target (images.resize_mask, ``mask_rule``):
                                  uint8 0/255 (``fraction``, ``any``) or 0..255 covered fraction (``soft``)
    CACHE/truth/<image_id>.png    the ground truth at the source resolution (orig_height x orig_width),
                                  1-bit PNG (0/255 when read): the decoded union mask (DICOM + RLE) or
                                  the source mask re-encoded (PNG); read it with ``read_truth``
    CACHE/index.csv               one row per prepared image, sorted by image_id (INDEX_COLUMNS);
                                  pixel_spacing_mm: mm per source pixel (``pixel_spacing_of``), empty
                                  when unknown (PNG layout, no spacing in the header, older records)
    CACHE/cache.json              {"size", "layout", "mask_rule", "created_by", ...}: marks a pneumoseg cache;
                                  "synthetic": true when the source was written by ``pneumoseg synth``
    CACHE/.parts/rec-*.json       records (index row + input fingerprint) of done items, to resume
    CACHE/.parts/_run.json        the parameters of the run that is filling the cache

Readers go by index.csv: files of images not in it may lie in the folders (an earlier input).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pneumoseg.errors import DataError
from pneumoseg.io.images import read_mask
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.csvsafe import safe_row
from pneumoseg.util.paths import safe_name

__all__ = ["INDEX_COLUMNS", "PARTS", "SUBDIRS", "decode_note", "find_done", "mask_note", "open_cache",
           "output_paths", "read_records", "read_truth", "write_index", "write_records"]

INDEX_COLUMNS = ["image_id", "patient_id", "has_pneumothorax", "mask_area_px", "n_annotations", "sex", "age",
                 "view_position", "source", "orig_height", "orig_width", "matched_by", "pixel_spacing_mm"]


SUBDIRS = ("images", "masks", "truth")


PARTS = ".parts"


_RUN = "_run.json"


_OWNED_FILES = ("index.csv", "cache.json", "splits.csv")  # what --overwrite may delete at the top level


def output_paths(out: Path, image_id: str) -> tuple[Path, Path, Path]:
    """The image, mask and truth PNG of ``image_id`` in the cache ``out``."""
    return tuple(out / sub / f"{image_id}.png" for sub in SUBDIRS)  # type: ignore[return-value]


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if missing; ``{}`` if unreadable or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _params_of(meta: dict[str, Any]) -> dict[str, Any]:
    # Caches from before mask rules were made with the any-rule.
    return {"layout": meta.get("layout", "?"), "size": meta.get("size", "?"), "mask_rule": meta.get("mask_rule", "any")}


def _is_cache(out: Path) -> bool:
    """True if ``out`` is marked as a pneumoseg cache (cache.json by pneumoseg, or a run's .parts/_run.json)."""
    meta = _read_json(out / "cache.json")
    return bool(meta and str(meta.get("created_by", "")).startswith("pneumoseg")) or (out / PARTS / _RUN).is_file()


def _is_blank(out: Path) -> bool:
    """True if ``out`` holds nothing but empty cache sub-folders."""
    return all(p.name in (*SUBDIRS, PARTS) and p.is_dir() and not any(p.iterdir()) for p in out.iterdir())


def _delete_owned(out: Path) -> None:
    """Delete the files a pneumoseg cache owns in ``out`` (nothing else; emptied sub-folders go too)."""
    patterns = [(sub, "*.png") for sub in SUBDIRS] + [(sub, ".*.tmp*") for sub in (*SUBDIRS, PARTS, ".")]
    patterns += [(PARTS, "rec-*.json"), (PARTS, _RUN)]
    for sub, pattern in patterns:
        for path in (out / sub).glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
    for name in _OWNED_FILES:
        (out / name).unlink(missing_ok=True)
    for sub in (*SUBDIRS, PARTS):
        with contextlib.suppress(OSError):  # not empty: it holds someone else's files, which stay
            (out / sub).rmdir()


def open_cache(out: Path, params: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready for a run with ``params``: refuse what is not ours; clean stray temps.

    ``out`` must be new, empty (but for empty cache sub-folders) or a pneumoseg cache. A cache
    made with other params is refused, unless ``overwrite`` (which deletes only its own files).
    A run that was started with other params but recorded nothing does not block.
    """
    if out.is_dir() and any(out.iterdir()) and not _is_cache(out) and not _is_blank(out):
        raise DataError(f"--out {out} is not empty and is not a pneumoseg cache (no cache.json): choose a new "
                        "or empty folder (--overwrite only ever deletes a pneumoseg cache's own files)")
    mismatch = None
    for name in ("cache.json", f"{PARTS}/{_RUN}"):
        meta = _read_json(out / name)
        if meta is None:
            continue
        old = _params_of(meta)
        if name != "cache.json" and not any((out / PARTS).glob("rec-*.json")):
            continue  # an earlier run stopped before recording anything: nothing to protect
        if old != params:
            mismatch = (name, old)
            break
    if mismatch and not overwrite:
        name, old = mismatch
        raise DataError(f"{out} holds a cache with layout {old['layout']!r} at size {old['size']}, mask rule "
                        f"{old['mask_rule']!r} (from {Path(name).name}); this run asks for layout "
                        f"{params['layout']!r} at size {params['size']}, mask rule {params['mask_rule']!r}: "
                        "pass --overwrite to rebuild it, or choose another --out")
    if overwrite and out.is_dir() and _is_cache(out):
        _delete_owned(out)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PARTS / _RUN, json.dumps(params, sort_keys=True))
    for sub in (*SUBDIRS, PARTS):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (out / sub).glob(".*.tmp*"):  # left by a killed run (pneumoseg.util.atomic names)
            tmp.unlink(missing_ok=True)


def read_records(out: Path) -> dict[str, list[dict[str, Any]]]:
    """image_id -> its records (one per run that prepared it) from ``.parts/rec-*.json``."""
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / PARTS).glob("rec-*.json")):
        try:
            chunk = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(chunk, dict):
            continue
        for image_id, record in chunk.items():
            if isinstance(record, dict):
                records.setdefault(image_id, []).append(record)
    return records


def find_done(out: Path, image_id: str, key: str, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The index row of ``image_id`` if one of its records has the input fingerprint ``key`` and its PNGs exist."""
    row = next((r["row"] for r in records.get(image_id, ()) if r.get("key") == key), None)
    if row is None or not all(p.is_file() for p in output_paths(out, image_id)):
        return None
    return row


def write_index(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(safe_row(r) for r in sorted(rows, key=lambda r: r["image_id"]))
    path = out / "index.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def mask_note(rule: str) -> dict[str, str]:
    notes = {"any": "foreground if any covered source pixel is (downscale); nearest (upscale)",
             "fraction": "foreground if >= 50% of the covered source area is (downscale); nearest (upscale)",
             "soft": "covered foreground fraction, round(255 * f) (downscale); nearest (upscale)"}
    fmt = "uint8 0..255 covered fraction PNG" if rule == "soft" else "uint8 0/255 PNG"
    return {"mask_resize": notes[rule], "mask_format": fmt}


def decode_note(exact: bool, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """cache.json's ``image_decode``: the mode asked for and how many images each scale decoded."""
    scales: dict[str, int] = {}
    for row in rows:
        key = str(row.get("decode_scale", "unknown"))  # records of an older pneumoseg have none
        scales[key] = scales.get(key, 0) + 1
    how = ("full decode, then area resize (--exact-decode)" if exact else
           "8-bit grayscale JPEG frames at least twice the size decoded at libjpeg's DCT scale 1/2, 1/4 "
           "or 1/8 (the largest reduction still >= size), then area resize; other files in full")
    return {"mode": "exact" if exact else "reduced", "how": how,
            "images_by_scale": dict(sorted(scales.items()))}


def read_truth(cache: str | os.PathLike[str], image_id: str) -> np.ndarray:
    """The ground truth of ``image_id`` at its source resolution: ``bool (orig_height, orig_width)``.

    Reads ``CACHE/truth/<image_id>.png`` (written by prepare, whatever the training size).
    Raises DataError for an unsafe id, a cache without ``truth/`` (made by an older pneumoseg:
    re-run prepare) or a missing file.
    """
    root = Path(cache)
    safe_name(image_id, root / "truth", "ImageId")
    folder = root / "truth"
    if not folder.is_dir():
        raise DataError(f"{root}: cache made by an older pneumoseg (no truth/ folder with the full-resolution "
                        f"masks): re-run `pneumoseg prepare ... --out {root} --overwrite`")
    path = folder / f"{image_id}.png"
    if not path.is_file():
        raise DataError(f"{path}: ground truth of ImageId {image_id} not found in the cache (re-run prepare)")
    return read_mask(path)


def write_records(out: Path, done: dict[str, dict[str, Any]]) -> None:
    """Record the done items ``{image_id: {"key", "row", "uid", "stat"}}`` in one ``.parts/rec-*.json``
    (durable: written after their PNGs, so a record always names files that exist)."""
    if done:
        name = hashlib.sha1("\n".join(sorted(done)).encode()).hexdigest()[:16]
        atomic_write_text(out / PARTS / f"rec-{name}.json", json.dumps(done, sort_keys=True), durable=True)
