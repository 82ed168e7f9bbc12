"""Training end to end on a tiny learnable cache (CPU, 64 px): outputs, learning, resume, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from pneumoseg.config import ExperimentConfig, load_config
from pneumoseg.data.dataset import SegmentationDataset, split_ids
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.training.run import train
from pneumoseg.training.run_folder import build_model, list_checkpoints, load_preprocessing, load_run
from pneumoseg.training.schedules import SnapshotCallbackBuilder, snapshot_lr
from tests.helpers.caches import INDEX_HEADER, make_cache

TIME_COLUMNS = ["train_img_per_s", "epoch_time_s"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 noisy 64 px images; the even ones hold a bright disc (the mask). 36 train, 8 val, 4 test."""
    return make_cache(tmp_path_factory.mktemp("cache"), 48, seed=0, n_test=4, record_size=False)


def config(cache: Path, *extra: str) -> ExperimentConfig:
    return load_config(None, [f"data.cache={cache}", "data.size=64", "data.num_workers=0", "model.name=unet",
                              "train.batch_size=8", "train.accelerator=cpu", "optim.lr=0.003", *extra])


def val_dice(net: torch.nn.Module, cache: Path) -> float:
    ds = SegmentationDataset(cache, split_ids(cache, "val"), size=64)
    pre = Preprocessing(size=64, in_channels=1, mean=(0.5,), std=(0.25,))
    x = pre(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    y = np.stack([ds.load(i)[1] for i in range(len(ds))])
    with torch.no_grad():
        probs = torch.sigmoid(net.eval()(x)).numpy()
    return float(dice_per_image(PostProcess(0.5).apply_batch(probs), y).mean())


def test_snapshot_schedule_formula() -> None:
    builder = SnapshotCallbackBuilder(epochs=10, snapshots=3, lr0=0.1)
    assert builder.cycle == 4
    assert [round(builder.lr(t), 6) for t in (0, 2, 4, 8, 9)] == [0.1, 0.05, 0.1, 0.1, round(0.05 * (
        math.cos(math.pi / 4) + 1), 6)]
    assert [t for t in range(10) if builder.is_snapshot_epoch(t)] == [3, 7]
    assert snapshot_lr(3, 10, 3, 1.0) == pytest.approx(0.5 * (math.cos(3 * math.pi / 4) + 1))


def test_train_learns_and_writes_run_folder(cache: Path, tmp_path: Path) -> None:
    # PyTorch's head init: from the 0.01 prior the seed's UNet (no BatchNorm) does not lift a disc pixel
    # over 0.3 in these 40 steps (docs/training.md); this test is about the run folder
    cfg = config(cache, "train.epochs=8", "schedule.snapshots=2", "augment.preset=none", "model.output_prior=null")
    L.seed_everything(cfg.train.seed, verbose=False)
    untrained = val_dice(build_model(cfg), cache)
    run = tmp_path / "run"
    result = train(cfg, run, progress=False)

    assert (run / "config.yaml").is_file() and load_config(run / "config.yaml") == cfg
    assert set(list_checkpoints(run)) == {"best", "last", "snapshot-1", "snapshot-2"}
    assert result.best_ckpt == run / "checkpoints" / "best.ckpt" and result.epochs == 8
    assert (run / "curves.png").stat().st_size > 1000
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == list(range(1, 9))  # epochs count from 1
    for col in ["lr", "train_loss", "val_loss", "val_dice_kaggle", "val_dice_positive", "train_bce",
                "train_dice", "train_img_per_s"]:
        assert history[col].notna().all(), col
    assert history["lr"].tolist()[:5] == pytest.approx([snapshot_lr(t, 8, 2, 0.003) for t in range(5)])
    assert result.best_score == pytest.approx(history["val_dice_kaggle_tuned"].max())  # train.monitor's default
    assert history["val_dice_positive_tuned"].max() > 0.5  # it segments the discs, not just "empty"
    assert result.best_score > untrained + 0.2

    # one normalisation source: the run's preprocessing, saved beside the weights
    pre = load_preprocessing(run)
    assert pre == Preprocessing.from_config(cfg) == Preprocessing(64, 1, (0.5,), (0.25,))
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert Preprocessing.from_dict(ckpt["preprocessing"]) == pre
    assert history["train_dice_kaggle"].iloc[1:].notna().all()

    net, loaded_cfg = load_run(run)
    assert loaded_cfg == cfg and not net.training
    best_epoch = int(history["val_dice_kaggle_tuned"].to_numpy().argmax())  # the first of equal maxima
    assert val_dice(net, cache) == pytest.approx(history["val_dice_kaggle"].iloc[best_epoch])  # same weights, rule 0.5
    assert not any(run.rglob(".*.tmp*"))  # atomic writes left no temporary file


class Kill(L.Callback):
    """Simulate a killed job: fail at the start of epoch ``at`` (after last.ckpt of epoch at-1)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.at:
            raise RuntimeError("killed")


def test_resume_after_kill_equals_uninterrupted_run(cache: Path, tmp_path: Path) -> None:
    extra = ("train.epochs=3", "schedule.name=cosine", "sampler.pos_start=0.8", "sampler.pos_end=0.4",
             "model.aux_classifier=true")
    # seed augmentations, the positives-once sampler (epochs of 23, 30, 45 images: the loader is
    # rebuilt each epoch), dropout in the aux head
    cfg = config(cache, *extra)
    full = train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "killed", progress=False, callbacks=[Kill(at=2)])
    assert len(pd.read_csv(tmp_path / "killed" / "history.csv")) == 2
    with pytest.raises(DataError, match="--resume"):
        train(cfg, tmp_path / "killed", progress=False)
    resumed = train(load_config(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)

    a = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns=TIME_COLUMNS)
    b = pd.read_csv(tmp_path / "killed" / "history.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(a, b)
    assert resumed.best_score == full.best_score and resumed.epochs == 3
    for name in ("last", "best"):
        wa = torch.load(tmp_path / "full" / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        wb = torch.load(tmp_path / "killed" / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_run_folder_errors(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing to resume"):
        train(config(cache), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(DataError, match="not a run folder"):
        load_run(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 1\n")
    with pytest.raises(DataError, match=f"{run} has no checkpoint"):
        load_run(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no checkpoint 'best' \(available: last\)"):
        load_run(run)
    with pytest.raises(ConfigError, match=r"data\.cache is not set"):
        train(load_config(None), tmp_path / "nocache", progress=False)


def test_cli_train_and_resume(cache: Path, tmp_path: Path) -> None:
    from pneumoseg.cli.train import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps "train" a named subcommand
        """Nothing."""

    runner = CliRunner()
    run = tmp_path / "cli-run"
    common = ["--set", "model.name=unet", "--set", "data.size=64", "--set", "data.num_workers=0",
              "--set", "augment.preset=light", "--accelerator", "cpu", "--no-progress"]
    result = runner.invoke(app, ["train", "--cache", str(cache), "--out", str(run), "--epochs", "1",
                                 "--set", "schedule.name=none", *common])
    assert result.exit_code == 0, result.output
    assert str(run) in result.output and "best.ckpt" in result.output
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]
    assert load_config(run).train.epochs == 2

    nosplit = tmp_path / "nosplit"
    nosplit.mkdir()
    for name in ("images", "masks"):
        (nosplit / name).mkdir()
    (nosplit / "index.csv").write_text(INDEX_HEADER)
    result = runner.invoke(app, ["train", "--cache", str(nosplit), "--out", str(tmp_path / "x"), *common])
    assert result.exit_code == 2 and "pneumoseg split" in result.output
    result = runner.invoke(app, ["train", "--set", "train.epoch=1", "--no-progress"])
    assert result.exit_code == 2 and "train.epoch" in result.output


def test_cli_train_without_cache_is_one_line(tmp_path: Path) -> None:
    """No cache: one line saying how to give it, before anything names it ("training ... on None")."""
    from pneumoseg.cli.main import app

    result = CliRunner().invoke(app, ["train", "seed_unet", "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: data.cache is not set: pass --cache CACHE (or --set data.cache=CACHE)"]
    assert not (tmp_path / "run").exists()
