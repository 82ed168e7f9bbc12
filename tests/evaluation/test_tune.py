"""tune what you predict: ensembles, TTA, out-of-fold; predict finds the rule only for the same settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.config import load_config
from pneumoseg.data.dataset import split_ids
from pneumoseg.data.cache import read_truth
from pneumoseg.data.split import write_splits
from pneumoseg.errors import DataError
from pneumoseg.evaluation.evaluate import iter_split
from pneumoseg.scoring.grid import grid_search
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import find_tuned
from pneumoseg.inference.predictor import Predictor
from pneumoseg.training.run_folder import init_run
from pneumoseg.evaluation.tune import tune_runs

runner = CliRunner()
GRID = [{"threshold": [0.3, 0.5, 0.7], "min_area": [0, 50]},
        {"top_threshold": [0.6, 0.8], "min_area": [0, 50], "bottom_threshold": [0.4]}]


@pytest.fixture()
def two_runs(trained_run: Path, synth_cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The trained run and an untrained one on the same cache: their ensemble differs from either."""
    a = tmp_path / "a"
    shutil.copytree(trained_run, a)
    cfg = load_config("seed_unet", [f"data.cache={synth_cache}", "data.size=64"])
    b = init_run(cfg, tmp_path / "b")
    return a, b


def test_ensemble_is_tuned_on_its_averaged_probabilities(two_runs: tuple[Path, Path], synth_cache: Path) -> None:
    a, b = two_runs
    result = tune_runs([a, b], tta=True, device="cpu", grid=GRID, progress=False)
    # Independent reference: average the members' probabilities ourselves, upsample, grid-search.
    ids = split_ids(synth_cache, "val")
    members = [Predictor([r], device="cpu", tta=True) for r in (a, b)]
    probs, truths = [], []
    for image_id in ids:
        image = next(iter_split(members[0], "val", progress=False, image_ids=[image_id])).image
        avg = np.mean([m.probs_at_model_size([image])[0] for m in members], axis=0)
        truth = read_truth(synth_cache, image_id)
        probs.append(Predictor.native_prob(avg, truth.shape))
        truths.append(truth)
    best, table = grid_search(np.stack(probs), np.stack(truths), GRID)
    assert result.rule == best
    assert result.record.dice_kaggle == pytest.approx(table["dice_kaggle"].iloc[0], abs=1e-6)
    assert result.record.n_images == len(ids)
    # Stored in both runs; found for the same set (any order) and flags only.
    for run in (a, b):
        assert find_tuned([run, *({a, b} - {run})], "best", tta=True) == result.record
    assert Predictor([b, a], device="cpu", tta=True).postprocess == result.rule
    for other in (Predictor([a, b], device="cpu"), Predictor([a], device="cpu", tta=True)):
        assert other.postprocess_source.startswith("config default")


def test_tune_cli_reports_the_gain_over_the_default(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    result = runner.invoke(app, ["tune", f"{a},{b}", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = find_tuned([a, b], "best", tta=False)
    assert record is not None
    assert f"{record.dice_kaggle:.4f} vs {record.default_dice_kaggle:.4f}" in result.output
    assert Predictor([a, b], device="cpu").postprocess_source.startswith("tuned on val")


def test_out_of_fold_tuning_pools_each_folds_validation(synth_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(synth_cache, cache)
    write_splits(cache, test=0.2, folds=2, seed=1, force=True)
    runs = [init_run(load_config("seed_unet", [f"data.cache={cache}", "data.size=64", f"data.fold={k}"]),
                     tmp_path / f"fold{k}") for k in (0, 1)]
    result = tune_runs(runs, oof=True, device="cpu", grid=GRID, progress=False)
    splits = pd.read_csv(cache / "splits.csv", dtype={"image_id": str})
    assert result.record.split == "oof"
    assert result.record.n_images == int((splits["split"] != "test").sum())  # every non-test image once
    assert Predictor(runs, device="cpu").postprocess == result.rule
    with pytest.raises(DataError, match="share a fold"):
        tune_runs([runs[0], runs[0]], oof=True, device="cpu", grid=GRID, progress=False)


# A grid without the config default (0.5, 0): a tuned rule is never mistaken for the fallback.
NOT_DEFAULT = [{"threshold": [0.3, 0.7], "min_area": [0, 50]}]


def test_a_moved_run_keeps_its_tuned_rule(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "here" / "run"
    shutil.copytree(trained_run, run)
    result = tune_runs([run], device="cpu", grid=NOT_DEFAULT, progress=False)
    assert result.rule != PostProcess(0.5, 0)
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(run, moved)
    shutil.rmtree(tmp_path / "here")  # moved: the folder it was tuned in is gone
    predictor = Predictor([moved], device="cpu")
    assert predictor.postprocess == result.rule and predictor.postprocess_source.startswith("tuned on val")
    out = runner.invoke(app, ["evaluate", str(moved), "--split", "val", "--no-progress", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    metrics = json.loads((moved / "eval" / "val" / "metrics.json").read_text())
    assert metrics["postprocess"] == result.rule.to_dict()
    # Other weights in the same folder are another model: the rule is not theirs.
    untrained = init_run(load_config("seed_unet", ["data.size=64", "model.name=unet"]), tmp_path / "untrained")
    shutil.copy(untrained / "checkpoints" / "best.ckpt", moved / "checkpoints" / "best.ckpt")
    assert Predictor([moved], device="cpu").postprocess_source.startswith("config default")


def test_ensemble_tuning_leaves_a_members_own_table_alone(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    single = tune_runs([a], device="cpu", grid=NOT_DEFAULT, progress=False)
    before = (a / "tune.csv").read_bytes()
    ensemble = tune_runs([a, b], device="cpu", grid=GRID, progress=False)
    assert (a / "tune.csv").read_bytes() == before and not (b / "tune.csv").exists()
    assert ensemble.record.table.startswith("tune-ensembles/") and ensemble.record.ensemble
    for run in (a, b):
        table = pd.read_csv(run / ensemble.record.table)
        assert len(table) == len(ensemble.table) and table["dice_kaggle"].iloc[0] == ensemble.record.dice_kaggle
    assert find_tuned([a], "best", tta=False) == single.record and single.record.table == "tune.csv"
    assert find_tuned([b, a], "best", tta=False) == ensemble.record
