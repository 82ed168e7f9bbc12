"""Per-rank part files and the background writer that turns predictions into files off the compute path.

Each rank commits one record per image (JSON lines) to ``OUT/.parts/<token>-r<rank>-<seq>.jsonl``
after that batch's files exist, one part file per batch, each written atomically, so a
``kill -9`` loses at most the batches in flight. Part files are fsync'd with their folder
(``durable``), so a record survives a power loss too; the image files it names are not fsync'd
one by one (that would cost a disk flush per file): after a power loss, the last batches' images
may be empty, and ``--overwrite`` redoes them. At the end of a rank's share its part files are
folded into ``<token>-r<rank>.jsonl``. A record says which files the image produced; a rerun
counts an image as done only when its record is there *and* every file it names exists.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.inference.folder import write_outputs
from pneumoseg.inference.inputs import InputImage
from pneumoseg.inference.predictor import Predictor

__all__ = ["PARTS", "ArchiveItem", "BackgroundWriter", "PartFiles", "completed_keys", "load_records", "sweep_temporaries"]

PARTS = ".parts"


@dataclass(frozen=True)
class ArchiveItem:
    """One streamed input: its ``pos`` in the walk, ``key`` (absolute path), the decoded image or the error line."""

    pos: int
    key: str
    path: str
    image: InputImage | None = None
    error: str | None = None


class PartFiles:
    """The part files of one rank in one invocation (``token``) under ``OUT/.parts``."""

    def __init__(self, out: str | os.PathLike[str], token: str, rank: int) -> None:
        self.folder = Path(out) / PARTS
        self.prefix = f"{token}-r{rank:05d}"
        self.seq = 0

    def commit(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write ``records`` as the next part file (atomically)."""
        if not records:
            return
        self.seq += 1
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        atomic_write_text(self.folder / f"{self.prefix}-{self.seq:08d}.jsonl", text, durable=True)

    def compact(self) -> None:
        """Fold this rank's part files into one (written first; the small ones removed after)."""
        parts = sorted(self.folder.glob(f"{self.prefix}-*.jsonl"))
        if len(parts) < 2:
            return
        atomic_write_text(self.folder / f"{self.prefix}.jsonl", "".join(p.read_text(encoding="utf-8") for p in parts),
                          durable=True)
        for p in parts:
            p.unlink()


def load_records(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every record under ``OUT/.parts`` by key (absolute input path); a later invocation's wins.

    Part files are complete by construction (atomic); temporaries (``.*``) are ignored.
    """
    folder = Path(out) / PARTS
    records: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return records
    for part in sorted(p for p in folder.glob("*.jsonl") if not p.name.startswith(".")):
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                records[record["key"]] = record
    return records


def completed_keys(records: Mapping[str, Mapping[str, Any]], out: str | os.PathLike[str]) -> set[str]:
    """Keys of the images whose outputs are complete: an ``ok`` record and every file it names exists."""
    root = Path(out)
    return {key for key, r in records.items()
            if r["status"] == "ok" and all((root / f).is_file() for f in r["files"])}


def sweep_temporaries(out: str | os.PathLike[str], folders: Iterable[str]) -> int:
    """Remove the atomic writer's leftovers (``.<stem>.<random>.tmp*``) of a killed run; the count."""
    removed = 0
    for name in ("", *folders):
        folder = Path(out) / name
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class BackgroundWriter:
    """A thread that post-processes and writes each batch while the model runs the next.

    ``submit(items, probs)``: ``probs`` float32 (N, S, S) at the model's size for the items that
    hold an image, in order. The thread calls ``predictor.finish`` (upsampling and post-processing
    at the source resolution, the one rule) and ``write_outputs``, then commits the batch's records.
    At most ``max_pending`` batches wait (back-pressure keeps memory flat). An error in the thread
    is raised in the caller at the next ``submit`` or at ``close``.
    """

    def __init__(self, predictor: Predictor, out: str | os.PathLike[str], parts: PartFiles, token: str,
                 options: Mapping[str, Any], max_pending: int = 4,
                 on_written: Callable[[int], None] | None = None) -> None:
        self.predictor = predictor
        self.out = Path(out)
        self.parts = parts
        self.token = token
        self.options = dict(options)
        self.on_written = on_written
        self._queue: queue.Queue[tuple[list[ArchiveItem], np.ndarray] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pneumoseg-writer", daemon=True)
        self._thread.start()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, items: list[ArchiveItem], probs: np.ndarray) -> None:
        """Queue one batch (blocks while ``max_pending`` batches wait)."""
        self._raise()
        self._queue.put((items, probs))

    def close(self) -> None:
        """Write what is queued, stop the thread, fold the part files; raises the thread's error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
        self.parts.compact()

    def abort(self) -> None:
        """Stop after what is queued (on an exception elsewhere); never raises."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _record(self, item: ArchiveItem, prob: np.ndarray | None) -> dict[str, Any]:
        base = {"key": item.key, "path": item.path, "run": self.token}
        if item.image is None or prob is None:
            return {**base, "status": "failed", "error": item.error}
        pred = self.predictor.finish(item.image, prob)
        outputs = write_outputs(self.predictor, item.image, pred, self.out, **self.options)
        warnings = list(item.image.meta.warnings) if item.image.meta is not None else []
        return {**base, "status": "ok", "image_id": pred.image_id, "row": list(outputs.row), "rle": outputs.rle,
                "files": list(outputs.files), "seg": outputs.seg, "sr": outputs.sr, "sc": outputs.sc,
                "failure": outputs.failure, "warnings": warnings}

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the caller will see the error
            items, probs = job
            try:
                good = iter(probs)
                records = [self._record(it, next(good) if it.image is not None else None) for it in items]
                self.parts.commit(records)
                if self.on_written is not None:
                    self.on_written(len(items))
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc
