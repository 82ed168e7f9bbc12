"""Archive prediction in one process, and what it shares with the Lightning loop (``distributed.py``).

``predict_archive`` is the entry point. One process (``devices * num_nodes == 1``, full precision):
a plain loop here, no Lightning engine: a DataLoader decodes the inputs (``workers`` processes, or
inline with 0), ``Predictor.probs_at_model_size`` runs the model where the predictor was built,
and the same background writer, part files, manifest and final merge as the Lightning loop write
the outputs, so both give byte-identical masks, overlays and CSVs. More processes, or a reduced
``precision``: ``pneumoseg.inference.archive.distributed`` (Lightning's predict loop, DDP).

Position i of the walk is the image's identity for sharding (rank r of W takes i % W == r;
DataLoader worker k of K then every K-th of those) and for the order of the CSVs; images an
earlier run completed are skipped. When every rank is done, rank 0 walks the inputs once more and
writes ``predictions.csv`` and the submission in input order; a duplicate ImageId keeps the first
input in that order (the others are reported).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pneumoseg.errors import PneumosegError
from pneumoseg.inference.archive.manifest import (
    OUTPUT_DIRS,
    check_manifest,
    clear_outputs,
    record_invocation,
    run_settings,
    training_data,
)
from pneumoseg.inference.archive.sources import InputSource
from pneumoseg.inference.archive.writers import (
    ArchiveItem,
    BackgroundWriter,
    PartFiles,
    completed_keys,
    load_records,
    sweep_temporaries,
)
from pneumoseg.inference.folder import ImageOutputs, PredictResult, write_outputs, write_tables
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.util.paths import check_output_dir
from pneumoseg.util.progress import progress_bar

__all__ = ["ArchiveDataset", "batch_probs", "make_loader", "merge_outputs", "needs_engine", "predict_archive",
           "predict_in_process", "start_invocation"]


def _inside(key: str, folder: str) -> bool:
    return key == folder or key.startswith(folder.rstrip(os.sep) + os.sep)


def _load(pos: int, path: Path, key: str, out: str) -> ArchiveItem:
    if _inside(key, out):
        return ArchiveItem(pos, key, str(path), error=f"{path}: lies inside --out {out}; not predicted")
    try:
        return ArchiveItem(pos, key, str(path), image=load_input(path))
    except PneumosegError as exc:
        return ArchiveItem(pos, key, str(path), error=str(exc))
    except OSError as exc:
        return ArchiveItem(pos, key, str(path), error=f"{path}: cannot read ({exc.strerror or exc})")


class ArchiveDataset(IterableDataset):  # type: ignore[type-arg]
    """Decoded inputs of this rank's shard (``rank``, ``world`` and ``skip`` are set before iterating)."""

    def __init__(self, source: InputSource, out: str | os.PathLike[str]) -> None:
        self.source = source
        self.out = os.path.abspath(out)
        self.rank, self.world = 0, 1
        self.skip: frozenset[str] = frozenset()

    def __iter__(self) -> Iterator[ArchiveItem]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for pos, item in enumerate(self.source()):
            if pos % self.world != self.rank or (pos // self.world) % workers != worker:
                continue
            path = Path(item)
            key = os.path.abspath(path)
            if key not in self.skip:
                yield _load(pos, path, key, self.out)


def _collate(items: list[ArchiveItem]) -> list[ArchiveItem]:
    return items


def make_loader(dataset: ArchiveDataset, batch_size: int, workers: int) -> DataLoader:  # type: ignore[type-arg]
    """Batches of ``ArchiveItem`` lists (decoded in ``workers`` processes; 0: in this one)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)


def batch_probs(predictor: Predictor, batch: list[ArchiveItem]) -> np.ndarray:
    """float32 (n, S, S) model-size probabilities of the items holding an image, in order (n may be 0)."""
    pixels = [it.image.pixels for it in batch if it.image is not None]
    return predictor.probs_at_model_size(pixels) if pixels else np.zeros((0, 1, 1), np.float32)


def start_invocation(predictor: Predictor, out: Path, input_spec: str, precision: str, options: Mapping[str, Any],
                     overwrite: bool, rank: int, invocation: Mapping[str, Any]) -> None:
    """Check the folder's manifest against these settings (every rank); rank 0 then records this run.

    DataError (one line) when ``out`` was predicted with other settings and not ``overwrite``.
    Rank 0 removes the old outputs (``overwrite``) and a killed run's temporaries first.
    """
    settings = run_settings(predictor, input_spec, precision, **options)
    previous = None if overwrite else check_manifest(out, settings)
    if rank == 0:
        if overwrite:
            clear_outputs(out)
        sweep_temporaries(out, OUTPUT_DIRS)
        record_invocation(out, settings, previous, invocation, training_data(predictor))


def merge_outputs(predictor: Predictor, source: InputSource, out: str | os.PathLike[str],
                  options: Mapping[str, Any], submission: str | os.PathLike[str] | None = None,
                  token: str = "") -> PredictResult:
    """Rank 0's last step: the CSVs from every record, in input order; duplicates resolved.

    A duplicate ImageId keeps the first input in order; when the later ones also wrote files
    (another rank, an earlier run), the first is predicted and written again so that the files
    are its own, and files only the others wrote are removed. ``n_resumed`` counts images whose
    record is from an earlier invocation than ``token``.
    """
    out = Path(out)
    records = load_records(out)
    result = PredictResult(out)
    winners: dict[str, tuple[Path, dict[str, Any]]] = {}
    order: list[str] = []
    losers: dict[str, list[dict[str, Any]]] = {}
    for item in source():
        path = Path(item)
        rec = records.get(os.path.abspath(path))
        if rec is None:
            result.failures.append(f"{path}: not predicted (it appeared after this run listed its folder?); "
                                   "rerun to predict it")
            continue
        if rec["status"] != "ok":
            result.failures.append(rec["error"])
            continue
        result.warnings += [f"{path}: warning: {w}" for w in rec["warnings"]]
        image_id = rec["image_id"]
        if image_id in winners:
            result.failures.append(f"{path}: ImageId {image_id} already predicted from {winners[image_id][0]}")
            losers.setdefault(image_id, []).append(rec)
            continue
        winners[image_id] = (path, rec)
        order.append(image_id)
    for image_id, lost in losers.items():
        path, rec = winners[image_id]
        image = load_input(path)
        pred = predictor.predict_batch([image])[0]
        redo = write_outputs(predictor, image, pred, out, **options)
        for extra in {f for r in lost for f in r["files"]} - set(redo.files):
            (out / extra).unlink(missing_ok=True)
        winners[image_id] = (path, {**rec, "row": list(redo.row), "rle": redo.rle, "files": list(redo.files),
                                    "seg": redo.seg, "sr": redo.sr, "sc": redo.sc, "failure": redo.failure})
    rows: list[tuple[object, ...]] = []
    sub_rows: list[tuple[str, str]] = []
    for image_id in order:
        path, rec = winners[image_id]
        row = (rec["row"][0], str(path), *rec["row"][2:])
        result.add(ImageOutputs(row, rec["rle"], tuple(rec["files"]), rec["seg"], rec["sr"], rec["sc"],
                                rec["failure"]))
        result.n_resumed += rec["run"] != token
        rows.append(row)
        sub_rows.append((image_id, rec["rle"]))
    write_tables(result, rows, sub_rows, submission, predictor.notice)
    return result


def predict_in_process(predictor: Predictor, source: InputSource, out: Path, options: Mapping[str, Any], *,
                       input_spec: str = "", submission: str | os.PathLike[str] | None = None, workers: int = 2,
                       overwrite: bool = False, progress: bool = True) -> PredictResult:
    """The archive prediction of ``predict_archive`` in this process, without the Lightning engine."""
    start_invocation(predictor, out, input_spec, "32-true", options, overwrite, 0,
                     {"devices": 1, "num_nodes": 1, "world_size": 1, "workers": workers,
                      "batch_size": predictor.batch_size})
    token = f"{time.time_ns():020d}"
    dataset = ArchiveDataset(source, out)
    dataset.skip = frozenset(completed_keys(load_records(out), out))
    with progress_bar(progress) as bar:
        task = bar.add_task("predict", total=None)
        writer = BackgroundWriter(predictor, out, PartFiles(out, token, 0), token, options,
                                  on_written=lambda n: bar.advance(task, n))
        try:
            for batch in make_loader(dataset, predictor.batch_size, workers):
                writer.submit(batch, batch_probs(predictor, batch))
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return merge_outputs(predictor, source, out, options, submission, token)


def needs_engine(devices: int, num_nodes: int, precision: str) -> bool:
    """Whether ``predict_archive`` runs Lightning's loop: several processes asked for (``devices *
    num_nodes > 1``, or ``WORLD_SIZE`` > 1 under torchrun), or a precision other than ``32-true``."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        world = 1
    return devices * num_nodes > 1 or world > 1 or precision != "32-true"


def predict_archive(predictor: Predictor, source: InputSource, out_dir: str | os.PathLike[str], *,
                    input_spec: str = "", submission: str | os.PathLike[str] | None = None, overlays: bool = True,
                    rle_format: Literal["relative", "absolute"] = "relative", dicom_seg: bool = False,
                    dicom_seg_empty: bool = False, dicom_sr: bool = False, dicom_sc: bool = False,
                    devices: int = 1, num_nodes: int = 1, accelerator: str = "auto", precision: str = "32-true",
                    workers: int = 2, overwrite: bool = False, progress: bool = True,
                    engine: bool | None = None) -> PredictResult | None:
    """Predict every input of ``source`` into ``out_dir`` (as ``predict_to_folder``), resumably.

    ``source``: a callable returning a fresh iterable of paths per call (``folder_source``,
    ``list_source``, or any generator function). Returns the result on global rank 0, None on the
    other ranks. ``input_spec`` names the input in the manifest (e.g. ``folder:/abs/path``).
    Rerunning into the same ``out_dir`` skips completed images; different settings are refused
    (DataError, one line) unless ``overwrite``. On several nodes ``out_dir`` must be shared.

    ``engine``: run Lightning's predict loop (``accelerator``, ``devices``, ``num_nodes``,
    ``precision`` apply); None (default): when :func:`needs_engine` says so (several processes, or
    a precision other than ``32-true``). Without it the predictor runs
    in this process on its own ``device``; the outputs are byte-identical either way.
    """
    out = check_output_dir(out_dir)
    options = {"overlays": overlays, "rle_format": rle_format, "dicom_seg": dicom_seg,
               "dicom_seg_empty": dicom_seg_empty, "dicom_sr": dicom_sr, "dicom_sc": dicom_sc}
    if engine is None:
        engine = needs_engine(devices, num_nodes, precision)
    if not engine:
        return predict_in_process(predictor, source, out, options, input_spec=input_spec, submission=submission,
                                  workers=workers, overwrite=overwrite, progress=progress)
    from pneumoseg.inference.archive.distributed import predict_distributed

    return predict_distributed(predictor, source, out, options, input_spec=input_spec, submission=submission,
                               devices=devices, num_nodes=num_nodes, accelerator=accelerator, precision=precision,
                               workers=workers, overwrite=overwrite, progress=progress)
