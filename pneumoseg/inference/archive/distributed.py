"""Archive prediction on Lightning's prediction loop: sharded over DDP ranks, resumable.

``predict_distributed`` runs ``Trainer.predict`` (``strategy="ddp"`` when there is more than one
process; torchrun / SLURM environments are detected as Lightning does, ``--devices N`` alone
launches N local processes). ``pneumoseg.inference.archive.loop.predict_archive`` calls it only
for more than one process (or a reduced precision); one process runs the same steps without the
engine there. Workers decode; the model runs ``Predictor.probs_at_model_size``; a background
writer applies ``Predictor.finish`` and ``write_outputs`` (the one inference path) and commits
part files (``pneumoseg.inference.archive.writers``); rank 0 merges (``loop.merge_outputs``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from pneumoseg.inference.archive.loop import (
    ArchiveDataset,
    batch_probs,
    make_loader,
    merge_outputs,
    predict_archive,
    start_invocation,
)
from pneumoseg.inference.archive.sources import InputSource
from pneumoseg.inference.archive.writers import ArchiveItem, BackgroundWriter, PartFiles, completed_keys, load_records
from pneumoseg.inference.folder import PredictResult
from pneumoseg.inference.predictor import Predictor
from pneumoseg.util.progress import progress_bar
from pneumoseg.util.quiet import quiet_lightning

__all__ = ["ArchiveDataset", "ArchiveModule", "ArchiveWriter", "merge_outputs", "predict_archive",
           "predict_distributed"]


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
        return _Batch(batch, batch_probs(self.predictor, batch))


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


def predict_distributed(predictor: Predictor, source: InputSource, out: Path, options: Mapping[str, Any], *,
                        input_spec: str = "", submission: str | Path | None = None, devices: int = 1,
                        num_nodes: int = 1, accelerator: str = "auto", precision: str = "32-true", workers: int = 2,
                        overwrite: bool = False, progress: bool = True) -> PredictResult | None:
    """``predict_archive`` on Lightning's predict loop (see there); None on ranks other than 0."""
    with quiet_lightning():  # Lightning's start-up chatter and worker hints off; warnings and errors stay
        strategy = "ddp" if devices * num_nodes > 1 else "auto"
        trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                            precision=precision,  # type: ignore[arg-type]
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, use_distributed_sampler=False, default_root_dir=out,
                            callbacks=[])
        rank = trainer.global_rank
        start_invocation(predictor, out, input_spec, precision, options, overwrite, rank,
                         {"devices": devices, "num_nodes": num_nodes, "world_size": trainer.world_size,
                          "workers": workers, "batch_size": predictor.batch_size})
        dataset = ArchiveDataset(source, out)
        loader = make_loader(dataset, predictor.batch_size, workers)
        with progress_bar(progress and rank == 0) as bar:
            task = bar.add_task("predict", total=None)
            callback = ArchiveWriter(predictor, out, dataset, options,
                                     on_written=lambda n: bar.advance(task, n))
            trainer.callbacks.append(callback)  # type: ignore[attr-defined]
            trainer.predict(ArchiveModule(predictor), dataloaders=loader, return_predictions=False)
        if trainer.global_rank != 0:
            return None
        return merge_outputs(predictor, source, out, options, submission, callback.token)
