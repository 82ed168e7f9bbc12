"""What a model was trained on: ``RUN/provenance.json``, and the words shown beside its output.

``train`` (and ``init_run``) write the record from the config's cache when the run folder is
initialised: where the data came from (``cache.json``'s ``source_dir``, else the cache), whether
it is synthetic (``cache.json``'s ``synthetic``; caches prepared before that key was written are
checked with ``pneumoseg.data.synth.is_synthetic_source`` on their source folder), the cache's
image and positive counts, and the sizes of the splits this run used (its fold's, when K-fold).

Wherever a model's output is shown (viewer, ``/health``, report header, DICOM SEG / SR / SC
series descriptions, ``predictions.csv``, ``manifest.json``) it comes with ``describe_training``
and ``NOT_FOR_CLINICAL_USE``. A run trained before this record existed reads as
``training data unknown``, never as an error. An ensemble is ``synthetic`` when any member is,
else ``unknown`` when any member is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pneumoseg import __version__
from pneumoseg.config import ExperimentConfig
from pneumoseg.errors import DataError
from pneumoseg.util.atomic import atomic_write_text

__all__ = ["DICOM_LO_MAX", "NOT_FOR_CLINICAL_USE", "PROVENANCE_FILE", "Provenance", "build_provenance",
           "describe_training", "read_provenance", "save_provenance", "series_description", "short_notice",
           "training_kind"]

PROVENANCE_FILE = "provenance.json"
NOT_FOR_CLINICAL_USE = "Research software: not for clinical use"
DICOM_LO_MAX = 64  #: characters of a DICOM LO value (SeriesDescription)
TrainingKind = Literal["synthetic", "not synthetic", "unknown"]


@dataclass(frozen=True)
class Provenance:
    """One run's training data. ``synthetic``: True / False, None when unknown (no record, or a
    cache whose origin could not be told). Counts are images; ``splits`` maps train / val / test
    to the number of images of each this run used."""

    synthetic: bool | None
    data_source: str = ""
    cache: str = ""
    layout: str = ""
    n_images: int | None = None
    n_positive: int | None = None
    fold: int | None = None
    splits: dict[str, int] = field(default_factory=dict)
    recorded_by: str = ""
    note: str = ""  #: why something is unknown

    @property
    def kind(self) -> TrainingKind:
        return "unknown" if self.synthetic is None else "synthetic" if self.synthetic else "not synthetic"

    def describe(self) -> str:
        """One line, e.g. ``SYNTHETIC phantoms (not radiographs): 60 images from /x/dicom; train 36 / val 12 / test 12``."""
        if self.synthetic is None and not self.data_source:
            return f"training data unknown ({self.note})" if self.note else "training data unknown"
        what = {"synthetic": "SYNTHETIC phantoms (not radiographs)", "not synthetic": "data not marked synthetic",
                "unknown": "data of unknown origin"}[self.kind]
        count = f"{self.n_images} images" if self.n_images is not None else "images"
        splits = " / ".join(f"{k} {v}" for k, v in self.splits.items())
        fold = f" (fold {self.fold})" if self.fold is not None else ""
        return f"{what}: {count} from {self.data_source}" + (f"; {splits}{fold}" if splits else "")

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, **asdict(self)}


def _cache_meta(cache: Path) -> dict[str, Any]:
    try:
        meta = json.loads((cache / "cache.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def build_provenance(cfg: ExperimentConfig) -> Provenance:
    """The record of a run trained with ``cfg`` (its ``data.cache`` and ``data.fold``); never raises
    for a missing or older cache: what cannot be read stays unknown (``note`` says why)."""
    if cfg.data.cache is None:
        return Provenance(None, note="the config names no data.cache", recorded_by=f"pneumoseg {__version__}")
    cache = Path(cfg.data.cache).resolve()
    meta = _cache_meta(cache)
    source = str(meta.get("source_dir") or cache)
    synthetic = meta.get("synthetic")
    note = ""
    if not isinstance(synthetic, bool):
        from pneumoseg.data.synth import is_synthetic_source  # here: synth imports pydicom

        # A cache prepared before cache.json said: its source folder (when still there) tells.
        synthetic = True if is_synthetic_source(source) else None if not Path(source).is_dir() else False
        note = "" if synthetic is not None else f"{cache / 'cache.json'} does not say and {source} is gone"
    from pneumoseg.data.dataset import split_ids  # here: pandas, torch's Dataset; readers of a run need neither

    splits: dict[str, int] = {}
    try:
        for name in ("train", "val", "test"):
            splits[name] = len(split_ids(cache, name, cfg.data.fold))
    except DataError:
        splits = {}
    n_images, n_positive = meta.get("n_images"), meta.get("n_positive")
    return Provenance(synthetic, source, str(cache), str(meta.get("layout", "")),
                      n_images if isinstance(n_images, int) else None,
                      n_positive if isinstance(n_positive, int) else None,
                      cfg.data.fold, splits, f"pneumoseg {__version__}", note)


def save_provenance(record: Provenance, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/provenance.json`` (atomically); returns its path."""
    path = Path(run_dir) / PROVENANCE_FILE
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2) + "\n")
    return path


def read_provenance(run_dir: str | os.PathLike[str]) -> Provenance:
    """``RUN/provenance.json``; an unknown record (never an error) when absent or unreadable."""
    path = Path(run_dir) / PROVENANCE_FILE
    if not path.is_file():
        return Provenance(None, note=f"{Path(run_dir).name} has no {PROVENANCE_FILE}: trained before "
                                     "pneumoseg recorded it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("format", None)
        return Provenance(**data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return Provenance(None, note=f"{path} is unreadable ({type(exc).__name__})")


def training_kind(records: Sequence[Provenance]) -> TrainingKind:
    """``synthetic`` when any member is, else ``unknown`` when any is (or there is none), else ``not synthetic``."""
    kinds = {r.kind for r in records}
    return "synthetic" if "synthetic" in kinds else "unknown" if "unknown" in kinds or not kinds else "not synthetic"


def describe_training(records: Sequence[Provenance]) -> str:
    """One line for an ensemble: ``trained on synthetic data: ...`` / ``training data unknown: ...``."""
    head = {"synthetic": "Trained on synthetic data", "unknown": "Training data unknown",
            "not synthetic": "Trained on data not marked synthetic"}[training_kind(records)]
    return head + ": " + " | ".join(r.describe() for r in records) if records else head


def short_notice(records: Sequence[Provenance]) -> str:
    """``synthetic training data; not for clinical use`` (or ``training data unknown; ...``,
    ``research use only; ...``): what ``predictions.csv`` and DICOM descriptions carry."""
    words = {"synthetic": "synthetic training data", "unknown": "training data unknown",
             "not synthetic": "research use only"}[training_kind(records)]
    return f"{words}; not for clinical use"


def series_description(what: str, records: Sequence[Provenance]) -> str:
    """A DICOM SeriesDescription (LO, at most 64 characters): ``pneumoseg {what}; {short_notice}``,
    e.g. ``pneumoseg SEG; synthetic training data; not for clinical use``."""
    tail = "; " + short_notice(records)
    return f"pneumoseg {what}"[:DICOM_LO_MAX - len(tail)] + tail
