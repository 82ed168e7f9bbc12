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


# ---------------------------------------------------------------------------- pydantic-backed messages
def config_error(path: Path | str | None, overrides: list[str] = ()) -> str:  # type: ignore[assignment]
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and "validation error" not in message and "pydantic" not in message, message
    return message


def test_error_names_the_layer_that_set_the_key(tmp_path: Path) -> None:
    """A bad value is blamed on the file of the base chain, or the override, that set it."""
    write(tmp_path / "base.yaml", "train:\n  batch_size: 2.5\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim:\n  lr: 0.01\n")
    assert config_error(child).startswith(f"{tmp_path / 'base.yaml'}: train.batch_size: expected an integer, got 2.5")
    fixed = write(tmp_path / "fixed.yaml", "base: base.yaml\ntrain:\n  batch_size: 4\n")
    assert load_config(fixed).train.batch_size == 4
    assert config_error(fixed, ["train.batch_size=0"]) == \
        "override 'train.batch_size=0': train.batch_size: must be >= 1, got 0"
    # a key inside a list or a loss mapping is blamed on whoever set the enclosing key
    bad = write(tmp_path / "bad.yaml", "augment:\n  transforms: [3]\n")
    assert config_error(bad) == f"{bad}: augment.transforms[0]: expected a non-empty mapping, got 3"
    weights = write(tmp_path / "weights.yaml", "loss: {bce: x}\n")
    assert config_error(weights) == f"{weights}: loss.bce: expected a number, got 'x'"
    assert config_error(None, ["loss={bce: 1, dice: x}"]) == \
        "override 'loss={bce: 1, dice: x}': loss.dice: expected a number, got 'x'"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
        ("train.epochs=true", "train.epochs: expected an integer, got True"),
        ("train.seed='3'", "train.seed: expected an integer, got '3'"),
        ("data.fold=[1]", "data.fold: expected an integer, got [1]"),
        ("train.deterministic=1", "train.deterministic: expected true or false, got 1"),
        ("optim.lr=true", "optim.lr: expected a number, got True"),
        ("optim.lr=.inf", "optim.lr: expected a number, got inf"),
        ("model.name=3", "model.name: expected a non-empty string, got 3"),
        ("model.name=''", "model.name: expected a non-empty string, got ''"),
        ("loss=3", "loss: expected a loss name or a non-empty mapping {name: weight}, got 3"),
        ("augment.transforms=HorizontalFlip", "augment.transforms: expected a list, got 'HorizontalFlip'"),
        ("train=3", "train: expected a mapping of keys, got 3"),
    ],
)
def test_strict_types(override: str, expected: str) -> None:
    """No silent coercion: a float or a bool is not an integer, 1 is not true, 3 is not a name."""
    assert config_error(None, [override]) == f"override {override!r}: {expected}"


def test_whole_floats_and_numeric_strings_are_accepted() -> None:
    """As before: 3.0 is the integer 3, and a number key takes YAML's string reading of 1e-4."""
    cfg = load_config(None, ["train.epochs=3.0", "optim.lr=1e-4", "loss={bce: 2, dice: '1e0'}"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.loss == {"bce": 2.0, "dice": 1.0}


def test_unknown_key_is_reported_first_with_the_valid_keys(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "train:\n  batch_size: 2.5\n  epoch: 3\noptim:\n  lr: -1\n")
    message = config_error(bad)
    assert message.startswith(f"{bad}: unknown key 'train.epoch' (valid keys in 'train': epochs, max_steps,")
    assert message.endswith("strict_size) (and 2 more problems)")
    assert config_error(None, ["sampler.pos_startt=0.5"]).startswith(
        "override 'sampler.pos_startt=0.5': unknown key 'sampler.pos_startt' (valid keys in 'sampler': pos_start,")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.epochs=2", "schedule.snapshots=3"],
         "override 'schedule.snapshots=3': schedule.snapshots: 3 snapshots need as many epochs (train.epochs=2)"),
        (["data.in_channels=1", "data.normalize=imagenet"],
         "override 'data.normalize=imagenet': data.normalize: imagenet normalisation needs data.in_channels: 3"),
        (["train.max_steps=10", "train.min_steps=20"],
         "override 'train.min_steps=20': train.min_steps: 20 is more than train.max_steps=10"),
        (["sampler.mode=fixed_length", "sampler.mode=positives_once", "sampler.pos_start=0"],
         "override 'sampler.pos_start=0': sampler.pos_start: must be > 0 in sampler.mode positives_once "
         "(use fixed_length for 0)"),
        (["augment.preset=custom"],
         "override 'augment.preset=custom': augment.preset: 'custom' needs augment.transforms "
         "(a list of {name: ..., params})"),
        (["loss={bce: 1, dice: -1}"], "override 'loss={bce: 1, dice: -1}': loss: weights must be >= 0, "
                                      "got {'bce': 1.0, 'dice': -1.0}"),
        (["train.limit_val_batches=2.5"], "override 'train.limit_val_batches=2.5': train.limit_val_batches: "
                                          "must be a fraction in (0, 1] or a whole number of batches, got 2.5"),
    ],
)
def test_cross_field_rules(overrides: list[str], expected: str) -> None:
    assert config_error(None, overrides) == expected


def test_sections_stay_dataclasses() -> None:
    """Callers use dataclasses.replace / asdict / fields; replace validates the new values."""
    import dataclasses
    import pickle

    from pydantic import ValidationError

    cfg = load_config("winner")
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=2))
    assert moved.data.fold == 2 and moved.data.in_channels == 3 and moved.train == cfg.train
    assert dataclasses.asdict(moved)["data"]["fold"] == 2
    assert "max_steps" in [f.name for f in dataclasses.fields(cfg.train)]
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(ValidationError):
        dataclasses.replace(cfg.data, fold=-1)
