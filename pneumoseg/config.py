"""The experiment config: one typed schema, loaded from YAML, overridden by ``key=value``, dumped.

An experiment is a YAML file whose sections mirror the dataclasses below (``data``, ``model``,
``loss``, ``optim``, ``schedule``, ``sampler``, ``augment``, ``train``, ``postprocess``). Layers,
each merged over the one before (mappings key by key; ``loss``, lists and ``null`` replace):

1. the packaged ``pneumoseg/configs/default.yaml``;
2. the file named by ``base:`` in the experiment (relative to the experiment's folder, else a
   packaged config name such as ``winner.yaml``), recursively; without ``base:`` an experiment is
   merged straight over the defaults;
3. the experiment file itself;
4. overrides ``"section.key=value"`` (the value is parsed as YAML: ``3``, ``1e-4``, ``null``,
   ``"{bce: 3, dice: 1}"``, ``"[a, b]"``). ``loss.NAME=W`` sets one weight of a weighted loss
   (a loss given by name becomes ``{NAME: W}``); ``sampler.KEY=V`` on an absent sampler starts
   from the sampler defaults.

Unknown keys and bad values raise ConfigError naming the file (or the override), the dotted key
and the valid choices. The resolved config (``dump_config``) has no ``base`` and every key, so
``RUN/config.yaml`` reloads to the same experiment.

Normalisation (``data.normalize``): ``gray`` is ``(x / 255 - 0.5) / 0.25``; ``imagenet`` divides by
255 then subtracts the ImageNet mean and divides by its std per channel (the grayscale image is
replicated to 3 channels). ``auto`` resolves at load: ``gray`` for ``in_channels: 1``,
``imagenet`` for 3. The numbers live in ``pneumoseg.models.preprocessing.Preprocessing.from_config``,
which the run saves next to its weights.

The training budget: ``train.epochs`` epochs, or ``train.max_steps`` optimizer steps exactly
(whatever the data size; the epochs follow from the sampler's epoch lengths), or at least
``train.min_steps`` steps (more epochs when the data set is small). With a step budget or
``schedule.warmup_steps`` the schedules run over optimizer steps
(``pneumoseg.training.schedules.step_lr``); see ``pneumoseg.training.run.plan_steps``.

Mixed precision: ``train.precision`` ``bf16-mixed`` / ``16-mixed`` are accepted; ``bf16-true`` and
``16-true`` are refused (weights and Adam's state in half precision lose small updates).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.errors import ConfigError

__all__ = [
    "CHOICES", "HALF_PRECISIONS", "AugmentConfig",
    "DataConfig", "ExperimentConfig", "ModelConfig", "OptimConfig",
    "PostprocessConfig", "SamplerConfig", "ScheduleConfig", "TrainConfig",
    "config_to_dict", "dump_config", "list_configs", "load_config", "packaged_config", "parse_override",
]

#: Pure half precisions: listed in CHOICES only to be refused with the reason (weights in half lose updates).
HALF_PRECISIONS: tuple[str, ...] = ("bf16-true", "16-true")

#: Valid values of the string options, by dotted key.
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.in_channels": (1, 3),
    "data.normalize": ("auto", "gray", "imagenet"),
    "optim.name": ("adam", "adamw", "sgd"),
    "schedule.name": ("snapshot", "cosine", "plateau", "none"),
    "augment.preset": ("seed", "light", "winner", "none", "custom"),
    "train.precision": ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "train.monitor": ("dice_kaggle_tuned", "dice_kaggle", "dice_positive", "loss"),
    "train.logger": ("csv", "tensorboard", "mlflow", "wandb", "none"),
}


@dataclass
class DataConfig:
    cache: str | None = None          #: the prepared cache folder (``pneumoseg prepare``)
    fold: int | None = None           #: None: splits.csv's train/val; k: fold k is validation
    size: int = 512                   #: training size (divisible by 32); cache resized on the fly
    in_channels: int = 1              #: 1 (grayscale) or 3 (replicated; the default with imagenet weights)
    normalize: str = "auto"           #: gray | imagenet | auto (see module docstring)
    num_workers: int | None = None    #: loader workers; None = min(8, CPU count)


@dataclass
class ModelConfig:
    name: str = "unet-resnet34"       #: a name from ``pneumoseg.models.list_models()``
    encoder_weights: str | None = None  #: None, "imagenet" (needs internet) or a local file
    aux_classifier: bool = False      #: image-level head; trained with BCE on "any pneumothorax"
    aux_weight: float = 0.1           #: weight of that BCE in the loss
    #: initial foreground probability of the mask head: its bias starts at log(p / (1 - p)) (RetinaNet's
    #: prior), so the first steps do not spend themselves pushing p = 0.5 everywhere down; None: PyTorch's init
    output_prior: float | None = 0.01


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9             #: sgd only


@dataclass
class ScheduleConfig:
    name: str = "snapshot"
    snapshots: int = 1                #: snapshot: M cycles over train.epochs
    min_lr: float = 0.0               #: cosine: eta_min; plateau: lowest lr
    factor: float = 0.5               #: plateau: lr multiplier
    patience: int = 2                 #: plateau: epochs without improvement
    warmup_steps: int = 0             #: linear warm-up over the first N optimizer steps (step schedules)


@dataclass
class SamplerConfig:
    pos_start: float = 0.8            #: share of positives in the first epoch
    pos_end: float = 0.4              #: ... in the last epoch (linear in between)
    mode: str = "positives_once"      #: positives_once (winner: each positive once) | fixed_length
    epoch_length: int | None = None   #: fixed_length only: images per epoch; None = train split size


@dataclass
class AugmentConfig:
    preset: str = "seed"              #: seed | light | winner | none; "custom" when transforms are given
    transforms: list[dict[str, Any]] | None = None  #: [{name: HorizontalFlip, p: 0.5}, ...]


@dataclass
class TrainConfig:
    epochs: int = 30                  #: the budget in epochs, unless max_steps / min_steps decide
    max_steps: int | None = None      #: the budget in optimizer steps, whatever the data size
    min_steps: int | None = None      #: at least this many optimizer steps (more epochs on small data)
    batch_size: int = 8
    precision: str = "32-true"        #: "bf16-mixed" / "16-mixed" on GPU ("*-true" half: refused)
    accumulate: int = 1               #: gradient accumulation (batches)
    seed: int = 42
    devices: int = 1                  #: GPUs per node; > 1: DDP
    num_nodes: int = 1                #: nodes (torchrun / SLURM; see pneumoseg.training.run)
    accelerator: str = "auto"
    channels_last: bool = True        #: applied on CUDA only
    monitor: str = "dice_kaggle_tuned"  #: val metric for best.ckpt (max; "loss": min); see training.module
    deterministic: bool = True        #: deterministic algorithms; false: cuDNN autotuning (faster)
    train_dice: bool = True           #: Dice of training batches (counted on the device, no host sync)
    grad_clip: float | None = None
    limit_train_batches: float | None = None  #: < 1: fraction; >= 1: number of batches
    limit_val_batches: float | None = None
    ema: float | None = None          #: EMA of the weights (decay, e.g. 0.99): validated and saved
    logger: str = "csv"               #: csv (RUN/logs) | tensorboard | mlflow | wandb | none
    strict_size: bool = False         #: refuse (not only warn) when the cache size differs from data.size


@dataclass
class PostprocessConfig:
    threshold: float = 0.5            #: probability threshold used in validation
    min_area: int = 0                 #: drop predicted masks smaller than this (pixels)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: str | dict[str, float] = "bce_dice"  #: a loss name or {name: weight}
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


# ---------------------------------------------------------------------------- files and layers
def list_configs() -> list[str]:
    """Names of the packaged experiment configs (``default.yaml``, ``winner.yaml``, ...; study files,
    which list ``experiments:``, are not experiment configs)."""
    folder = resources.files("pneumoseg") / "configs"
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith(".yaml") and not re.search(r"^experiments:", p.read_text(), re.MULTILINE))


def packaged_config(name: str) -> Path:
    """Path of a packaged config by name, with or without ``.yaml``; ConfigError lists them."""
    fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = Path(str(resources.files("pneumoseg") / "configs" / fname))
    if not path.is_file():
        raise ConfigError(f"config {name!r} not found (neither a file nor a packaged config: "
                          f"{', '.join(list_configs())})")
    return path


def _resolve_path(name: str | os.PathLike[str], relative_to: Path | None = None) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    if relative_to is not None and (relative_to / path).is_file():
        return relative_to / path
    if path.is_dir() and (path / "config.yaml").is_file():  # a run folder
        return path / "config.yaml"
    return packaged_config(str(name))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at top level, got {type(data).__name__}")
    return data


def _merge(dst: dict[str, Any], src: Mapping[str, Any], origin: dict[str, str], source: str,
           prefix: str = "") -> None:
    """Deep-merge ``src`` into ``dst``; ``origin[dotted key] = source`` for each key set."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        mergeable = dotted not in ("loss", "augment.transforms")
        if isinstance(value, Mapping) and mergeable and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
            _mark(value, origin, source, dotted)


def _mark(value: Any, origin: dict[str, str], source: str, dotted: str) -> None:
    origin[dotted] = source
    if isinstance(value, Mapping) and dotted != "loss":
        for k, v in value.items():
            _mark(v, origin, source, f"{dotted}.{k}")


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The chain ``[(source, mapping), ...]`` from the farthest base to ``path`` itself."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops ({' -> '.join(str(p) for p in seen)})")
    data = _read_yaml(path)
    base = data.pop("base", None)
    chain: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
        try:
            base_path = _resolve_path(base, path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: base: {exc}") from None
        chain = _layers(base_path, (*seen, path.resolve()))
    return [*chain, (str(path), data)]


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


# ---------------------------------------------------------------------------- typed conversion
def _fail(origin: Mapping[str, str], key: str, message: str) -> ConfigError:
    return ConfigError(f"{origin.get(key, '<defaults>')}: {key}: {message}")


def _coerce(tp: Any, value: Any, key: str, origin: Mapping[str, str]) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; ConfigError names the key."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key, origin)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 2)[-1])
        raise _fail(origin, key, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, origin)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(origin, key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _fail(origin, key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _fail(origin, key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str) and value:
            return value
        raise _fail(origin, key, f"expected a non-empty string, got {value!r}")
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping) or not value:
            raise _fail(origin, key, f"expected a non-empty mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", origin) for k, v in value.items()}
    if typing.get_origin(tp) is list:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise _fail(origin, key, f"expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if tp is Any:
        return copy.deepcopy(value)
    raise TypeError(f"unsupported annotation {tp!r}")  # pragma: no cover - schema bug


def _build(cls: Any, raw: Any, prefix: str, origin: Mapping[str, str]) -> Any:
    where = f"{prefix}." if prefix else ""
    if not isinstance(raw, Mapping):
        raise _fail(origin, prefix, f"expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            section = f"in {prefix!r}" if prefix else "at top level"
            raise ConfigError(
                f"{origin.get(where + str(key), '<config>')}: unknown key {where + str(key)!r} "
                f"(valid keys {section}: {', '.join(names)})"
            )
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], where + name, origin)
    return cls(**kwargs)


def _check(cfg: ExperimentConfig, origin: Mapping[str, str]) -> None:
    """Value rules beyond types: choices, ranges, cross-field constraints."""
    def bad(key: str, message: str) -> ConfigError:
        return _fail(origin, key, message)

    if cfg.train.precision in HALF_PRECISIONS:
        raise bad("train.precision", f"{cfg.train.precision!r} keeps the weights and Adam's state in half "
                  "precision, which loses small updates; use bf16-mixed (or 16-mixed, or 32-true)")
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise bad(key, f"invalid value {value!r} (valid: {', '.join(map(str, choices))})")
    d, t = cfg.data, cfg.train
    if d.size < 32 or d.size % 32:
        lo, hi = max(32, d.size // 32 * 32), (d.size // 32 + 1) * 32
        raise bad("data.size", f"{d.size} is not divisible by 32 (5 downsamplings); use {lo} or {hi}")
    if cfg.model.encoder_weights == "imagenet" and \
            Path(origin.get("data.in_channels", "default.yaml")).name == "default.yaml":  # not chosen by the user
        d.in_channels = 3  # ImageNet weights see 3 channels (gray replicated) with ImageNet mean/std
    if d.normalize == "auto":
        d.normalize = "gray" if d.in_channels == 1 else "imagenet"
    if d.normalize == "imagenet" and d.in_channels != 3:
        raise bad("data.normalize", "imagenet normalisation needs data.in_channels: 3")
    positive = {"data.num_workers": (d.num_workers, 0), "data.fold": (d.fold, 0),
                "train.epochs": (t.epochs, 1), "train.batch_size": (t.batch_size, 1),
                "train.accumulate": (t.accumulate, 1), "train.devices": (t.devices, 1),
                "train.num_nodes": (t.num_nodes, 1),
                "train.max_steps": (t.max_steps, 1), "train.min_steps": (t.min_steps, 1),
                "schedule.warmup_steps": (cfg.schedule.warmup_steps, 0),
                "schedule.snapshots": (cfg.schedule.snapshots, 1),
                "schedule.patience": (cfg.schedule.patience, 0),
                "postprocess.min_area": (cfg.postprocess.min_area, 0)}
    for key, (value, lo) in positive.items():
        if value is not None and value < lo:
            raise bad(key, f"must be >= {lo}, got {value}")
    if cfg.optim.lr <= 0:
        raise bad("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    if t.ema is not None and not 0 < t.ema < 1:
        raise bad("train.ema", f"must be in (0, 1) (an EMA decay such as 0.99), got {t.ema}")
    if t.max_steps is not None and t.min_steps is not None and t.min_steps > t.max_steps:
        raise bad("train.min_steps", f"{t.min_steps} is more than train.max_steps={t.max_steps}")
    if cfg.model.output_prior is not None and not 0 < cfg.model.output_prior < 1:
        raise bad("model.output_prior", f"must be in (0, 1) (a foreground share such as 0.01) or null, "
                  f"got {cfg.model.output_prior}")
    if not 0 < cfg.schedule.factor < 1:
        raise bad("schedule.factor", f"must be in (0, 1), got {cfg.schedule.factor}")
    if not 0 < cfg.postprocess.threshold < 1:
        raise bad("postprocess.threshold", f"must be in (0, 1), got {cfg.postprocess.threshold}")
    if cfg.schedule.name == "snapshot" and t.max_steps is None and t.min_steps is None \
            and cfg.schedule.snapshots > t.epochs:
        raise bad("schedule.snapshots",
                  f"{cfg.schedule.snapshots} snapshots need as many epochs (train.epochs={t.epochs})")
    for key in ("train.limit_train_batches", "train.limit_val_batches"):
        value = getattr(t, key.split(".")[1])
        if value is not None and (value <= 0 or (value > 1 and not float(value).is_integer())):
            raise bad(key, f"must be a fraction in (0, 1] or a whole number of batches, got {value}")
    if cfg.sampler is not None:
        s = cfg.sampler
        for key, value in (("sampler.pos_start", s.pos_start), ("sampler.pos_end", s.pos_end)):
            if not 0 <= value <= 1:
                raise bad(key, f"must be in [0, 1], got {value}")
        from pneumoseg.data.sampler import SAMPLER_MODES  # torch: imported only when a sampler is set

        if s.mode not in SAMPLER_MODES:
            raise bad("sampler.mode", f"invalid value {s.mode!r} (valid: {', '.join(SAMPLER_MODES)})")
        if s.epoch_length is not None and s.epoch_length < 1:
            raise bad("sampler.epoch_length", f"must be >= 1, got {s.epoch_length}")
        if s.mode == "positives_once":
            if s.epoch_length is not None:
                raise bad("sampler.epoch_length", "applies to sampler.mode fixed_length only "
                          "(positives_once: each positive once per epoch, the length follows from the share)")
            for key, value in (("sampler.pos_start", s.pos_start), ("sampler.pos_end", s.pos_end)):
                if value == 0:
                    raise bad(key, "must be > 0 in sampler.mode positives_once (use fixed_length for 0)")
    if isinstance(cfg.loss, dict) and any(w < 0 for w in cfg.loss.values()):
        raise bad("loss", f"weights must be >= 0, got {cfg.loss}")
    _check_augment(cfg, origin)


def _check_augment(cfg: ExperimentConfig, origin: Mapping[str, str]) -> None:
    from pneumoseg.data.augment import build_transform  # albumentations: imported only here

    aug = cfg.augment
    if aug.transforms is not None:
        aug.preset = "custom"
    elif aug.preset == "custom":
        raise _fail(origin, "augment.preset",
                    "'custom' needs augment.transforms (a list of {name: ..., params})")
    try:
        build_transform(aug.preset, cfg.data.size, aug.transforms)
    except ConfigError as exc:
        key = "augment.transforms" if aug.transforms is not None else "augment.preset"
        raise ConfigError(f"{origin.get(key, '<defaults>')}: {exc}") from None


# ---------------------------------------------------------------------------- public API
def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment: defaults, ``base`` chain, the file, then ``overrides`` (``"a.b=value"``).

    ``path`` is a YAML file, a run folder (its ``config.yaml``), a packaged config name
    (``"winner"``) or None for the packaged default. Raises ConfigError naming the file or the
    override, the key and the valid choices.
    """
    default = packaged_config("default.yaml")
    origin: dict[str, str] = {}
    merged: dict[str, Any] = {}
    chain = _layers(default)
    if path is not None:
        target = _resolve_path(path)
        if target.resolve() != default.resolve():
            chain += _layers(target)
    for source, layer in chain:
        _merge(merged, layer, origin, source)
    for text in overrides:
        key, value = parse_override(text)
        head = key.split(".")[0]
        source = f"override {text!r}"
        if head == "sampler" and merged.get("sampler") is None and "." in key:
            merged["sampler"] = {}  # filling a field of an absent sampler starts from its defaults
        if head == "loss" and "." in key and isinstance(merged.get("loss"), dict):
            merged["loss"][key.split(".", 1)[1]] = value  # loss.focal=4 adds / changes one weight
            origin["loss"] = source
            continue
        _merge(merged, _nest(key, value), origin, source)
    cfg = _build(ExperimentConfig, merged, "", origin)
    _check(cfg, origin)
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data (every key; nothing elided)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike[str] | None = None) -> str:
    """YAML text of the resolved config; written atomically to ``path`` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        atomic_write_text(path, text)
    return text
