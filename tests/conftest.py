"""Shared fixtures: a small synthetic cache and a briefly trained run (session-scoped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.threads import one_thread  # noqa: F401  (the shared fixture, for every test)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 synthetic phantoms at 256 px in the challenge layout (dicom/ + train-rle.csv)."""
    from pneumoseg.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n=60, size=256, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_cache(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantoms prepared at 256 px and split 60/20/20 by patient."""
    from pneumoseg.data.prepare import prepare_dicom
    from pneumoseg.data.split import write_splits

    cache = tmp_path_factory.mktemp("cache")
    prepare_dicom(synth_data / "dicom", synth_data / "train-rle.csv", cache, size=256, workers=1, progress=False)
    write_splits(cache, val=0.2, test=0.2, seed=1)
    return cache


@pytest.fixture(scope="session")
def trained_run(synth_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed UNet trained for 2 short epochs at 64 px on the synthetic cache (CPU)."""
    from pneumoseg.config import load_config
    from pneumoseg.training.run import train

    cfg = load_config("seed_unet", [f"data.cache={synth_cache}", "data.size=64", "data.num_workers=0",
                                    "model.name=unet", "train.epochs=2", "train.min_steps=null",
                                    "train.batch_size=8", "train.accelerator=cpu", "schedule.name=none",
                                    "schedule.warmup_steps=0", "augment.preset=none"])
    run = tmp_path_factory.mktemp("runs") / "run"
    train(cfg, run, progress=False)
    return run
