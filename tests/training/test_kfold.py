"""pneumoseg.training.kfold: fold folders, stage names, the folds check and train --folds K's resume markers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pneumoseg.config import load_config
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.training.kfold import (
    FOLD_MARKER,
    FoldMarkers,
    check_folds,
    fold_dirs,
    fold_stage,
    stage_fold,
    train_all_folds,
    with_fold,
)


def test_fold_layout_and_stage_names() -> None:
    assert fold_dirs("OUT", 2) == [Path("OUT/fold-0"), Path("OUT/fold-1")]
    assert [stage_fold(fold_stage(k)) for k in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="train-<k>"):
        stage_fold("tune")


def test_markers_are_written_once_a_fold_trained(tmp_path: Path) -> None:
    marked: list[int] = []
    markers = FoldMarkers(tmp_path, on_mark=marked.append)
    assert not markers.done("train-1")
    markers.mark("train-1")
    assert markers.done("train-1") and not markers.done("train-0") and marked == [1]
    assert (tmp_path / "fold-1" / FOLD_MARKER).read_text() == "trained\n"


def _cache(tmp_path: Path, folds: list[int] | None) -> Path:
    """A cache folder with just enough for ``read_splits``: images/, masks/, index.csv and splits.csv."""
    cache = tmp_path / f"cache-{len(list(tmp_path.glob('cache-*')))}"
    for name in ("images", "masks"):
        (cache / name).mkdir(parents=True)
    (cache / "index.csv").write_text("image_id\n")
    df = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "train", "test"]})
    if folds is not None:
        df["fold"] = folds
    df.to_csv(cache / "splits.csv", index=False)
    return cache


def test_check_folds_needs_folds_0_to_k_minus_1(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs data\.cache"):
        check_folds(load_config("seed_unet"), 2)
    cfg = load_config("seed_unet", [f"data.cache={_cache(tmp_path, None)}"])
    with pytest.raises(DataError, match=r"no fold column: run `pneumoseg split .* --folds 2`"):
        check_folds(cfg, 2)
    cfg = load_config("seed_unet", [f"data.cache={_cache(tmp_path, [0, 1, -1])}"])
    check_folds(cfg, 2)
    with pytest.raises(DataError, match=r"has folds \[0, 1\], not 0..2"):
        check_folds(cfg, 3)
    before = cfg.data.fold
    assert with_fold(cfg, 1).data.fold == 1 and cfg.data.fold == before  # a new config, the old one unchanged


def test_train_all_folds_skips_the_folds_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumoseg.training.kfold as kfold

    cfg = load_config("seed_unet", [f"data.cache={_cache(tmp_path, [0, 1, -1])}"])
    trained: list[tuple[int | None, Path]] = []
    monkeypatch.setattr(kfold, "train_once", lambda c, run, progress: trained.append((c.data.fold, run)))
    markers = FoldMarkers(tmp_path / "R")
    markers.mark("train-0")  # as if fold 0 finished in an earlier call
    runs = train_all_folds(cfg, tmp_path / "R", 2, False, markers.done, markers.mark)
    assert runs == fold_dirs(tmp_path / "R", 2)
    assert trained == [(1, tmp_path / "R" / "fold-1")] and markers.done("train-1")
