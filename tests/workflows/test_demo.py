"""The built-in demo end to end (small and short), through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.io.rle import read_annotations


@pytest.mark.slow
def test_demo_runs_every_step_and_reuses_finished_ones(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "60", "--no-progress", "--set", "train.epochs=2",
            "--set", "train.min_steps=null",
            "--set", "data.size=64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("run/report.html", "run/report.md", "run/config.yaml", "run/checkpoints/best.ckpt", "run/curves.png", "run/postprocess.json",
                 "run/eval/test/metrics.json", "run/eval/test/best.png", "predict/predictions.csv", "predict/submission.csv"):
        assert (out / name).is_file(), name
    for step in ("1/7 synth", "2/7 prepare", "3/7 split", "4/7 train", "5/7 tune + evaluate", "6/7 report",
                 "7/7 predict", "dice_kaggle", "dice_positive", "Outputs", "next, try:",
                 f"pneumoseg serve {out / 'run'}", f"pneumoseg report {out / 'run'}"):
        assert step in result.output, step
    text = " ".join(result.output.split())
    rule = result.output.split("post-processing: ")[-1].split("(tuned on")[0]  # the rule in words, either form
    assert "post-processing: " in text and "prob > " in rule and "{" not in rule
    for noise in ("GPU available", "TPU available", "log_every_n_steps", "`Trainer.fit` stopped", "UserWarning"):
        assert noise not in result.output, noise
    metrics = json.loads((out / "run/eval/test/metrics.json").read_text())
    assert metrics["n_images"] == len(pd.read_csv(out / "predict/predictions.csv"))
    assert set(read_annotations(out / "predict/submission.csv")) == {p.stem for p in (out / "predict/masks").iterdir()}
    first = (out / "run/checkpoints/last.ckpt").stat().st_mtime_ns

    again = CliRunner().invoke(app, args)  # finished steps are reused, training is not redone
    assert again.exit_code == 0, again.output
    assert (out / "run/checkpoints/last.ckpt").stat().st_mtime_ns == first
