"""Step budgets, the "predicts nothing" flag, epoch lines, the cache-size check (CPU, 32-64 px)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import pneumoseg.training.builders as builders
import pneumoseg.training.run as run_module
from pneumoseg.config import ExperimentConfig, load_config
from pneumoseg.errors import ConfigError
from pneumoseg.training.budget import plan_steps
from pneumoseg.training.builders import build_datamodule
from pneumoseg.training.run import SUMMARY_FILE, predicts_nothing, train
from pneumoseg.training.schedules import cosine_lr, snapshot_lr, step_lr
from tests.helpers.caches import make_cache

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("small"), 16, size=32)  # 12 train, 4 val


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("large"), 48)  # 36 train, 12 val


def config(cache: Path, *extra: str) -> ExperimentConfig:
    size = json.loads((cache / "cache.json").read_text())["size"]
    return load_config(None, [f"data.cache={cache}", f"data.size={size}", "data.num_workers=0", "model.name=unet",
                              "train.batch_size=4", "train.accelerator=cpu", "augment.preset=none",
                              "train.logger=csv", *extra])


def summary(run: Path) -> dict[str, object]:
    return json.loads((run / SUMMARY_FILE).read_text())


@pytest.mark.parametrize(("which", "extra"), [
    ("small", ("train.accumulate=1",)),
    ("large", ("train.accumulate=2", "sampler.pos_start=0.8", "sampler.pos_end=0.4")),
])
def test_max_steps_is_honoured_exactly(which: str, extra: tuple[str, ...], request: pytest.FixtureRequest,
                                       tmp_path: Path) -> None:
    cache = request.getfixturevalue(which)
    cfg = config(cache, "train.max_steps=7", "train.epochs=100", "schedule.name=cosine", *extra)
    result = train(cfg, tmp_path / "run", progress=False)
    s = summary(tmp_path / "run")
    assert s["optimizer_steps"] == s["planned_steps"] == 7 and s["budget"] == "max_steps"
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["step"].iloc[-1] == 7 and history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert result.epochs == len(history) == s["epochs"]
    # the plan's per-epoch steps follow the sampler's epoch lengths (positives_once: 1.25 P .. 2.5 P)
    plan = plan_steps(cfg, build_datamodule(cfg))
    assert sum(plan.steps_per_epoch) == 7 and len(plan.steps_per_epoch) == len(history)
    assert history["step"].diff().fillna(history["step"].iloc[0]).tolist() == plan.steps_per_epoch
    assert any("only 7 optimizer steps" in w for w in s["warnings"])  # small for any model
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()  # the CSV logger, always


def test_min_steps_adds_epochs_and_prints_one_line_per_epoch(small: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # 12 train images, batches of 4: 3 steps per epoch; 1 epoch < min_steps 8 -> 3 epochs, 8 steps
    cfg = config(small, "train.epochs=1", "train.min_steps=8", "schedule.name=snapshot",
                 "schedule.snapshots=2", "schedule.warmup_steps=2")
    train(cfg, tmp_path / "run", progress=True)  # stdout captured: not a terminal
    out = capsys.readouterr().out
    assert "train: 8 optimizer steps over 3 epochs (2-3 per epoch; budget: min_steps)" in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[:2] for line in lines] == [["epoch 1/3", "step 3/8"], ["epoch 2/3", "step 6/8"],
                                                         ["epoch 3/3", "step 8/8"]]
    assert all(k in lines[0] for k in ("loss ", "val dice ", "lr ", "img/s", "ETA "))
    assert summary(tmp_path / "run")["optimizer_steps"] == 8
    snaps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("snapshot-*.ckpt"))
    assert snaps == ["snapshot-1.ckpt", "snapshot-2.ckpt"]  # after steps 2 + 3 (warm-up, one cycle) and 8


def test_step_schedules() -> None:
    # warm-up: linear to lr0 over W steps; then the curve over the remaining steps
    assert [step_lr(k, name="cosine", total=12, lr0=1.0, warmup=2) for k in (0, 1)] == [0.5, 1.0]
    assert step_lr(2, name="cosine", total=12, lr0=1.0, warmup=2) == 1.0
    assert step_lr(7, name="cosine", total=12, lr0=1.0, warmup=2) == pytest.approx(cosine_lr(5, 10, 1.0))
    assert step_lr(7, name="snapshot", total=12, lr0=1.0, warmup=2, snapshots=2) == pytest.approx(
        snapshot_lr(5, 10, 2, 1.0)) == pytest.approx(1.0)  # the second cycle restarts at lr0
    assert step_lr(9, name="none", total=12, lr0=0.3, warmup=2) == 0.3


def test_history_lr_follows_the_step_schedule(small: Path, tmp_path: Path) -> None:
    cfg = config(small, "train.max_steps=9", "schedule.name=cosine", "schedule.warmup_steps=3",
                 "optim.lr=0.01")
    train(cfg, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # the rate at each epoch's start: after 0, 3, 6 steps
    expected = [step_lr(k, name="cosine", total=9, lr0=0.01, warmup=3) for k in (0, 3, 6)]
    assert history["lr"].tolist() == pytest.approx(expected, rel=1e-5)  # history.csv keeps 6 digits


class Constant(nn.Module):
    """Constant logits (-10): predicts an empty mask everywhere, whatever it is trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0 + self.bias


def test_predicts_nothing_fires_on_constant_logits(small: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "build_model", lambda cfg, encoder_weights=True: Constant())
    with pytest.warns(UserWarning, match="predicts nothing on validation"):
        train(config(small, "train.max_steps=3"), tmp_path / "run", progress=False)
    s = summary(tmp_path / "run")
    assert s["predicts_nothing"] is True and s["val_pred_positive"] == 0.0
    assert run_module.PREDICTS_NOTHING in s["warnings"]


def test_predicts_nothing_silent_on_a_trained_model(large: Path, tmp_path: Path) -> None:
    cfg = config(large, "model.name=unet_bn", "train.batch_size=8", "train.max_steps=40", "optim.lr=0.003",
                 "schedule.name=cosine")
    train(cfg, tmp_path / "run", progress=False)
    s = summary(tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert s["predicts_nothing"] is False and s["val_pred_positive"] > 0
    assert history["val_dice_positive"].max() > 0.3  # it found discs, not noise
    # the winner's validation: the best rule of the grid is at least as good as the untuned 0.5 (in it)
    assert (history["val_dice_kaggle_tuned"] >= history["val_dice_kaggle"] - 1e-9).all()
    assert history["val_rule_top"].between(0.3, 0.9).all() and (history["val_rule_min_area_train_px"] >= 0).all()
    assert predicts_nothing(0.0) is True and predicts_nothing(0.25) is False
    assert predicts_nothing(None) is None and predicts_nothing(math.nan) is None


def test_cache_size_mismatch_warns_or_refuses(small: Path, tmp_path: Path) -> None:
    # the cache is 32 px; data.size 64 upsamples on the fly: a warning, or an error with strict_size
    with pytest.warns(UserWarning, match="upsampled on the fly"):
        train(config(small, "train.max_steps=1", "data.size=64"), tmp_path / "run", progress=False)
    warned = summary(tmp_path / "run")["warnings"]
    assert any("the cache holds 32 px images but data.size is 64" in str(w) for w in warned)
    with pytest.raises(ConfigError, match=r"cache holds 32 px .* data\.size=32 .*strict_size"):
        train(config(small, "train.max_steps=1", "data.size=64", "train.strict_size=true"), tmp_path / "strict",
              progress=False)
    assert not (tmp_path / "strict" / "checkpoints").exists()


def test_recommended_steps_by_size_and_by_pretrained_encoder() -> None:
    from pneumoseg.training.budget import recommended_steps

    assert recommended_steps(600_000) == 500  # the seed's UNet, from scratch
    assert recommended_steps(24_000_000) == 1000  # unet-resnet34, from scratch
    assert recommended_steps(5_200_000, pretrained=True) == 150  # the Lite0 U-Net on ImageNet weights
