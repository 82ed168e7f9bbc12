"""DICOM + RLE, or PNG image/mask folders -> the resized cache that training reads.

The cache's format is ``pneumoseg.data.cache``'s (images, masks, full-resolution truth, index.csv,
cache.json, resume records); the per-image work is ``pneumoseg.data.prepare_items``'s, run in the
worker processes of ``pneumoseg.data.pool``. This module checks the inputs, matches files to
labels, skips what is done and writes index.csv and cache.json.

Image ids (they name files, so they are checked: ``pneumoseg.util.paths``): DICOM files are matched to
their annotation rows by the SOPInstanceUID in the header, else by the file stem
(``layouts.dicom_image_id``; index.csv's ``matched_by`` says which: uid, stem or none); PNG images
by the file stem. A file whose UID is not a valid DICOM UID, or whose stem cannot name a file, is
a failure; the others go on.

Headers are read first (in the worker processes), then items go to the workers in small chunks
(``prepare_items``: memory does not grow with the number of images; a killed run leaves no
half-written file). Rerunning the same command skips the items whose record matches the current
input (path, file size and mtime, RLE strings, size, mask rule, decode mode) and whose PNGs exist,
then rewrites index.csv and cache.json; the result is byte-identical to an uninterrupted run.
Workers exit when the process that started them dies, even by ``kill -9``.

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
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumoseg import __version__
from pneumoseg.data.cache import decode_note, find_done, mask_note, open_cache, read_records, write_index
from pneumoseg.data.pool import Workers, chunks, run_chunks
from pneumoseg.data.prepare_items import Item, prepare_chunk, scan_headers
from pneumoseg.errors import DataError
from pneumoseg.io.images import MASK_RULES
from pneumoseg.io.layouts import dicom_image_id, find_dicoms, find_png_pairs
from pneumoseg.io.rle import Annotations, read_annotations
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.paths import check_output_dir, one_line
from pneumoseg.util.progress import progress_bar

__all__ = ["DEFAULT_MASK_RULE", "SIZES", "PrepareResult", "prepare_dicom", "prepare_png"]

#: Cache sizes: any multiple of 32 (the networks downsample 5 times) from 128 to 1024; 384 and 768 are common.
SIZES = tuple(range(128, 1024 + 1, 32))
#: ``resize_mask`` rule for the training masks (see pneumoseg.io.images.resize_mask). Soft: a model that
#: predicts the covered fraction scores >= 0.99 Dice at the source size after upsampling, the binary
#: fraction rule ~0.97 on thin regions (tests/inference/test_native_resolution.py, docs/metrics.md).


DEFAULT_MASK_RULE = "soft"


_MAX_IDS_SHOWN = 5


_HEADER_CHUNK = 32


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


def _few(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return ", ".join(ids[:_MAX_IDS_SHOWN]) + more


@dataclass
class _Run:
    """One prepare run's settings and what it has found so far."""

    layout: str
    out: Path
    size: int
    rule: str
    workers: Workers
    bar: Any
    exact_decode: bool = True
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def prepare(self, items: list[Item], records: dict[str, list[dict[str, Any]]],
                info: dict[str, Any]) -> PrepareResult:
        rows: dict[str, dict[str, Any]] = {}
        pending: list[Item] = []
        for item in items:
            done = find_done(self.out, item.image_id, item.key, records)
            if done is None:
                pending.append(item)
            else:
                rows[item.image_id] = {**done, "matched_by": item.matched_by}
        n_skipped = len(rows)
        file_warnings: list[str] = []
        task = self.bar.add_task(f"prepare {self.layout} -> {self.size}px", total=len(items), completed=n_skipped)
        pool = self.workers.pool(len(pending))
        per_chunk = max(1, min(16, len(pending) // (self.workers.n * 8)))
        for status, image_id, payload, warns in run_chunks(
                prepare_chunk, chunks(pending, 8 if pool is None else per_chunk),
                (self.layout, self.out, self.size, self.rule, self.exact_decode), pool, self.workers.n * 4,
                lambda n: self.bar.advance(task, n)):
            file_warnings += map(one_line, warns)
            if status == "ok":
                rows[image_id] = payload
            else:
                self.failures.append(payload)
        index_path = write_index(self.out, rows.values())
        n_positive = sum(int(r["has_pneumothorax"]) for r in rows.values())
        if self.layout == "dicom":
            info = {**info, "image_decode": decode_note(self.exact_decode, rows.values())}
        from pneumoseg.data.synth import is_synthetic_source  # here: synth imports pydicom

        cache_meta = {"size": self.size, "layout": self.layout, "mask_rule": self.rule,
                      "created_by": f"pneumoseg {__version__}", "n_images": len(rows), "n_positive": n_positive,
                      "n_failed": len(self.failures), "image_interpolation": "area", **mask_note(self.rule),
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
    pool = Workers(workers if workers is not None else (os.cpu_count() or 1), n_files,
                   preload=("pneumoseg.data.prepare_items", "pneumoseg.io.dicom.read"))
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
    for path, uid, error in run_chunks(scan_headers, chunks(todo, per_chunk), (), pool,
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
    open_cache(out, {"layout": "dicom", "size": size, "mask_rule": rule}, overwrite)
    records = read_records(out)
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
            items.append(Item(image_id, str(path), key, how[image_id], stat, uid=uids[path], rles=rles,
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
    open_cache(out, {"layout": "png", "size": size, "mask_rule": rule}, overwrite)
    records = read_records(out)
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
            items.append(Item(image_id, str(path), key, "stem" if mask else "none", stat,
                               mask_source=str(mask or "")))
        return run.prepare(items, records, {"source_dir": str(src)})
