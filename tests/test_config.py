"""The experiment config: defaults, layering, overrides, errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumoseg.config import ExperimentConfig, dump_config, list_configs, load_config, parse_override
from pneumoseg.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_default_has_every_key() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.monitor == "dice_kaggle_tuned"
    assert cfg.model.output_prior == 0.01
    assert cfg.data.normalize == "gray"  # "auto" resolved for 1 channel
    assert cfg.sampler is None and cfg.augment.preset == "seed"


@pytest.mark.parametrize("name", ["default.yaml", "winner.yaml", "seed_unet.yaml", "uxception.yaml"])
def test_packaged_configs_load(name: str) -> None:
    assert name in list_configs()
    cfg = load_config(name)
    assert cfg.data.size % 32 == 0


def test_winner_recipe() -> None:
    cfg = load_config("winner")
    assert cfg.loss == {"bce": 3.0, "dice": 1.0, "focal": 4.0}
    assert cfg.sampler is not None and (cfg.sampler.pos_start, cfg.sampler.pos_end) == (0.8, 0.4)
    assert cfg.data.in_channels == 3 and cfg.data.normalize == "imagenet"


def test_experiment_merges_over_defaults_and_base(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path / "plain.yaml", "train:\n  epochs: 7\n"))
    assert plain.train.epochs == 7 and plain.train.batch_size == load_config(None).train.batch_size
    child = load_config(write(tmp_path / "child.yaml", "base: winner.yaml\noptim:\n  lr: 0.01\n"))
    assert child.optim.lr == 0.01 and child.loss == {"bce": 3.0, "dice": 1.0, "focal": 4.0}
    write(tmp_path / "mid.yaml", "base: winner.yaml\ntrain:\n  epochs: 4\n")
    leaf = load_config(write(tmp_path / "leaf.yaml", "base: mid.yaml\nloss: dice\n"))
    assert leaf.train.epochs == 4 and leaf.loss == "dice" and leaf.sampler is not None


def test_overrides() -> None:
    cfg = load_config(None, ["model.name=unet", "train.epochs=3", "optim.lr=1e-4", "loss={bce: 3, dice: 1}",
                             "loss.focal=4", "sampler.pos_start=0.9", "data.cache=/tmp/x y"])
    assert cfg.model.name == "unet" and cfg.train.epochs == 3 and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.loss == {"bce": 3.0, "dice": 1.0, "focal": 4.0}
    assert cfg.sampler is not None and cfg.sampler.pos_start == 0.9 and cfg.sampler.pos_end == 0.4
    assert cfg.data.cache == "/tmp/x y"
    assert load_config("winner", ["sampler=null"]).sampler is None
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_custom_augment_list() -> None:
    cfg = load_config(None, ["augment.transforms=[{name: HorizontalFlip, p: 1.0}]"])
    assert cfg.augment.preset == "custom" and cfg.augment.transforms == [{"name": "HorizontalFlip", "p": 1.0}]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("train:\n  epoch: 3\n", ["bad.yaml", "'train.epoch'", "epochs"]),
        ("trainer: {}\n", ["bad.yaml", "'trainer'", "train"]),
        ("train:\n  epochs: abc\n", ["bad.yaml", "train.epochs", "integer"]),
        ("optim:\n  name: rmsprop\n", ["bad.yaml", "optim.name", "adam, adamw, sgd"]),
        ("data:\n  size: 500\n", ["bad.yaml", "data.size", "divisible by 32", "480 or 512"]),
        ("data:\n  in_channels: 2\n", ["data.in_channels", "1, 3"]),
        ("schedule:\n  name: step\n", ["schedule.name", "snapshot, cosine, plateau, none"]),
        ("augment:\n  transforms:\n    - {name: HorizontalFlp}\n",
         ["bad.yaml", "HorizontalFlp", "HorizontalFlip"]),
        ("augment:\n  preset: heavy\n", ["augment.preset", "seed, light, winner, none"]),
        ("sampler:\n  pos_start: 1.5\n", ["sampler.pos_start", "[0, 1]"]),
        ("postprocess:\n  threshold: 0\n", ["postprocess.threshold"]),
        ("base: nowhere.yaml\n", ["bad.yaml", "nowhere.yaml"]),
        ("- a\n- b\n", ["bad.yaml", "mapping"]),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "bad.yaml", text))
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.foo=1", ["override 'train.foo=1'", "'train.foo'", "batch_size"]),
        ("train.epochs", ["KEY=VALUE"]),
        ("train.epochs=0", ["train.epochs", ">= 1"]),
        ("data.normalize=imagenet", ["data.normalize", "in_channels: 3"]),
        ("train.precision=8-bit", ["train.precision", "bf16-mixed"]),
        ("train.precision=bf16-true",
         ["train.precision", "'bf16-true'", "loses small updates", "bf16-mixed"]),
        ("train.precision=16-true", ["train.precision", "'16-true'", "half precision"]),
        ("sampler.mode=cycle", ["sampler.mode", "'cycle'", "positives_once, fixed_length"]),
        ("sampler.epoch_length=100", ["sampler.epoch_length", "fixed_length only"]),
        ("sampler.pos_end=0", ["sampler.pos_end", "> 0", "fixed_length"]),
    ],
)
def test_bad_overrides(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_config_name_lists_packaged() -> None:
    with pytest.raises(ConfigError, match=r"winner\.yaml"):
        load_config("no-such-config")


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = load_config("winner", ["train.epochs=2", "augment.transforms=[{name: RandomGamma, p: 0.2}]"])
    path = tmp_path / "run" / "config.yaml"
    dump_config(cfg, path)
    assert "base" not in path.read_text()
    assert load_config(path) == cfg
    assert load_config(path.parent) == cfg  # a run folder works too


def test_sampler_modes() -> None:
    cfg = load_config("winner")
    assert cfg.sampler is not None and cfg.sampler.mode == "positives_once"
    assert cfg.sampler.epoch_length is None
    fixed = load_config(None, ["sampler.mode=fixed_length", "sampler.epoch_length=100", "sampler.pos_end=0"])
    assert fixed.sampler is not None
    assert (fixed.sampler.mode, fixed.sampler.epoch_length) == ("fixed_length", 100)
    assert load_config(None, ["train.precision=bf16-mixed"]).train.precision == "bf16-mixed"


def test_budget_keys() -> None:
    cfg = load_config(None, ["train.max_steps=800", "train.min_steps=200", "schedule.warmup_steps=50",
                             "train.ema=0.99", "train.logger=tensorboard", "train.strict_size=true"])
    assert (cfg.train.max_steps, cfg.train.min_steps, cfg.schedule.warmup_steps) == (800, 200, 50)
    assert (cfg.train.ema, cfg.train.logger, cfg.train.strict_size) == (0.99, "tensorboard", True)
    # a step budget lifts "snapshots need as many epochs"
    assert load_config(None, ["train.epochs=2", "schedule.snapshots=3", "train.max_steps=90"]).schedule.snapshots == 3
    for override, needles in [("train.max_steps=0", ["train.max_steps", ">= 1"]),
                              ("train.ema=1.5", ["train.ema", "(0, 1)"]),
                              ("train.logger=neptune", ["train.logger", "csv", "tensorboard"]),
                              ("schedule.warmup_steps=-1", ["schedule.warmup_steps", ">= 0"])]:
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        assert all(n in str(info.value) for n in needles), str(info.value)
    with pytest.raises(ConfigError, match=r"train\.min_steps: 300 is more than train\.max_steps=200"):
        load_config(None, ["train.max_steps=200", "train.min_steps=300"])


@pytest.mark.parametrize("name", ["seed_unet", "uxception", "small_data"])
def test_small_data_configs_have_a_step_floor(name: str) -> None:
    """Packaged configs meant for small sets never stop after a few dozen optimizer steps."""
    cfg = load_config(name)
    assert (cfg.train.max_steps or 0) >= 500 or (cfg.train.min_steps or 0) >= 500
    assert cfg.schedule.warmup_steps > 0


def test_imagenet_weights_default_to_three_channels_with_imagenet_statistics() -> None:
    cfg = load_config("small_data", ["model.name=unet-tu-tf_efficientnet_lite0", "model.encoder_weights=imagenet"])
    assert (cfg.data.in_channels, cfg.data.normalize) == (3, "imagenet")
    cfg = load_config("small_data", ["model.encoder_weights=imagenet", "data.in_channels=1", "data.normalize=gray"])
    assert (cfg.data.in_channels, cfg.data.normalize) == (1, "gray")  # the user's choice stands
    assert load_config("small_data").data.in_channels == 1
