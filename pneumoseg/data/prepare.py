"""DICOM + RLE, or PNG image/mask folders -> the resized cache that training reads.

Layout written (see docs/architecture.md)::

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

Image ids (they name files, so they are checked: ``pneumoseg.util.paths``): DICOM files are matched to
their annotation rows by the SOPInstanceUID in the header, else by the file stem
(``layouts.dicom_image_id``; index.csv's ``matched_by`` says which: uid, stem or none); PNG images
by the file stem. A file whose UID is not a valid DICOM UID, or whose stem cannot name a file, is
a failure; the others go on.

Headers are read first (in the worker processes), then items go to the workers in small chunks;
each item is read, decoded, resized and its three PNGs written atomically, one at a time, so
memory does not grow with the number of images and a killed run leaves no half-written file.
After a chunk, one record file lists its done items. Rerunning the same command skips the items
whose record matches the current input (path, file size and mtime, RLE strings, size, mask rule,
decode mode)
and whose PNGs exist, then rewrites index.csv and cache.json; the result is byte-identical to an
uninterrupted run. Workers exit when the process that started them dies, even by ``kill -9``.

An item that cannot be prepared (unreadable file, undecodable RLE, mask/image size mismatch,
unsafe name) is reported in ``PrepareResult.failures`` (one line naming the file or ImageId) and
leaves no files; the others are still prepared. A failed write (read-only, disk full) stops the
run with one DataError line. The output folder must not contain or lie inside an input; it must
be new, empty or a pneumoseg cache. A cache prepared with another size, layout or mask rule is
refused unless ``overwrite=True``, which deletes that cache's own files (and nothing else) first.
Files of images no longer in the input stay on disk but are not in index.csv, which is what
readers go by.

Workers come from a ``forkserver`` (``spawn`` on Windows), which imports ``__main__``: a script
calling these functions with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import hashlib
import io
import json
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumoseg import __version__
from pneumoseg.util.atomic import atomic_write_bytes, atomic_write_text
from pneumoseg.util.csvsafe import safe_row
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.io.images import (
    MASK_RULES,
    encode_bilevel_png,
    encode_png,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
)
from pneumoseg.io.layouts import dicom_image_id, find_dicoms, find_png_pairs, read_layout_mask
from pneumoseg.util.paths import check_output_dir, one_line, os_error_line, safe_name
from pneumoseg.util.progress import progress_bar
from pneumoseg.io.rle import Annotations, read_annotations

__all__ = ["DEFAULT_MASK_RULE", "INDEX_COLUMNS", "SIZES", "PrepareResult", "pixel_spacing_of", "prepare_dicom",
           "prepare_png",
           "read_truth"]

#: Cache sizes: any multiple of 32 (the networks downsample 5 times) from 128 to 1024; 384 and 768 are common.
SIZES = tuple(range(128, 1024 + 1, 32))
#: ``resize_mask`` rule for the training masks (see pneumoseg.io.images.resize_mask). Soft: a model that
#: predicts the covered fraction scores >= 0.99 Dice at the source size after upsampling, the binary
#: fraction rule ~0.97 on thin regions (tests/inference/test_native_resolution.py, docs/metrics.md).
DEFAULT_MASK_RULE = "soft"
INDEX_COLUMNS = ["image_id", "patient_id", "has_pneumothorax", "mask_area_px", "n_annotations", "sex", "age",
                 "view_position", "source", "orig_height", "orig_width", "matched_by", "pixel_spacing_mm"]
_SUBDIRS = ("images", "masks", "truth")
_PARTS = ".parts"
_RUN = "_run.json"
_OWNED_FILES = ("index.csv", "cache.json", "splits.csv")  # what --overwrite may delete at the top level
_MAX_IDS_SHOWN = 5
_HEADER_CHUNK = 32
_WATCH_INTERVAL_S = 0.5


@dataclass
class PrepareResult:
    """What a prepare run did. ``n_skipped``: items already done by an earlier run.

    ``warnings``: run-level lines; ``file_warnings``: ``"<file>: warning: <text>"`` lines from
    the DICOM reader (all one line each, control characters escaped).
    """

    n_done: int
    n_skipped: int
    n_failed: int
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index_path: Path = Path()
    n_positive: int = 0
    cache: Path = Path()
    file_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
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


# ---------------------------------------------------------------- worker side

def _die_with(parent_pid: int) -> None:
    """Exit this worker as soon as ``parent_pid`` (the process running prepare) has gone.

    A forkserver's worker is the child of the forkserver, not of prepare, and it blocks on a
    queue that never closes: without this a ``kill -9`` of prepare leaves the workers and the
    forkserver alive for ever (the forkserver exits once no worker holds its pipe). Linux: a
    pidfd that becomes readable when the parent exits; other POSIX systems: poll its pid every
    0.5 s. PR_SET_PDEATHSIG (Linux) also ends the worker if the forkserver dies.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # prctl(PR_SET_PDEATHSIG, SIGKILL)
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.name != "posix":
        return  # no pidfd, and os.kill(pid, 0) would send CTRL_C_EVENT on Windows
    try:
        fd = os.pidfd_open(parent_pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        fd = -1

    def watch() -> None:
        if fd >= 0:
            select.select([fd], [], [])  # readable once the process has exited
        else:
            while True:
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
                time.sleep(_WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="pneumoseg-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    cv2.setNumThreads(1)  # one process per core; no nested thread pools
    _die_with(parent_pid)


def _outputs(out: Path, image_id: str) -> tuple[Path, Path, Path]:
    return tuple(out / sub / f"{image_id}.png" for sub in _SUBDIRS)  # type: ignore[return-value]


def _scan_headers(paths: list[str]) -> list[tuple[str, str, str]]:
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


def _dicom_row(item: _Item, min_size: int | None) -> _Row:
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


def _png_row(item: _Item, min_size: int | None = None) -> _Row:
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


_Result = tuple[str, str, Any, tuple[str, ...]]  # (status "ok"|"failed", image_id, row or message, warnings)


def _prepare_one(item: _Item, layout: str, out: Path, size: int, rule: str,
                 exact_decode: bool = True) -> _Result:
    """Prepare one item. The mask is at the source size (orig_height x orig_width); the image too,
    unless ``exact_decode`` is False and a reduced JPEG decode applied (``_dicom_row``)."""
    paths = _outputs(out, item.image_id)
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


def _prepare_chunk(items: list[_Item], layout: str, out: Path, size: int, rule: str,
                   exact_decode: bool = True) -> list[_Result]:
    """Prepare ``items``, then record the done ones in one ``.parts/rec-*.json`` (written last)."""
    results = [_prepare_one(it, layout, out, size, rule, exact_decode) for it in items]
    by_id = {it.image_id: it for it in items}
    done = {i: {"key": by_id[i].key, "row": row, "uid": by_id[i].uid, "stat": list(by_id[i].stat)}
            for status, i, row, _ in results if status == "ok"}
    if done:
        name = hashlib.sha1("\n".join(sorted(done)).encode()).hexdigest()[:16]
        atomic_write_text(out / _PARTS / f"rec-{name}.json", json.dumps(done, sort_keys=True), durable=True)
    return results


# ---------------------------------------------------------------- main process: the output folder

def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _check_size(size: int) -> int:
    if size not in SIZES:
        raise DataError(f"size {size} is not supported: choose a multiple of 32 from {SIZES[0]} to {SIZES[-1]} "
                        "(e.g. 256, 384, 512, 768, 1024)")
    return int(size)


def _check_rule(rule: str) -> str:
    if rule not in MASK_RULES:
        raise DataError(f"mask rule {rule!r} is not supported: choose one of {', '.join(MASK_RULES)}")
    return rule


def _check_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (or not a folder)")
    return path.resolve()


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
    return bool(meta and str(meta.get("created_by", "")).startswith("pneumoseg")) or (out / _PARTS / _RUN).is_file()


def _is_blank(out: Path) -> bool:
    """True if ``out`` holds nothing but empty cache sub-folders."""
    return all(p.name in (*_SUBDIRS, _PARTS) and p.is_dir() and not any(p.iterdir()) for p in out.iterdir())


def _delete_owned(out: Path) -> None:
    """Delete the files a pneumoseg cache owns in ``out`` (nothing else; emptied sub-folders go too)."""
    patterns = [(sub, "*.png") for sub in _SUBDIRS] + [(sub, ".*.tmp*") for sub in (*_SUBDIRS, _PARTS, ".")]
    patterns += [(_PARTS, "rec-*.json"), (_PARTS, _RUN)]
    for sub, pattern in patterns:
        for path in (out / sub).glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
    for name in _OWNED_FILES:
        (out / name).unlink(missing_ok=True)
    for sub in (*_SUBDIRS, _PARTS):
        with contextlib.suppress(OSError):  # not empty: it holds someone else's files, which stay
            (out / sub).rmdir()


def _open_cache(out: Path, params: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready for a run with ``params``: refuse what is not ours; clean stray temps.

    ``out`` must be new, empty (but for empty cache sub-folders) or a pneumoseg cache. A cache
    made with other params is refused, unless ``overwrite`` (which deletes only its own files).
    A run that was started with other params but recorded nothing does not block.
    """
    if out.is_dir() and any(out.iterdir()) and not _is_cache(out) and not _is_blank(out):
        raise DataError(f"--out {out} is not empty and is not a pneumoseg cache (no cache.json): choose a new "
                        "or empty folder (--overwrite only ever deletes a pneumoseg cache's own files)")
    mismatch = None
    for name in ("cache.json", f"{_PARTS}/{_RUN}"):
        meta = _read_json(out / name)
        if meta is None:
            continue
        old = _params_of(meta)
        if name != "cache.json" and not any((out / _PARTS).glob("rec-*.json")):
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
    (out / _PARTS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / _PARTS / _RUN, json.dumps(params, sort_keys=True))
    for sub in (*_SUBDIRS, _PARTS):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (out / sub).glob(".*.tmp*"):  # left by a killed run (pneumoseg.util.atomic names)
            tmp.unlink(missing_ok=True)


def _read_records(out: Path) -> dict[str, list[dict[str, Any]]]:
    """image_id -> its records (one per run that prepared it) from ``.parts/rec-*.json``."""
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / _PARTS).glob("rec-*.json")):
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


def _is_done(out: Path, item: _Item, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The index row of ``item`` if a record matches its fingerprint and its PNGs exist."""
    row = next((r["row"] for r in records.get(item.image_id, ()) if r.get("key") == item.key), None)
    if row is None or not all(p.is_file() for p in _outputs(out, item.image_id)):
        return None
    return row


# ---------------------------------------------------------------- main process: workers

def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class _Workers:
    """Worker processes, started on first use (a rerun with nothing to do starts none).

    Forked from a ``forkserver``, not plain ``fork``: forking a process whose native thread pools
    (OpenCV, OpenMP) hold locks deadlocks the child. The server imports this module (and
    ``__main__``) once; each worker is then a cheap fork of it. ``spawn`` where there is no
    forkserver (Windows). Each worker exits when this process dies (``_die_with``).
    """

    def __init__(self, workers: int, n_max: int) -> None:
        self.n = max(1, min(workers, n_max))  # never more processes than files
        self._pool: ProcessPoolExecutor | None = None

    def pool(self, n_items: int) -> ProcessPoolExecutor | None:
        """The pool, or None when one process will do (one worker, or at most one item)."""
        if self._pool is None and self.n > 1 and n_items > 1:
            ctx: Any
            if "forkserver" in mp.get_all_start_methods():
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload([__name__, "pneumoseg.io.dicom.read"])
            else:
                ctx = mp.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_worker_init,
                                             initargs=(os.getpid(),))
        return self._pool if n_items > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _run_chunks(fn: Callable[..., list[Any]], chunks: Iterator[list[Any]], args: tuple[Any, ...],
                pool: ProcessPoolExecutor | None, in_flight: int,
                on_done: Callable[[int], None]) -> Iterator[Any]:
    """``fn(chunk, *args)`` for each chunk, in ``pool`` (or here if None); yield results as chunks finish.

    At most ``in_flight`` chunks are queued at a time: the queue never holds the whole list.
    """
    if pool is None:
        for part in chunks:
            yield from fn(part, *args)
            on_done(len(part))
        return
    running: dict[Future[list[Any]], int] = {}
    try:
        while True:
            while len(running) < in_flight and (part := next(chunks, [])):  # chunks are never empty
                running[pool.submit(fn, part, *args)] = len(part)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                n = running.pop(fut)
                yield from fut.result()
                on_done(n)
    except BaseException:
        for fut in running:
            fut.cancel()
        raise


def _write_index(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(safe_row(r) for r in sorted(rows, key=lambda r: r["image_id"]))
    path = out / "index.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def _few(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return ", ".join(ids[:_MAX_IDS_SHOWN]) + more


def _mask_note(rule: str) -> dict[str, str]:
    notes = {"any": "foreground if any covered source pixel is (downscale); nearest (upscale)",
             "fraction": "foreground if >= 50% of the covered source area is (downscale); nearest (upscale)",
             "soft": "covered foreground fraction, round(255 * f) (downscale); nearest (upscale)"}
    fmt = "uint8 0..255 covered fraction PNG" if rule == "soft" else "uint8 0/255 PNG"
    return {"mask_resize": notes[rule], "mask_format": fmt}


def _decode_note(exact: bool, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
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


@dataclass
class _Run:
    """One prepare run's settings and what it has found so far."""

    layout: str
    out: Path
    size: int
    rule: str
    workers: _Workers
    bar: Any
    exact_decode: bool = True
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def prepare(self, items: list[_Item], records: dict[str, list[dict[str, Any]]],
                info: dict[str, Any]) -> PrepareResult:
        rows: dict[str, dict[str, Any]] = {}
        pending: list[_Item] = []
        for item in items:
            done = _is_done(self.out, item, records)
            if done is None:
                pending.append(item)
            else:
                rows[item.image_id] = {**done, "matched_by": item.matched_by}
        n_skipped = len(rows)
        file_warnings: list[str] = []
        task = self.bar.add_task(f"prepare {self.layout} -> {self.size}px", total=len(items), completed=n_skipped)
        pool = self.workers.pool(len(pending))
        per_chunk = max(1, min(16, len(pending) // (self.workers.n * 8)))
        for status, image_id, payload, warns in _run_chunks(
                _prepare_chunk, _chunks(pending, 8 if pool is None else per_chunk),
                (self.layout, self.out, self.size, self.rule, self.exact_decode), pool, self.workers.n * 4,
                lambda n: self.bar.advance(task, n)):
            file_warnings += map(one_line, warns)
            if status == "ok":
                rows[image_id] = payload
            else:
                self.failures.append(payload)
        index_path = _write_index(self.out, rows.values())
        n_positive = sum(int(r["has_pneumothorax"]) for r in rows.values())
        if self.layout == "dicom":
            info = {**info, "image_decode": _decode_note(self.exact_decode, rows.values())}
        from pneumoseg.data.synth import is_synthetic_source  # here: synth imports pydicom

        cache_meta = {"size": self.size, "layout": self.layout, "mask_rule": self.rule,
                      "created_by": f"pneumoseg {__version__}", "n_images": len(rows), "n_positive": n_positive,
                      "n_failed": len(self.failures), "image_interpolation": "area", **_mask_note(self.rule),
                      "truth": "truth/<image_id>.png: 1-bit PNG at orig_height x orig_width",
                      "synthetic": is_synthetic_source(info["source_dir"]), **info}
        atomic_write_text(self.out / "cache.json", json.dumps(cache_meta, indent=2, sort_keys=True) + "\n")
        return PrepareResult(n_done=len(rows) - n_skipped, n_skipped=n_skipped, n_failed=len(self.failures),
                             failures=[one_line(f) for f in self.failures],
                             warnings=[one_line(w) for w in self.warnings], index_path=index_path,
                             n_positive=n_positive, cache=self.out, file_warnings=file_warnings)


@contextlib.contextmanager
def _session(layout: str, out: Path, size: int, rule: str, workers: int | None, n_files: int,
             progress: bool, exact_decode: bool = True) -> Iterator[_Run]:
    pool = _Workers(workers if workers is not None else (os.cpu_count() or 1), n_files)
    try:
        with progress_bar(progress) as bar:
            yield _Run(layout, out, size, rule, pool, bar, exact_decode)
    finally:
        pool.close()


def _unique(ids: Iterable[tuple[str, Path]], failures: list[str]) -> dict[str, Path]:
    """image_id -> file; a second file with an id already taken is a failure."""
    by_id: dict[str, Path] = {}
    for image_id, path in ids:
        if image_id in by_id:
            failures.append(f"{path}: duplicate image id {image_id!r} (also {by_id[image_id]}); skipped")
        else:
            by_id[image_id] = path
    return by_id


def _header_uids(run: _Run, files: list[Path], records: dict[str, list[dict[str, Any]]]) -> dict[Path, str]:
    """File -> SOPInstanceUID (or stem) of each readable header; unreadable files become failures.

    Files recorded by an earlier run with the same size and mtime are not read again.
    """
    known = {(r["row"].get("source"), tuple(r.get("stat", ()))): r["uid"]
             for recs in records.values() for r in recs if isinstance(r.get("row"), dict) and r.get("uid")}
    uids: dict[Path, str] = {}
    todo: list[str] = []
    for path in files:
        uid = known.get((str(path), _stat(path)))
        if uid is None:
            todo.append(str(path))
        else:
            uids[path] = uid
    task = run.bar.add_task("reading headers", total=len(todo))
    pool = run.workers.pool(len(todo))
    per_chunk = max(1, min(_HEADER_CHUNK, len(todo) // (run.workers.n * 4)))
    for path, uid, error in _run_chunks(_scan_headers, _chunks(todo, per_chunk), (), pool,
                                        run.workers.n * 4, lambda n: run.bar.advance(task, n)):
        if error:
            run.failures.append(error)
        else:
            uids[Path(path)] = uid
    return uids


def prepare_dicom(dicom_dir: str | os.PathLike[str], rle_csv: str | os.PathLike[str],
                  out: str | os.PathLike[str], size: int = 512, workers: int | None = None,
                  progress: bool = True, overwrite: bool = False,
                  mask_rule: str = DEFAULT_MASK_RULE, exact_decode: bool = False) -> PrepareResult:
    """Prepare ``dicom_dir/**/*.dcm`` (and ``*.dicom``: ``layouts.find_dicoms``) with masks from ``rle_csv``
    (see the module docstring).

    image_id: the header's SOPInstanceUID, or the file stem when only that has annotation rows.
    An image without an annotation row is healthy (one warning gives the count); annotation
    ImageIds without a file are listed in one warning. ``workers``: processes (default: all cores).
    ``mask_rule``: how the training masks are downscaled (``images.MASK_RULES``).
    ``exact_decode``: decode every image in full before the area resize. By default an 8-bit grayscale
    JPEG image at least twice the cache size is decoded at libjpeg's largest DCT reduction (1/2, 1/4,
    1/8) still >= ``size`` (``read_dicom``'s ``min_size``), then resized the same way: ~1.5x faster
    to decode; at 256 px from 1024 the images differ from the exact path by ~0.06 grey levels on
    average and at most 2 (the 12 real files; docs/data.md). cache.json's
    ``image_decode`` records the mode and the images per scale; a rerun with the other mode redoes
    every image.
    """
    size, rule = _check_size(size), _check_rule(mask_rule)
    src = _check_dir(Path(dicom_dir), "DICOM folder")
    out = check_output_dir(out, [src, rle_csv], create=False)
    ann = read_annotations(rle_csv)
    files = find_dicoms(src)
    check_output_dir(out)
    _open_cache(out, {"layout": "dicom", "size": size, "mask_rule": rule}, overwrite)
    records = _read_records(out)
    with _session("dicom", out, size, rule, workers, len(files), progress, exact_decode) as run:
        run.warnings += ann.warnings()
        uids = _header_uids(run, files, records)
        matched: list[tuple[str, Path]] = []
        how: dict[str, str] = {}
        for path, uid in sorted(uids.items()):  # duplicates: the first path keeps the id
            try:
                image_id, how_matched = dicom_image_id(uid, path, ann)
            except DataError as exc:
                run.failures.append(str(exc))
                continue
            matched.append((image_id, path))
            how.setdefault(image_id, how_matched)
        by_id = _unique(sorted(matched), run.failures)
        # Rows of files that failed (unreadable, unsafe UID, duplicate) are not rows "without a file".
        seen = {p.stem for p in files} | set(uids.values())
        _label_warnings(run, by_id, how, ann, src, seen)
        items = []
        for image_id, path in sorted(by_id.items()):
            rles, rows = tuple(ann.get(image_id, ())), tuple(ann.rows.get(image_id, ()))
            stat = _stat(path)
            # The exact path keeps the key of earlier versions (their caches resume with --exact-decode).
            mode = () if exact_decode else ("reduced",)
            key = _fingerprint("dicom", size, rule, str(path), stat, rles, *mode)
            items.append(_Item(image_id, str(path), key, how[image_id], stat, uid=uids[path], rles=rles,
                               rows=rows, rle_csv=str(ann.source)))
        info = {"source_dir": str(src), "annotations": str(Path(ann.source).resolve())}
        return run.prepare(items, records, info)


def _label_warnings(run: _Run, by_id: dict[str, Path], how: dict[str, str], ann: Annotations, src: Path,
                    seen: set[str]) -> None:
    unannotated = [i for i in by_id if i not in ann]
    if unannotated:
        run.warnings.append(f"{len(unannotated)} image(s) have no row in {ann.source}: treated as healthy "
                            f"(no pneumothorax): {_few(unannotated)}")
    by_stem = [i for i in by_id if how[i] == "stem"]
    if by_stem:
        run.warnings.append(f"{len(by_stem)} image(s) matched to their annotation rows by file name, not by "
                            f"the SOPInstanceUID in the header (index.csv: matched_by=stem): {_few(by_stem)}")
    orphans = [i for i in ann if i not in by_id and i not in seen]
    if orphans:
        run.warnings.append(f"{len(orphans)} annotated ImageId(s) in {ann.source} have no DICOM file under "
                            f"{src}: {_few(orphans)}")


def prepare_png(png_dir: str | os.PathLike[str], out: str | os.PathLike[str], size: int = 512,
                workers: int | None = None, progress: bool = True, overwrite: bool = False,
                mask_rule: str = DEFAULT_MASK_RULE) -> PrepareResult:
    """Prepare ``png_dir/images/*`` with ``png_dir/masks/<same stem>.png`` (0/255) masks.

    image_id = file stem (it must pass ``paths.safe_name``); there are no patient ids (each
    image is its own group when splitting) and no annotation rows: ``n_annotations`` is the
    number of 8-connected regions of the mask. An image without a mask is healthy (one warning);
    a mask without an image is reported in one warning; a mask whose size differs from its
    image's is a failure naming both files.

    A folder with no ``masks/`` (or no mask in it) is refused with one DataError line, before
    anything is written, not prepared with a warning: the cache is training and evaluation data,
    where an image without a mask is a negative, so an unlabelled set would silently become an
    all-healthy one (a model trained on it learns to predict nothing; scored on it, predicting
    nothing looks perfect). ``--dicom-dir`` without ``--rle`` is refused for the same reason;
    segmenting unlabelled images is ``pneumoseg predict``'s job.
    """
    size, rule = _check_size(size), _check_rule(mask_rule)
    src = _check_dir(Path(png_dir), "PNG folder")
    out = check_output_dir(out, [src], create=False)
    pairs = find_png_pairs(src)
    images_dir, masks_dir = pairs.images_dir, pairs.masks_dir
    if not masks_dir.is_dir() or not any(masks_dir.glob("*.png")):
        raise DataError(f"{masks_dir}: no masks (<name>.png, 0/255; all zero for an image without pneumothorax): "
                        "without labels every image would be prepared as healthy; to segment unlabelled images "
                        f"use `pneumoseg predict RUN {images_dir} --out DIR`")
    check_output_dir(out)
    _open_cache(out, {"layout": "png", "size": size, "mask_rule": rule}, overwrite)
    records = _read_records(out)
    with _session("png", out, size, rule, workers, len(pairs.images), progress) as run:
        run.failures += pairs.failures
        files, masks = pairs.images, pairs.masks
        unmasked = [i for i in files if i not in masks]
        if unmasked:
            run.warnings.append(f"{len(unmasked)} image(s) have no mask in {masks_dir}: treated as healthy "
                                f"(no pneumothorax): {_few(unmasked)}")
        orphans = pairs.orphans
        if orphans:
            run.warnings.append(f"{len(orphans)} mask(s) in {masks_dir} have no image in {images_dir}: "
                                f"{_few(orphans)}")
        items = []
        for image_id, path in sorted(files.items()):
            mask = masks.get(image_id)
            stat = _stat(path)
            key = _fingerprint("png", size, rule, str(path), stat, str(mask or ""), _stat(mask) if mask else [])
            items.append(_Item(image_id, str(path), key, "stem" if mask else "none", stat,
                               mask_source=str(mask or "")))
        return run.prepare(items, records, {"source_dir": str(src)})


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
