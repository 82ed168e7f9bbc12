"""pneumoseg study (resumable) and train --folds K (out-of-fold summary), on the synthetic cache at 64 px."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.data.dataset import split_ids
from pneumoseg.data.split import write_splits
from pneumoseg.evaluation.evaluate import iter_split
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.inference.predictor import Predictor
from pneumoseg.workflows.study import load_study

runner = CliRunner()
FAST = ["data.size=64", "data.num_workers=0", "train.epochs=1", "train.batch_size=8", "train.accelerator=cpu",
        "schedule.name=none", "augment.preset=none"]


def test_packaged_seed_study_reproduces_the_seed_comparison() -> None:
    spec = load_study("seed_study")
    assert spec.split == "test" and spec.folds == 0
    cfgs = {e.name: spec.config(e, ["data.cache=/nowhere"]) for e in spec.experiments}
    assert {n: (c.model.name, c.loss) for n, c in cfgs.items()} == {
        "unet_bce_dice": ("unet", "bce_dice"), "uxception_bce_dice": ("uxception", "bce_dice"),
        "uxception_bce_logdice": ("uxception", "bce_logdice")}


def test_train_help_lists_every_packaged_experiment_config() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=400)
    text = " ".join(result.output.split())
    for name in ("demo", "default", "seed_unet", "uxception", "winner"):
        assert name in text
    assert "seed_study" not in text
    result = runner.invoke(app, ["train", "nope"])
    assert result.exit_code == 2 and "demo" in result.output and "seed_study" not in result.output


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_study_trains_tunes_evaluates_compares_and_resumes(synth_cache: Path, tmp_path: Path, one_thread: None) -> None:
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "split": "test", "set": FAST, "experiments": [
        {"name": "a", "config": "seed_unet", "set": ["loss=bce_dice"]},
        {"name": "b", "config": "seed_unet", "set": ["loss=bce_logdice", "optim.lr=0.003"]}]}))
    out = tmp_path / "S"
    args = ["study", str(spec), "--out", str(out), "--cache", str(synth_cache), "--device", "cpu", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    test_ids = split_ids(synth_cache, "test")
    for name in ("a", "b"):
        ev = out / name / "eval" / "test"
        for f in ("metrics.json", "per_image.csv", "cases.csv", "best.png", "worst.png"):
            assert (ev / f).is_file(), f
        assert sorted(pd.read_csv(ev / "per_image.csv", dtype={"image_id": str})["image_id"]) == sorted(test_ids)
        assert (out / name / "postprocess.json").is_file() and (out / name / "report.html").is_file()
    assert (out / "compare.html").is_file() and (out / "compare.md").is_file()
    assert yaml.safe_load((out / "b" / "config.yaml").read_text())["loss"] == "bce_logdice"
    state = json.loads((out / "study.json").read_text())
    assert all(v["done"] == ["train", "tune", "evaluate"] for v in state["experiments"].values())

    before = _mtimes(out / "a")
    state["experiments"]["b"]["done"].remove("evaluate")  # as if killed during b's evaluation
    (out / "study.json").write_text(json.dumps(state))
    shutil.rmtree(out / "b" / "eval")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "b: evaluate done" in result.output and "a: " not in result.output.split("dice_kaggle")[0]
    assert _mtimes(out / "a") | {"report.html": 0, "report.md": 0} == before | {"report.html": 0, "report.md": 0}
    assert (out / "b" / "eval" / "test" / "metrics.json").is_file()

    spec.write_text(spec.read_text().replace("optim.lr=0.003", "optim.lr=0.004"))
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "experiment 'b' was run with another config" in result.output


def test_train_folds_gives_mean_sd_and_out_of_fold_score(synth_cache: Path, tmp_path: Path, one_thread: None) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(synth_cache, cache)
    (cache / "splits.csv").unlink()
    write_splits(cache, test=0.2, folds=2, seed=1)
    out = tmp_path / "R"
    args = ["train", "seed_unet", "--folds", "2", "--cache", str(cache), "--out", str(out), "--no-progress",
            *[a for kv in FAST for a in ("--set", kv)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fold 0: trained" in result.output and "+/-" in result.output and "out-of-fold dice_kaggle" in result.output
    for k in (0, 1):
        assert yaml.safe_load((out / f"fold-{k}" / "config.yaml").read_text())["data"]["fold"] == k
    summary = json.loads((out / "folds.json").read_text())
    per_fold = pd.DataFrame(summary["per_fold"])
    assert list(per_fold["fold"]) == [0, 1]
    assert summary["oof_dice_kaggle_mean"] == pytest.approx(per_fold["oof_dice_kaggle"].mean())
    assert summary["oof_dice_kaggle_sd"] == pytest.approx(per_fold["oof_dice_kaggle"].std(ddof=1))
    oof = pd.read_csv(out / "eval" / "oof" / "per_image.csv", dtype={"image_id": str})
    val = [split_ids(cache, "val", k) for k in (0, 1)]
    assert sorted(oof["image_id"]) == sorted(val[0] + val[1]) and not set(val[0]) & set(val[1])
    assert summary["oof"]["dice_kaggle"] == pytest.approx(oof["dice"].mean(), abs=1e-6)
    # independent reference: fold 1's model on its own validation fold with the stored rule, Dice by hand
    rule = PostProcess.from_dict(json.loads((out / "eval" / "oof" / "metrics.json").read_text())["postprocess"])
    dice = []
    for item in iter_split(Predictor([out / "fold-1"], device="cpu", postprocess=rule), "val", progress=False):
        m = rule(item.prob)
        total = m.sum() + item.truth.sum()
        dice.append(1.0 if total == 0 else 2 * (m & item.truth).sum() / total)
    assert per_fold.loc[1, "oof_dice_kaggle"] == pytest.approx(float(np.mean(dice)), abs=1e-4)

    ckpt = (out / "fold-0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    result = runner.invoke(app, args)  # resumable: both folds finished, nothing retrained
    assert result.exit_code == 0, result.output
    assert "fold 0: trained" not in result.output
    assert (out / "fold-0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == ckpt
