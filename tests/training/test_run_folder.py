"""Where a run goes: ``default_run_dir`` reads no environment; ``pneumoseg train`` hands DDP ranks the folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from pneumoseg.training.run_folder import RUN_DIR_ENV, default_run_dir
from tests.helpers.caches import make_cache

COMMON = ["--set", "data.size=32", "--set", "data.num_workers=0", "--set", "model.name=unet", "--batch-size", "4",
          "--accelerator", "cpu", "--set", "augment.preset=none", "--set", "schedule.name=none", "--epochs", "1",
          "--no-progress"]


def test_default_run_dir_takes_the_inherited_folder_as_an_argument(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "elsewhere"))  # read by the command only, not here
    run = default_run_dir("configs/exp.yaml", root=tmp_path)
    assert run.parent == tmp_path and re.fullmatch(r"exp-\d{8}-\d{6}", run.name)
    assert default_run_dir(tmp_path / "old" / "config.yaml", root=tmp_path).name.startswith("old-")
    assert default_run_dir(None, root=tmp_path).name.startswith("default-")
    assert default_run_dir("configs/exp.yaml", inherited=tmp_path / "rank0") == tmp_path / "rank0"
    assert default_run_dir("configs/exp.yaml", root=tmp_path, inherited="").parent == tmp_path


def test_a_relaunched_rank_trains_into_the_folder_rank_0_chose(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Lightning relaunches `pneumoseg train` (no --out) for ranks 1..N-1 with the variable rank 0 set
    from pneumoseg.cli.train import register

    cache = make_cache(tmp_path / "cache", 16, size=32)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "train" a named subcommand
    chosen = tmp_path / "chosen-by-rank-0"
    result = CliRunner().invoke(app, ["train", "--cache", str(cache), *COMMON], env={RUN_DIR_ENV: str(chosen)})
    assert result.exit_code == 0, result.output
    assert (chosen / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs").exists()
    assert RUN_DIR_ENV not in os.environ


@pytest.mark.slow
def test_two_cpu_ranks_share_one_clock_named_run_folder(tmp_path: Path) -> None:
    """A real DDP run (2 CPU processes, gloo) without --out: rank 1 is started a moment later by Lightning
    and still writes into rank 0's folder (one folder under runs/, one history)."""
    cache = make_cache(tmp_path / "cache", 16, size=32)
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    done = subprocess.run([sys.executable, "-m", "pneumoseg.cli.main", "train", "--cache", str(cache), *COMMON,
                           "--devices", "2", "--set", "train.batch_size=2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert pd.read_csv(runs[0] / "history.csv")["epoch"].tolist() == [1]
