"""Training: the LightningModule, callbacks, schedules and ``train(cfg, run_dir)``.

``from pneumoseg.training import train, load_run, TrainResult`` works; the names are imported
lazily (``train``, ``TrainResult`` from ``pneumoseg.training.run``, the run-folder readers from
``pneumoseg.training.run_folder``), so ``import pneumoseg.training.schedules`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"TrainResult": "run", "train": "run", "list_checkpoints": "run_folder", "load_preprocessing": "run_folder",
         "load_run": "run_folder"}
__all__ = ["TrainResult", "list_checkpoints", "load_preprocessing", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"pneumoseg.training.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
