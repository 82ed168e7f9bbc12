"""Training: the LightningModule, callbacks, schedules and ``train(cfg, run_dir)``.

``from pneumoseg.training import train, load_run, TrainResult`` works; the names are imported
lazily from ``pneumoseg.training.run``, so ``import pneumoseg.training.schedules`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrainResult", "list_checkpoints", "load_preprocessing", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pneumoseg.training.run"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
