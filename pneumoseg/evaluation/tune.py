"""Post-processing search: threshold / min-area / the winner's triplet rule, for exactly what you predict.

``tune_runs`` scores every rule of a grid at the source resolution on the probabilities that
``predict`` would produce with the same runs, checkpoint and TTA (an ensemble is tuned on its
averaged probabilities), and stores the best rule in each run's ``postprocess.json`` keyed by
the content of those settings (``pneumoseg.scoring.tuned.TunedRule``: the SHA-256 of each
checkpoint, and TTA), so ``predict`` with the same weights and TTA uses it from wherever the run
folders are copied or moved. Every rule scored goes to ``RUN/tune.csv`` for a single run and to
``RUN/tune-ensembles/<id>.csv`` for an ensemble: a run's own sweep is never replaced by an
ensemble's.

Out-of-fold (``oof=True``, the recommended way for K-fold runs): each fold's model predicts its
own validation fold, the K folds are pooled, and the rule is stored for the K-run ensemble. No
image is scored by a model that trained on it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from pneumoseg.util.atomic import atomic_path
from pneumoseg.data.split import small_set_warning
from pneumoseg.errors import DataError
from pneumoseg.runs import read_run_config
from pneumoseg.evaluation.evaluate import SplitItem, iter_split
from pneumoseg.scoring.grid import GridScorer, default_grid
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import TunedRule, checkpoint_digests, save_tuned
from pneumoseg.inference.predictor import Predictor

__all__ = ["TuneResult", "tune_runs"]


@dataclass(frozen=True)
class TuneResult:
    """The tuned record (rule, settings, scores), every rule scored (best first), the files written and
    ``warnings`` (one line when the images tuned on are fewer than 20 or hold no positive)."""

    record: TunedRule
    table: pd.DataFrame
    files: list[Path]
    warnings: list[str] = field(default_factory=list)

    @property
    def rule(self) -> PostProcess:
        return self.record.rule

    @property
    def gain(self) -> float:
        """dice_kaggle of the tuned rule minus that of the untuned default, on the same images."""
        return self.record.dice_kaggle - self.record.default_dice_kaggle


def _items(runs: Sequence[Path], split: str, oof: bool, progress: bool, **predictor_kw: Any) -> Iterator[SplitItem]:
    if not oof:
        yield from iter_split(Predictor(runs, **predictor_kw), split, progress)
        return
    folds = []
    for run in runs:
        predictor = Predictor([run], **predictor_kw)
        if predictor.cfg.data.fold is None:
            raise DataError(f"{run}: out-of-fold tuning needs K-fold runs (data.fold is not set in its config)")
        folds.append(predictor.cfg.data.fold)
        yield from iter_split(predictor, "val", progress)
    if len(set(folds)) != len(folds):
        raise DataError(f"out-of-fold tuning: runs share a fold ({folds}); give one run per fold")


def tune_runs(runs: Sequence[str | os.PathLike[str]], *, split: str = "val", oof: bool = False,
              checkpoint: str = "best", tta: bool = False, device: str | None = None, batch_size: int = 4,
              grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
              progress: bool = True) -> TuneResult:
    """Grid-search post-processing by ``dice_kaggle`` for the ensemble ``runs`` (+ ``tta``).

    Writes, in every run folder, ``postprocess.json`` (the rule for these weights and TTA,
    alongside rules tuned for other settings) and the table of every rule, best first (``min_area``
    in source pixels): ``tune.csv`` for one run, ``tune-ensembles/<id>.csv`` for an ensemble
    (``TunedRule.table``). ``grid=None``: ``pneumoseg.scoring.grid.default_grid`` at the source width.
    The untuned default (the first run's config threshold / min_area) is scored on the same images.
    """
    dirs = [Path(r) for r in runs]
    if not dirs:
        raise DataError("no run folder given")
    kw = {"checkpoint": checkpoint, "tta": tta, "device": device, "batch_size": batch_size}
    items = _items(dirs, split, oof, progress, **kw)
    first = next(items, None)
    if first is None:
        raise DataError(f"nothing to tune on: split {split!r} is empty")
    scorer = GridScorer(default_grid(first.truth.shape[1]) if grid is None else grid)
    cfg_pp = read_run_config(dirs[0]).postprocess
    baseline = GridScorer({"threshold": [cfg_pp.threshold], "min_area": [cfg_pp.min_area]})
    n_positive = 0
    for item in itertools.chain([first], items):
        scorer.add(item.prob, item.truth)
        baseline.add(item.prob, item.truth)
        n_positive += bool(item.truth.any())
    best, table = scorer.result()
    _, base_table = baseline.result()
    weights = checkpoint_digests(dirs, checkpoint)
    if not weights:
        raise DataError(f"{', '.join(map(str, dirs))}: no checkpoint {checkpoint!r} file to key the tuned rule by")
    record = TunedRule(best, TunedRule.key_of(dirs, checkpoint, tta)[0], checkpoint, tta, "oof" if oof else split,
                       len(scorer), float(table["dice_kaggle"].iloc[0]), float(base_table["dice_kaggle"].iloc[0]),
                       tuple(sorted(weights)))
    record = replace(record, table=record.table_name())
    files = []
    for run in dirs:
        with atomic_path(run / record.table) as tmp:
            table.to_csv(tmp, index=False)
        files.append(run / record.table)
    files[:0] = save_tuned(record, dirs)
    warning = small_set_warning("tuned on", [("", len(scorer), n_positive)])
    warnings = [f"{warning}; the tuned rule may fit these few images and not generalise"] if warning else []
    return TuneResult(record, table, files, warnings)
