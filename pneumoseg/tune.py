"""Post-processing search on a validation split: threshold / min-area / the winner's triplet rule."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumoseg.atomic import atomic_path
from pneumoseg.evaluate import predict_split
from pneumoseg.postprocess import TUNED_NAME, PostProcess, grid_search
from pneumoseg.predict import Predictor

__all__ = ["tune_run"]


def tune_run(predictor: Predictor, run_dir: str | os.PathLike[str], split: str = "val",
             grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
             progress: bool = True) -> tuple[PostProcess, pd.DataFrame]:
    """Grid-search post-processing on ``split`` by ``dice_kaggle``; save the best in the run.

    Writes ``RUN/postprocess.json`` (used by evaluate, predict and serve from then on) and
    ``RUN/tune.csv`` (every rule scored, best first). ``grid=None`` uses
    ``pneumoseg.postprocess.default_grid`` at the run's size.
    """
    preds = predict_split(predictor, split, progress)
    best, table = grid_search(preds.probs.astype(np.float32), preds.truths, grid)
    run = Path(run_dir)
    best.save(run / TUNED_NAME)
    with atomic_path(run / "tune.csv") as tmp:
        table.to_csv(tmp, index=False)
    predictor.postprocess = best
    return best, table
