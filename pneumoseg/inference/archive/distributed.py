"""Archive prediction on Lightning's prediction loop: streamed, sharded over DDP ranks, resumable.

``predict_archive`` runs ``Trainer.predict`` (``strategy="ddp"`` when there is more than one
process; torchrun / SLURM environments are detected as Lightning does, ``--devices N`` alone
launches N local processes). Rank r of W walks the input source and takes positions
i with i % W == r (DataLoader worker k of K then takes every K-th of those), skipping images an
earlier run completed. Workers decode; the model runs ``Predictor.probs_at_model_size``; a
background writer applies ``Predictor.finish`` and ``write_outputs`` (the one inference path)
and commits part files (``pneumoseg.inference.archive.writers``). When every rank is done, rank 0
walks the inputs once more and writes ``predictions.csv`` and the submission in input order; a
duplicate ImageId keeps the first input in that order (the others are reported).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
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
from pneumoseg.util.paths import check_output_dir
from pneumoseg.inference.predictor import ImageOutputs, PredictResult, Predictor, load_input, write_outputs, write_tables
from pneumoseg.util.progress import progress_bar

__all__ = ["ArchiveDataset", "ArchiveModule", "ArchiveWriter", "merge_outputs", "predict_archive"]


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


@dataclass(frozen=True)
class _Batch:
    items: list[ArchiveItem]
    probs: np.ndarray  #: float32 (n, S, S) for the items holding an image, in order


class ArchiveModule(L.LightningModule):
    """Wraps a ``Predictor`` for ``Trainer.predict``: Lightning places its networks on the rank's device."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.nets = nn.ModuleList([net for net, _, _ in predictor.models if isinstance(net, nn.Module)])

    def on_predict_start(self) -> None:
        if self.predictor.backend == "torch":
            self.predictor.device = self.device

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # decoded uint8 images; Predictor moves the resized batch itself

    def predict_step(self, batch: list[ArchiveItem], batch_idx: int) -> _Batch:
        pixels = [it.image.pixels for it in batch if it.image is not None]
        probs = self.predictor.probs_at_model_size(pixels) if pixels else np.zeros((0, 1, 1), np.float32)
        return _Batch(batch, probs)


class ArchiveWriter(BasePredictionWriter):
    """Hands each batch to a ``BackgroundWriter``; at setup, learns the shard and what is already done."""

    def __init__(self, predictor: Predictor, out: Path, dataset: ArchiveDataset, options: Mapping[str, Any],
                 on_written: Any = None) -> None:
        super().__init__(write_interval="batch")
        self.predictor, self.out, self.dataset, self.options = predictor, out, dataset, dict(options)
        self.on_written = on_written
        self.token = ""
        self.writer: BackgroundWriter | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.token = trainer.strategy.broadcast(f"{time.time_ns():020d}", src=0)
        trainer.strategy.barrier("pneumoseg-archive-setup")
        self.dataset.rank, self.dataset.world = trainer.global_rank, trainer.world_size
        self.dataset.skip = frozenset(completed_keys(load_records(self.out), self.out))
        parts = PartFiles(self.out, self.token, trainer.global_rank)
        self.writer = BackgroundWriter(self.predictor, self.out, parts, self.token, self.options,
                                       on_written=self.on_written if trainer.global_rank == 0 else None)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        assert self.writer is not None
        self.writer.submit(prediction.items, prediction.probs)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.writer is not None
        self.writer.close()
        trainer.strategy.barrier("pneumoseg-archive-end")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            self.writer.abort()


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up chatter (GPU available..., worker hints) off; warnings and errors stay."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(does not have many workers|IterableDataset|"
                                    r"GPU available but not used|predict_dataloader|num_nodes|infer the batch indices).*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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


def predict_archive(predictor: Predictor, source: InputSource, out_dir: str | os.PathLike[str], *,
                    input_spec: str = "", submission: str | os.PathLike[str] | None = None, overlays: bool = True,
                    rle_format: Literal["relative", "absolute"] = "relative", dicom_seg: bool = False,
                    dicom_seg_empty: bool = False, dicom_sr: bool = False, dicom_sc: bool = False,
                    devices: int = 1, num_nodes: int = 1, accelerator: str = "auto", precision: str = "32-true",
                    workers: int = 2, overwrite: bool = False, progress: bool = True) -> PredictResult | None:
    """Predict every input of ``source`` into ``out_dir`` (as ``predict_to_folder``), resumably.

    ``source``: a callable returning a fresh iterable of paths per call (``folder_source``,
    ``list_source``, or any generator function). Returns the result on global rank 0, None on the
    other ranks. ``input_spec`` names the input in the manifest (e.g. ``folder:/abs/path``).
    Rerunning into the same ``out_dir`` skips completed images; different settings are refused
    (DataError, one line) unless ``overwrite``. On several nodes ``out_dir`` must be shared.
    """
    out = check_output_dir(out_dir)
    options = {"overlays": overlays, "rle_format": rle_format, "dicom_seg": dicom_seg,
               "dicom_seg_empty": dicom_seg_empty, "dicom_sr": dicom_sr, "dicom_sc": dicom_sc}
    with _quiet_lightning():
        strategy = "ddp" if devices * num_nodes > 1 else "auto"
        trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                            precision=precision,  # type: ignore[arg-type]
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, use_distributed_sampler=False, default_root_dir=out,
                            callbacks=[])
        rank = trainer.global_rank
        settings = run_settings(predictor, input_spec, precision, **options)  # type: ignore[arg-type]
        previous = None if overwrite else check_manifest(out, settings)
        if rank == 0:
            if overwrite:
                clear_outputs(out)
            sweep_temporaries(out, OUTPUT_DIRS)
            record_invocation(out, settings, previous, {"devices": devices, "num_nodes": num_nodes,
                                                        "world_size": trainer.world_size, "workers": workers,
                                                        "batch_size": predictor.batch_size},
                              training_data(predictor))
        dataset = ArchiveDataset(source, out)
        loader = DataLoader(dataset, batch_size=predictor.batch_size, num_workers=workers, collate_fn=_collate)
        with progress_bar(progress and rank == 0) as bar:
            task = bar.add_task("predict", total=None)
            callback = ArchiveWriter(predictor, out, dataset, options,
                                     on_written=lambda n: bar.advance(task, n))
            trainer.callbacks.append(callback)  # type: ignore[attr-defined]
            trainer.predict(ArchiveModule(predictor), dataloaders=loader, return_predictions=False)
        if trainer.global_rank != 0:
            return None
        return merge_outputs(predictor, source, out, options, submission, callback.token)
