"""DICOM + RLE, or PNG image/mask folders -> the resized cache that training reads.

Layout written (see docs/architecture.md)::

    CACHE/images/<image_id>.png   uint8 grayscale, size x size (area interpolation)
    CACHE/masks/<image_id>.png    uint8 0/255, size x size (images.resize_mask: any-pixel rule)
    CACHE/index.csv               one row per prepared image, sorted by image_id (INDEX_COLUMNS)
    CACHE/cache.json              {"size", "layout", "created_by", ...}
    CACHE/.parts/rec-*.json       records (index row + input fingerprint) of done items, to resume

Items go to worker processes in small chunks; each item is read, decoded, resized and its two
PNGs written atomically, one at a time, so memory does not grow with the number of images and a
killed run leaves no half-written file. After a chunk, one record file lists its done items.
Rerunning the same command skips the items whose record matches the current input (path, file
size and mtime, RLE strings, size) and whose PNGs exist, then rewrites index.csv and cache.json;
the result is byte-identical to an uninterrupted run.

An item that cannot be prepared (unreadable file, undecodable RLE, mask/image size mismatch) is
reported in ``PrepareResult.failures`` (one line naming the file or ImageId) and leaves no files;
the others are still prepared. A cache prepared with another size or layout is refused unless
``overwrite=True``, which deletes the previous cache's files first. Files of images no longer in
the input stay on disk but are not in index.csv, which is what readers go by.

Workers come from a ``forkserver`` (``spawn`` on Windows), which imports ``__main__``: a script
calling these functions with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumoseg import __version__
from pneumoseg.atomic import atomic_write_text
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.images import read_image, read_mask, resize_image, resize_mask, write_png
from pneumoseg.progress import progress_bar
from pneumoseg.rle import Annotations, read_annotations

__all__ = ["INDEX_COLUMNS", "SIZES", "PrepareResult", "prepare_dicom", "prepare_png"]

SIZES = (256, 512, 1024)
INDEX_COLUMNS = ["image_id", "patient_id", "has_pneumothorax", "mask_area_px", "n_annotations", "sex", "age",
                 "view_position", "source", "orig_height", "orig_width"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PARTS = ".parts"
_RUN = "_run.json"
_MAX_IDS_SHOWN = 5


@dataclass
class PrepareResult:
    """What a prepare run did. ``n_skipped``: items already done by an earlier run."""

    n_done: int
    n_skipped: int
    n_failed: int
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index_path: Path = Path()
    n_positive: int = 0
    cache: Path = Path()


@dataclass(frozen=True)
class _Item:
    """One image to prepare; small and picklable (sent to a worker)."""

    image_id: str
    source: str
    key: str
    mask_source: str = ""  # PNG layout: the mask file ("" = no mask: healthy)
    rles: tuple[str, ...] = ()  # DICOM layout: the image's RLE rows
    rows: tuple[int, ...] = ()
    rle_csv: str = ""


# ---------------------------------------------------------------- worker side (one item at a time)

def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core; no nested thread pools


def _outputs(out: Path, image_id: str) -> tuple[Path, Path]:
    return out / "images" / f"{image_id}.png", out / "masks" / f"{image_id}.png"


def _dicom_row(item: _Item) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from pneumoseg.dicom import read_dicom  # imported here: pydicom only where DICOMs are read

    dcm = read_dicom(item.source)
    height, width = dcm.pixels.shape
    ann = Annotations(item.rle_csv)
    for rle, line in zip(item.rles, item.rows, strict=True):
        ann.add(item.image_id, rle, line)
    mask = ann.mask(item.image_id, height, width) if item.rles else np.zeros((height, width), dtype=bool)
    meta = dcm.meta
    row = {"patient_id": meta.patient_id or "", "n_annotations": ann.n_annotations(item.image_id),
           "sex": meta.patient_sex or "", "age": "" if meta.patient_age is None else int(meta.patient_age),
           "view_position": meta.view_position or ""}
    return dcm.pixels, mask, row


def _png_row(item: _Item) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    image = read_image(item.source)
    if item.mask_source:
        mask = read_mask(item.mask_source)
        if mask.shape != image.shape:
            raise DataError(f"mask {item.mask_source} is {mask.shape[0]}x{mask.shape[1]} but image "
                            f"{item.source} is {image.shape[0]}x{image.shape[1]}")
    else:
        mask = np.zeros(image.shape, dtype=bool)
    # No annotation rows in this layout: count the mask's 8-connected regions instead.
    n_regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if mask.any() else 0
    row = {"patient_id": "", "n_annotations": int(n_regions), "sex": "", "age": "", "view_position": ""}
    return image, mask, row


def _prepare_one(item: _Item, layout: str, out: Path, size: int) -> tuple[str, str, dict[str, Any] | str]:
    image_path, mask_path = _outputs(out, item.image_id)
    try:
        image, mask, extra = (_dicom_row if layout == "dicom" else _png_row)(item)
        row = {"image_id": item.image_id, **extra, "has_pneumothorax": int(mask.any()),
               "mask_area_px": int(np.count_nonzero(mask)), "source": item.source,
               "orig_height": int(image.shape[0]), "orig_width": int(image.shape[1])}
        row = {c: row[c] for c in INDEX_COLUMNS}
        write_png(image_path, resize_image(image, size))
        write_png(mask_path, resize_mask(mask, size))
        return "ok", item.image_id, row
    except Exception as exc:  # a bad item is reported; the rest go on
        for p in (image_path, mask_path):
            p.unlink(missing_ok=True)
        msg = str(exc) if isinstance(exc, PneumosegError) else f"{type(exc).__name__}: {exc}"
        if item.source not in msg and Path(item.source).name not in msg and item.image_id not in msg:
            msg = f"{item.source}: {msg}"
        return "failed", item.image_id, msg


def _prepare_chunk(items: list[_Item], layout: str, out: Path, size: int) -> list[tuple[str, str, Any]]:
    """Prepare ``items``, then record the done ones in one ``.parts/rec-*.json`` (written last)."""
    results = [_prepare_one(it, layout, out, size) for it in items]
    keys = {it.image_id: it.key for it in items}
    done = {i: {"key": keys[i], "row": row} for status, i, row in results if status == "ok"}
    if done:
        name = hashlib.sha1("\n".join(sorted(done)).encode()).hexdigest()[:16]
        atomic_write_text(out / _PARTS / f"rec-{name}.json", json.dumps(done, sort_keys=True))
    return results


# ---------------------------------------------------------------- main process

def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _check_size(size: int) -> int:
    if size not in SIZES:
        raise DataError(f"size {size} is not supported: choose one of {', '.join(map(str, SIZES))}")
    return int(size)


def _check_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (or not a folder)")
    return path.resolve()


def _open_cache(out: Path, layout: str, size: int, overwrite: bool) -> None:
    """Refuse a cache of another size/layout (or wipe it with ``overwrite``); clean stray temps."""
    params = {"layout": layout, "size": size}
    for name in ("cache.json", f"{_PARTS}/{_RUN}"):
        meta_path = out / name
        if not meta_path.is_file():
            continue
        try:
            old = json.loads(meta_path.read_text())
            old = {"layout": old.get("layout"), "size": old.get("size")}
        except (OSError, ValueError, AttributeError):
            old = {"layout": "?", "size": "?"}
        if old != params and not overwrite:
            raise DataError(f"{out} holds a cache with layout {old['layout']!r} at size {old['size']} (from "
                            f"{meta_path.name}); this run asks for layout {layout!r} at size {size}: pass "
                            f"--overwrite to rebuild it, or choose another --out")
    if overwrite:
        for sub in ("images", "masks", _PARTS):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("index.csv", "cache.json", "splits.csv"):
            (out / name).unlink(missing_ok=True)
    for sub in ("images", "masks", _PARTS):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (out / sub).glob(".*.tmp*"):  # left by a killed run (pneumoseg.atomic names)
            tmp.unlink(missing_ok=True)
    atomic_write_text(out / _PARTS / _RUN, json.dumps(params, sort_keys=True))


def _read_records(out: Path) -> dict[str, list[dict[str, Any]]]:
    """image_id -> its records (one per run that prepared it) from ``.parts/rec-*.json``."""
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / _PARTS).glob("rec-*.json")):
        try:
            chunk = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for image_id, record in chunk.items():
            records.setdefault(image_id, []).append(record)
    return records


def _is_done(out: Path, item: _Item, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The index row of ``item`` if a record matches its fingerprint and both PNGs exist."""
    row = next((r["row"] for r in records.get(item.image_id, ()) if r.get("key") == item.key), None)
    if row is None or not all(p.is_file() for p in _outputs(out, item.image_id)):
        return None
    return row


def _chunks(items: list[_Item], n: int) -> Iterator[list[_Item]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@contextlib.contextmanager
def _pool(workers: int, n_items: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes (None when one process will do), forked from a ``forkserver``.

    Not plain ``fork``: forking a process whose native thread pools (OpenCV, OpenMP) hold locks
    deadlocks the child. The server imports this module (and ``__main__``) once; each worker is
    then a cheap fork of it. ``spawn`` where there is no forkserver (Windows).
    """
    if workers <= 1 or n_items <= 1:
        yield None
        return
    ctx: Any
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "pneumoseg.dicom"])
    else:
        ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(min(workers, n_items), mp_context=ctx, initializer=_worker_init) as pool:
        yield pool


def _run_items(items: list[_Item], layout: str, out: Path, size: int, pool: ProcessPoolExecutor | None,
               workers: int, on_done: Callable[[int], None]) -> Iterator[tuple[str, str, Any]]:
    """Prepare ``items`` in ``pool`` (or here if None); yield results as chunks finish."""
    if pool is None:
        for part in _chunks(items, 8):
            yield from _prepare_chunk(part, layout, out, size)
            on_done(len(part))
        return
    todo = _chunks(items, max(1, min(16, len(items) // (workers * 8))))
    running: dict[Future[list[tuple[str, str, Any]]], int] = {}
    try:
        while True:
            # Keep a bounded number of chunks in flight: the queue never holds the whole list.
            while len(running) < workers * 4 and (part := next(todo, [])):  # chunks are never empty
                running[pool.submit(_prepare_chunk, part, layout, out, size)] = len(part)
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
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["image_id"]))
    path = out / "index.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def _few(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return ", ".join(ids[:_MAX_IDS_SHOWN]) + more


def _run(items: list[_Item], failures: list[str], warnings: list[str], *, layout: str, out: Path,
         size: int, workers: int | None, progress: bool, info: dict[str, Any]) -> PrepareResult:
    rows: dict[str, dict[str, Any]] = {}
    pending: list[_Item] = []
    records = _read_records(out)
    for item in items:
        done = _is_done(out, item, records)
        if done is None:
            pending.append(item)
        else:
            rows[item.image_id] = done
    n_skipped = len(rows)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    with (_pool(workers, len(pending)) as pool,
          progress_bar(progress) as bar):
        task = bar.add_task(f"prepare {layout} -> {size}px", total=len(items), completed=n_skipped)
        for status, image_id, payload in _run_items(pending, layout, out, size, pool, workers,
                                                    lambda n: bar.advance(task, n)):
            if status == "ok":
                rows[image_id] = payload
            else:
                failures.append(payload)
    index_path = _write_index(out, rows.values())
    n_positive = sum(int(r["has_pneumothorax"]) for r in rows.values())
    cache_meta = {"size": size, "layout": layout, "created_by": f"pneumoseg {__version__}",
                  "n_images": len(rows), "n_positive": n_positive, "n_failed": len(failures),
                  "image_interpolation": "area", "mask_resize": "any source pixel (downscale)",
                  "mask_format": "uint8 0/255 PNG", **info}
    atomic_write_text(out / "cache.json", json.dumps(cache_meta, indent=2, sort_keys=True) + "\n")
    return PrepareResult(n_done=len(rows) - n_skipped, n_skipped=n_skipped, n_failed=len(failures),
                         failures=failures, warnings=warnings, index_path=index_path,
                         n_positive=n_positive, cache=out)


def _dedupe(paths: list[Path], failures: list[str]) -> dict[str, Path]:
    by_id: dict[str, Path] = {}
    for p in sorted(paths):
        if p.stem in by_id:
            failures.append(f"{p}: duplicate image id {p.stem!r} (also {by_id[p.stem]}); skipped")
        else:
            by_id[p.stem] = p
    return by_id


def prepare_dicom(dicom_dir: str | os.PathLike[str], rle_csv: str | os.PathLike[str],
                  out: str | os.PathLike[str], size: int = 512, workers: int | None = None,
                  progress: bool = True, overwrite: bool = False) -> PrepareResult:
    """Prepare ``dicom_dir/**/*.dcm`` (image_id = file stem) with masks from ``rle_csv``.

    An image without an annotation row is healthy (one warning gives the count); annotation
    ImageIds without a file are listed in one warning. ``workers``: processes (default: all cores).
    """
    size = _check_size(size)
    src = _check_dir(Path(dicom_dir), "DICOM folder")
    ann = read_annotations(rle_csv)
    out = Path(out)
    _open_cache(out, "dicom", size, overwrite)
    failures: list[str] = []
    warnings: list[str] = []
    files = _dedupe(list(src.rglob("*.dcm")), failures)
    if not files:
        raise DataError(f"{src}: no *.dcm files found")
    unannotated = [i for i in files if i not in ann]
    if unannotated:
        warnings.append(f"{len(unannotated)} image(s) have no row in {ann.source}: treated as healthy "
                        f"(no pneumothorax): {_few(unannotated)}")
    orphans = [i for i in ann if i not in files]
    if orphans:
        warnings.append(f"{len(orphans)} annotated ImageId(s) in {ann.source} have no DICOM file under "
                        f"{src}: {_few(orphans)}")
    items = []
    for image_id, path in sorted(files.items()):
        rles, rows = tuple(ann.get(image_id, ())), tuple(ann.rows.get(image_id, ()))
        key = _fingerprint("dicom", size, str(path), _stat(path), rles)
        items.append(_Item(image_id, str(path), key, rles=rles, rows=rows, rle_csv=str(ann.source)))
    info = {"source_dir": str(src), "annotations": str(Path(ann.source).resolve())}
    return _run(items, failures, warnings, layout="dicom", out=out, size=size, workers=workers,
                progress=progress, info=info)


def prepare_png(png_dir: str | os.PathLike[str], out: str | os.PathLike[str], size: int = 512,
                workers: int | None = None, progress: bool = True, overwrite: bool = False) -> PrepareResult:
    """Prepare ``png_dir/images/*`` with ``png_dir/masks/<same stem>.png`` (0/255) masks.

    image_id = file stem; there are no patient ids (each image is its own group when splitting) and
    no annotation rows: ``n_annotations`` is the number of 8-connected regions of the mask.
    An image without a mask is healthy (one warning); a mask without an image is reported in one
    warning; a mask whose size differs from its image's is a failure naming both files.
    """
    size = _check_size(size)
    src = _check_dir(Path(png_dir), "PNG folder")
    images_dir = _check_dir(src / "images", "images folder")
    masks_dir = src / "masks"
    out = Path(out)
    _open_cache(out, "png", size, overwrite)
    failures: list[str] = []
    warnings: list[str] = []
    files = _dedupe([p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES], failures)
    if not files:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    masks = {p.stem: p for p in sorted(masks_dir.glob("*.png"))} if masks_dir.is_dir() else {}
    unmasked = [i for i in files if i not in masks]
    if unmasked:
        warnings.append(f"{len(unmasked)} image(s) have no mask in {masks_dir}: treated as healthy "
                        f"(no pneumothorax): {_few(unmasked)}")
    orphans = [i for i in masks if i not in files]
    if orphans:
        warnings.append(f"{len(orphans)} mask(s) in {masks_dir} have no image in {images_dir}: "
                        f"{_few(orphans)}")
    items = []
    for image_id, path in sorted(files.items()):
        mask = masks.get(image_id)
        key = _fingerprint("png", size, str(path), _stat(path), str(mask or ""), _stat(mask) if mask else [])
        items.append(_Item(image_id, str(path), key, mask_source=str(mask or "")))
    return _run(items, failures, warnings, layout="png", out=out, size=size, workers=workers,
                progress=progress, info={"source_dir": str(src)})
