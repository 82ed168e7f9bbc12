"""K-fold training: one run folder per fold, the folds check, and the resume state of the folds.

Layout of ``OUT`` (``train --folds K`` and a study's K-fold experiments)::

    OUT/fold-<k>/                 a run folder trained with data.fold = k (fold k validates)
    OUT/fold-<k>/.fold-trained    ``train --folds K``'s marker: fold k's training finished (``FoldMarkers``)

A fold's training is named by its stage, ``train-<k>`` (``fold_stage``), in the markers here and in a
study's ``study.json``. A fold whose training was killed resumes from its ``last.ckpt`` (``train_once``).
Tuning and scoring the folds out of fold is ``pneumoseg.workflows.study.train_folds``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pneumoseg.config import ExperimentConfig
from pneumoseg.data.dataset import read_splits
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.util.atomic import atomic_write_text

__all__ = [
    "FOLD_MARKER",
    "FoldMarkers",
    "best_val",
    "check_folds",
    "fold_dirs",
    "fold_stage",
    "stage_fold",
    "train_all_folds",
    "train_once",
    "with_fold",
]

FOLD_MARKER = ".fold-trained"
"""Written into ``OUT/fold-<k>/`` once fold k's training finished (``train --folds K`` skips it next time)."""


def fold_dirs(out: str | os.PathLike[str], folds: int) -> list[Path]:
    """``OUT/fold-0 .. OUT/fold-<K-1>``."""
    return [Path(out) / f"fold-{k}" for k in range(folds)]


def fold_stage(k: int) -> str:
    """The name of fold k's training stage: ``train-<k>``."""
    return f"train-{k}"


def stage_fold(stage: str) -> int:
    """``train-<k>`` -> k; ValueError for another stage name."""
    m = re.fullmatch(r"train-(\d+)", stage)
    if m is None:
        raise ValueError(f"not a fold training stage: {stage!r} (expected train-<k>)")
    return int(m[1])


def with_fold(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    """``cfg`` validating on ``fold`` (``data.fold``)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=fold))


def check_folds(cfg: ExperimentConfig, folds: int) -> None:
    """ConfigError without a cache; DataError unless ``CACHE/splits.csv`` has exactly folds 0..K-1."""
    if not cfg.data.cache:
        raise ConfigError("K-fold training needs data.cache (--cache or the study's cache:)")
    df = read_splits(cfg.data.cache)
    path = Path(cfg.data.cache) / "splits.csv"
    if "fold" not in df.columns:
        raise DataError(f"{path} has no fold column: run `pneumoseg split {cfg.data.cache} --folds {folds}` first")
    found = sorted({int(f) for f in pd.to_numeric(df["fold"], errors="coerce").dropna() if int(f) >= 0})
    if found != list(range(folds)):
        raise DataError(f"{path} has folds {found}, not 0..{folds - 1}: run `pneumoseg split "
                        f"{cfg.data.cache} --folds {folds}` or choose --folds {len(found)}")


def best_val(run: Path, monitor: str) -> float:
    """Best ``val_<monitor>`` of ``RUN/history.csv`` (max; min for loss); NaN when absent."""
    path = run / "history.csv"
    if not path.is_file():
        return math.nan
    values = pd.to_numeric(pd.read_csv(path).get(f"val_{monitor}", pd.Series(dtype=float)), errors="coerce")
    values = values.dropna()
    if values.empty:
        return math.nan
    return float(values.min() if monitor == "loss" else values.max())


def train_once(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> None:
    """Train ``cfg`` into ``run_dir``, resuming from ``last.ckpt`` when a killed training left one."""
    from pneumoseg.training.run import train

    train(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").is_file(), progress=progress)


@dataclasses.dataclass(frozen=True)
class FoldMarkers:
    """The resume state of ``train --folds K`` in OUT: fold k is done once ``OUT/fold-<k>/.fold-trained`` exists.

    ``done`` / ``mark`` take stage names (``train-<k>``), as ``train_all_folds`` passes them;
    ``on_mark(k)`` is called after fold k's marker is written (e.g. to print a line).
    """

    out: Path
    on_mark: Callable[[int], None] = lambda k: None

    def marker(self, k: int) -> Path:
        return Path(self.out) / f"fold-{k}" / FOLD_MARKER

    def done(self, stage: str) -> bool:
        return self.marker(stage_fold(stage)).is_file()

    def mark(self, stage: str) -> None:
        k = stage_fold(stage)
        atomic_write_text(self.marker(k), "trained\n")
        self.on_mark(k)


def train_all_folds(cfg: ExperimentConfig, out: str | os.PathLike[str], folds: int, progress: bool = True,
                    is_done: Callable[[str], bool] = lambda stage: False,
                    mark: Callable[[str], None] = lambda stage: None) -> list[Path]:
    """Train fold k of ``cfg`` into ``OUT/fold-k`` for k in 0..K-1 after ``check_folds``; the run folders.

    A fold whose stage ``is_done`` is skipped; after each trained fold ``mark(stage)`` records it
    (``FoldMarkers``, or a study's state).
    """
    check_folds(cfg, folds)
    runs = fold_dirs(out, folds)
    for k, run in enumerate(runs):
        if not is_done(fold_stage(k)):
            train_once(with_fold(cfg, k), run, progress)
            mark(fold_stage(k))
    return runs
