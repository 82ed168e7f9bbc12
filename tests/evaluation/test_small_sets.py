"""Issue 21 item 5: tune and evaluate say when they ran on too few images (or no positive)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.data.dataset import split_ids
from pneumoseg.evaluation.evaluate import summarize_per_image
from pneumoseg.scoring.stats import METRIC_NAMES

runner = CliRunner()


def _per_image(n: int, n_positive: int) -> pd.DataFrame:
    has = np.arange(n) < n_positive
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "has_truth": has.astype(int),
                         "truth_area_px": has * 300, "pred_area_px": np.where(np.arange(n) % 3 == 0, 200, 0),
                         "probability": np.linspace(0.1, 0.9, n), "dice": np.where(has, np.linspace(0, 0.8, n), 1.0)})


def test_summary_of_twelve_images_has_notes_not_intervals_and_one_warning() -> None:
    m = summarize_per_image(_per_image(12, 4), n_boot=200)
    assert all(np.isnan(m["ci95"][k]).all() for k in METRIC_NAMES)
    assert m["ci95_notes"] == {k: "n too small: 12 images" for k in METRIC_NAMES}
    [line] = m["warnings"]
    assert line.startswith("evaluated on 12 images (< 20): metrics on fewer than 20 images") and "\n" not in line
    big = summarize_per_image(_per_image(60, 15), n_boot=200)
    assert big["warnings"] == [] and big["ci95_notes"] == {}
    assert all(lo <= hi for lo, hi in big["ci95"].values())  # finite intervals
    none = summarize_per_image(_per_image(40, 0), n_boot=200)
    assert none["warnings"] == ["evaluated on 40 images, none with pneumothorax: without a positive, dice_positive, "
                                "sensitivity and image_auc are undefined"]


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning:")]


def test_tune_and_evaluate_on_twelve_images_warn_once(trained_run: Path, synth_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    n_val, n_test = len(split_ids(synth_cache, "val")), len(split_ids(synth_cache, "test"))
    assert n_val < 20 and n_test < 20
    result = runner.invoke(app, ["tune", str(run), "--no-progress", "--device", "cpu"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    [line] = _warnings(result.output)
    assert line.startswith(f"warning: tuned on {n_val} images (< 20)") and "may fit these few images" in line
    result = runner.invoke(app, ["evaluate", str(run), "--split", "test", "--no-progress", "--device", "cpu"],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    [line] = _warnings(result.output)
    assert line.startswith(f"warning: evaluated on {n_test} images (< 20)")
    assert f"(no CI: n too small: {n_test} images)" in result.output and "95 % CI" not in result.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["warnings"] == [line.removeprefix("warning: ")]
