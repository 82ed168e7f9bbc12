"""Interrupted training (a real SIGTERM to a `pneumoseg train` process) and the training console (CPU, 32 px)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import pneumoseg.training.builders as builders
from pneumoseg.config import load_config
from pneumoseg.training.run import train
from tests.helpers.caches import make_cache
from tests.training.test_budget import Constant, config

TIME_COLUMNS = ["train_img_per_s", "epoch_time_s"]
BUDGET = ("train.max_steps=12", "train.epochs=100", "schedule.name=cosine")  # 4 epochs of 3 steps
# `pneumoseg train` in a child process, its epochs after the first slowed to ~1 s a batch (time to signal it)
DRIVER = """
import sys, time
import lightning as L
import pneumoseg.training.run as run

class Slow(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch >= 1:
            print("SLOW", flush=True)
            time.sleep(1.0)

build = run.build_trainer
run.build_trainer = lambda *a, callbacks=(), **k: build(*a, callbacks=[*callbacks, Slow()], **k)
from pneumoseg.cli.main import app
app(sys.argv[1:], prog_name="pneumoseg")
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("small"), 16, size=32)  # 12 train, 4 val (2 empty)


def cli_args(cache: Path) -> list[str]:
    cfg = config(cache, *BUDGET)
    return ["--cache", str(cache), "--set", f"data.size={cfg.data.size}", "--set", "data.num_workers=0",
            "--set", "model.name=unet", "--batch-size", "4", "--accelerator", "cpu", "--set", "augment.preset=none",
            "--set", "train.logger=csv", "--max-steps", "12", "--epochs", "100", "--set", "schedule.name=cosine",
            "--no-progress"]


def test_sigterm_exits_nonzero_with_a_resume_line_and_resumes_exactly(small: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "train", *cli_args(small), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # epoch 1 done (last.ckpt written), epoch 2 under way
        if line.startswith("SLOW"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # not 0: `train && tune` stops here
    lines = [line for line in err.splitlines() if line.strip()]
    hint = [line for line in lines if line.startswith("interrupted:")]
    assert len(hint) == 1, err
    assert f"pneumoseg train --resume {run}" in hint[0] and "SIGTERM in epoch 2/4" in hint[0]
    assert "last.ckpt holds epoch 1 (step 3)" in hint[0]
    assert "Traceback" not in err and "Received SIGTERM" not in err
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1]

    time.sleep(3.0)  # the process is dead: no epoch's time may include this
    runner = CliRunner()
    app = typer.Typer()
    from pneumoseg.cli.train import register

    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "train" a named subcommand
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "Restoring states" not in resumed.output and "HINT" not in resumed.output

    full = tmp_path / "full"
    train(config(small, *BUDGET), full, progress=False)
    a = pd.read_csv(full / "history.csv")
    b = pd.read_csv(run / "history.csv")
    assert not b.drop(columns=TIME_COLUMNS).isna().all(axis=1).any()
    assert b["epoch"].tolist() == [1, 2, 3, 4] and b["step"].tolist() == [3, 6, 9, 12]
    pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS), b.drop(columns=TIME_COLUMNS))
    assert b["epoch_time_s"].notna().all() and (b["epoch_time_s"] < 3.0).all()  # no dead time in it


def test_console_one_line_warnings_and_the_baseline(small: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoseg.cli.train import best_line, register

    monkeypatch.setattr(builders, "build_model", lambda cfg, encoder_weights=True: Constant())
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["train", *cli_args(small), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    warned = [line for line in out if line.startswith("warning: ")]
    assert any("only 12 optimizer steps" in line for line in warned)
    assert any("predicts nothing on validation" in line for line in warned)
    for noise in ("UserWarning", ".py:", "HINT", "Restoring", "warnings.warn", "`Trainer.fit` stopped"):
        assert noise not in result.output, noise
    best = next(line for line in out if line.startswith("best "))
    # 2 of the 4 validation images are empty: predicting nothing scores 0.5, exactly what this model scores
    assert "val/dice_kaggle_tuned = 0.5000, the predict-nothing baseline" in best

    assert best_line(Path("b.ckpt"), "dice_kaggle", 0.75, 0.5).endswith(
        "(val/dice_kaggle = 0.7500; predicting nothing scores 0.5000)")
    assert best_line(Path("b.ckpt"), "loss", 0.25, 0.5).endswith("(val/loss = 0.2500)")
    assert load_config(tmp_path / "run").train.max_steps == 12


def test_train_logs_no_lightning_line_and_leaves_logging_and_warnings_as_they_were(small: Path,
                                                                                   tmp_path: Path) -> None:
    import logging
    import warnings

    from pneumoseg.util.quiet import LIGHTNING_LOGGERS, NOISE_WARNINGS

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    loggers = [logging.getLogger(n) for n in LIGHTNING_LOGGERS]
    keep = Keep()
    for lg in loggers:
        lg.addHandler(keep)
    levels = [lg.level for lg in loggers]
    filters = list(warnings.filters)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            train(config(small, "train.epochs=2"), tmp_path / "run", progress=False)
            train(config(small, "train.epochs=3"), tmp_path / "run", resume=True, progress=False)
    finally:
        for lg in loggers:
            lg.removeHandler(keep)
    assert [r.getMessage() for r in keep.records] == []  # device lines, tips, restore paths, stop reasons
    noise = [str(w.message) for w in caught if any(re.match(p, str(w.message)) for p in NOISE_WARNINGS)]
    assert noise == []
    assert [lg.level for lg in loggers] == levels and list(warnings.filters) == filters
