"""The experiment config: one typed schema, loaded from YAML, overridden by ``key=value``, dumped.

One job, hence its size: the experiment's typed schema and the loading rules around it (layers,
overrides, choice lists, one-line errors); the field docs live next to the fields.

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

The sections are pydantic v2 dataclasses: real ``dataclasses`` (``dataclasses.replace``, ``asdict``
and ``fields`` work, and construction validates), with the rules on the fields (types, choices,
ranges) and the cross-field rules in ``model_validator``\\ s. Types are strict: an integer key takes
an integer (or a whole float such as ``3.0``), never ``true`` or ``2.5`` or ``"3"``; a number key
takes an int, a float or a numeric string (YAML reads ``1e-4`` as a string); a string key a
non-empty string; a switch ``true`` / ``false`` only. Unknown keys and bad values raise ConfigError
in ONE line naming the file (or the override), the dotted key and the valid choices: pydantic's
multi-line ValidationError is turned into that line by ``load_config`` (the first problem, an
unknown key first, and how many more there are). The resolved config (``dump_config``) has no
``base`` and every key, so ``RUN/config.yaml`` reloads to the same experiment.

Normalisation (``data.normalize``): ``gray`` is ``(x / 255 - 0.5) / 0.25``; ``imagenet`` divides by
255 then subtracts the ImageNet mean and divides by its std per channel (the grayscale image is
replicated to 3 channels). ``auto`` resolves at load: ``gray`` for ``in_channels: 1``,
``imagenet`` for 3. The numbers live in ``pneumoseg.models.preprocessing.Preprocessing.from_config``,
which the run saves next to its weights.

The training budget: ``train.epochs`` epochs, or ``train.max_steps`` optimizer steps exactly
(whatever the data size; the epochs follow from the sampler's epoch lengths), or at least
``train.min_steps`` steps (more epochs when the data set is small). With a step budget or
``schedule.warmup_steps`` the schedules run over optimizer steps
(``pneumoseg.training.schedules.step_lr``); see ``pneumoseg.training.budget.plan_steps``.

Mixed precision: ``train.precision`` ``bf16-mixed`` / ``16-mixed`` are accepted; ``bf16-true`` and
``16-true`` are refused (weights and Adam's state in half precision lose small updates).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter, \
    ValidationError, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

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


# ---------------------------------------------------------------------------- field types and rules
class _Problem(ValueError):
    """A rule broken at ``key`` (dotted, relative to where the validator runs; "" = right there)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _strict_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _strict_float(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"expected a number, got {value!r}")


def _strict_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def _strict_str(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"expected a non-empty string, got {value!r}")


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {str(k): copy.deepcopy(v) for k, v in value.items()}
    raise ValueError(f"expected a non-empty mapping, got {value!r}")


def _loss(value: Any) -> str | dict[str, float]:
    """A loss name, or ``{name: weight}`` with numeric weights >= 0."""
    if isinstance(value, str):
        return _strict_str(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a loss name or a non-empty mapping {{name: weight}}, got {value!r}")
    weights = {}
    for name, weight in _mapping(value).items():
        try:
            weights[name] = _strict_float(weight)
        except ValueError as exc:
            raise _Problem(name, str(exc)) from None
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0, got {weights}")
    return weights


def _rule(test: Callable[[Any], bool], message: str) -> AfterValidator:
    """A value rule; ``message`` is formatted with the value as ``{v}``."""
    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(message.format(v=value))
        return value
    return AfterValidator(check)


def _choice(key: str) -> AfterValidator:
    return _rule(lambda v: v in CHOICES[key], f"invalid value {{v!r}} (valid: {', '.join(map(str, CHOICES[key]))})")


def _open_unit(note: str = "") -> AfterValidator:
    return _rule(lambda v: 0 < v < 1, f"must be in (0, 1){note}, got {{v}}")


def _not_half(value: str) -> str:
    if value in HALF_PRECISIONS:
        raise ValueError(f"{value!r} keeps the weights and Adam's state in half precision, which loses small "
                         "updates; use bf16-mixed (or 16-mixed, or 32-true)")
    return value


def _size(value: int) -> int:
    if value < 32 or value % 32:
        lo, hi = max(32, value // 32 * 32), (value // 32 + 1) * 32
        raise ValueError(f"{value} is not divisible by 32 (5 downsamplings); use {lo} or {hi}")
    return value


def _sampler_mode(value: str) -> str:
    from pneumoseg.data.sampler import SAMPLER_MODES  # torch: imported only when a sampler is set

    if value not in SAMPLER_MODES:
        raise ValueError(f"invalid value {value!r} (valid: {', '.join(SAMPLER_MODES)})")
    return value


Int = Annotated[int, BeforeValidator(_strict_int)]
Float = Annotated[float, BeforeValidator(_strict_float)]
Bool = Annotated[bool, PlainValidator(_strict_bool)]
Str = Annotated[str, BeforeValidator(_strict_str)]
Count = Annotated[Int, Field(ge=1)]       #: >= 1
Natural = Annotated[Int, Field(ge=0)]     #: >= 0
Share = Annotated[Float, _rule(lambda v: 0 <= v <= 1, "must be in [0, 1], got {v}")]
Limit = Annotated[Float, _rule(lambda v: 0 < v <= 1 or (v > 1 and v.is_integer()),
                               "must be a fraction in (0, 1] or a whole number of batches, got {v}")]

#: the sections: unknown keys are refused (the error lists the valid ones)
_SECTION = ConfigDict(extra="forbid")


@dataclass(config=_SECTION)
class DataConfig:
    cache: Str | None = None          #: the prepared cache folder (``pneumoseg prepare``)
    fold: Natural | None = None       #: None: splits.csv's train/val; k: fold k is validation
    size: Annotated[Int, AfterValidator(_size)] = 512  #: training size (divisible by 32); cache resized on the fly
    in_channels: Annotated[Int, _choice("data.in_channels")] = 1  #: 1 (grayscale) or 3 (replicated)
    normalize: Annotated[Str, _choice("data.normalize")] = "auto"  #: gray | imagenet | auto (module docstring)
    num_workers: Natural | None = None  #: loader workers; None = min(8, CPU count)


@dataclass(config=_SECTION)
class ModelConfig:
    name: Str = "unet-resnet34"       #: a name from ``pneumoseg.models.list_models()``
    encoder_weights: Str | None = None  #: None, "imagenet" (needs internet) or a local file
    aux_classifier: Bool = False      #: image-level head; trained with BCE on "any pneumothorax"
    aux_weight: Float = 0.1           #: weight of that BCE in the loss
    #: initial foreground probability of the mask head: its bias starts at log(p / (1 - p)) (RetinaNet's
    #: prior), so the first steps do not spend themselves pushing p = 0.5 everywhere down; None: PyTorch's init
    output_prior: Annotated[Float, _open_unit(" (a foreground share such as 0.01) or null")] | None = 0.01


@dataclass(config=_SECTION)
class OptimConfig:
    name: Annotated[Str, _choice("optim.name")] = "adam"
    lr: Annotated[Float, Field(gt=0)] = 1e-3
    weight_decay: Float = 0.0
    momentum: Float = 0.9             #: sgd only


@dataclass(config=_SECTION)
class ScheduleConfig:
    name: Annotated[Str, _choice("schedule.name")] = "snapshot"
    snapshots: Count = 1              #: snapshot: M cycles over train.epochs
    min_lr: Float = 0.0               #: cosine: eta_min; plateau: lowest lr
    factor: Annotated[Float, _open_unit()] = 0.5  #: plateau: lr multiplier
    patience: Natural = 2             #: plateau: epochs without improvement
    warmup_steps: Natural = 0         #: linear warm-up over the first N optimizer steps (step schedules)


@dataclass(config=_SECTION)
class SamplerConfig:
    pos_start: Share = 0.8            #: share of positives in the first epoch
    pos_end: Share = 0.4              #: ... in the last epoch (linear in between)
    #: positives_once (winner: each positive once) | fixed_length (pneumoseg.data.sampler.SAMPLER_MODES)
    mode: Annotated[Str, AfterValidator(_sampler_mode)] = "positives_once"
    epoch_length: Count | None = None  #: fixed_length only: images per epoch; None = train split size

    @model_validator(mode="after")
    def _positives_once(self) -> SamplerConfig:
        if self.mode == "positives_once":
            if self.epoch_length is not None:
                raise _Problem("epoch_length", "applies to sampler.mode fixed_length only "
                               "(positives_once: each positive once per epoch, the length follows from the share)")
            for key in ("pos_start", "pos_end"):
                if getattr(self, key) == 0:
                    raise _Problem(key, "must be > 0 in sampler.mode positives_once (use fixed_length for 0)")
        return self


@dataclass(config=_SECTION)
class AugmentConfig:
    #: seed | light | winner | none; "custom" when transforms are given
    preset: Annotated[Str, _choice("augment.preset")] = "seed"
    #: [{name: HorizontalFlip, p: 0.5}, ...]
    transforms: list[Annotated[dict[str, Any], PlainValidator(_mapping)]] | None = None

    @model_validator(mode="after")
    def _custom(self) -> AugmentConfig:
        if self.transforms is not None:
            self.preset = "custom"
        elif self.preset == "custom":
            raise _Problem("preset", "'custom' needs augment.transforms (a list of {name: ..., params})")
        return self


@dataclass(config=_SECTION)
class TrainConfig:
    epochs: Count = 30                #: the budget in epochs, unless max_steps / min_steps decide
    max_steps: Count | None = None    #: the budget in optimizer steps, whatever the data size
    min_steps: Count | None = None    #: at least this many optimizer steps (more epochs on small data)
    batch_size: Count = 8
    #: "bf16-mixed" / "16-mixed" on GPU ("*-true" half: refused)
    precision: Annotated[Str, AfterValidator(_not_half), _choice("train.precision")] = "32-true"
    accumulate: Count = 1             #: gradient accumulation (batches)
    seed: Int = 42
    devices: Count = 1                #: GPUs per node; > 1: DDP
    num_nodes: Count = 1              #: nodes (torchrun / SLURM; see pneumoseg.training.run)
    accelerator: Annotated[Str, _choice("train.accelerator")] = "auto"
    channels_last: Bool = True        #: applied on CUDA only
    #: val metric for best.ckpt (max; "loss": min); see training.module
    monitor: Annotated[Str, _choice("train.monitor")] = "dice_kaggle_tuned"
    deterministic: Bool = True        #: deterministic algorithms; false: cuDNN autotuning (faster)
    train_dice: Bool = True           #: Dice of training batches (counted on the device, no host sync)
    grad_clip: Float | None = None
    limit_train_batches: Limit | None = None  #: < 1: fraction; >= 1: number of batches
    limit_val_batches: Limit | None = None
    #: EMA of the weights (decay, e.g. 0.99): validated and saved
    ema: Annotated[Float, _open_unit(" (an EMA decay such as 0.99)")] | None = None
    logger: Annotated[Str, _choice("train.logger")] = "csv"  #: csv (RUN/logs) | tensorboard | mlflow | wandb | none
    strict_size: Bool = False         #: refuse (not only warn) when the cache size differs from data.size

    @model_validator(mode="after")
    def _budget(self) -> TrainConfig:
        if self.max_steps is not None and self.min_steps is not None and self.min_steps > self.max_steps:
            raise _Problem("min_steps", f"{self.min_steps} is more than train.max_steps={self.max_steps}")
        return self


@dataclass(config=_SECTION)
class PostprocessConfig:
    threshold: Annotated[Float, _open_unit()] = 0.5  #: probability threshold used in validation
    min_area: Natural = 0             #: drop predicted masks smaller than this (pixels)


@dataclass(config=_SECTION)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: Annotated[str | dict[str, float], PlainValidator(_loss)] = "bce_dice"  #: a loss name or {name: weight}
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    @model_validator(mode="after")
    def _across_sections(self, info: ValidationInfo) -> ExperimentConfig:
        """Rules between sections; ``info.context["origin"]`` (from load_config) says who set each key."""
        d, t = self.data, self.train
        origin = (info.context or {}).get("origin")
        if origin is not None and self.model.encoder_weights == "imagenet" and \
                Path(origin.get("data.in_channels", "default.yaml")).name == "default.yaml":  # not the user's
            d.in_channels = 3  # ImageNet weights see 3 channels (gray replicated) with ImageNet mean/std
        if d.normalize == "auto":
            d.normalize = "gray" if d.in_channels == 1 else "imagenet"
        if d.normalize == "imagenet" and d.in_channels != 3:
            raise _Problem("data.normalize", "imagenet normalisation needs data.in_channels: 3")
        if self.schedule.name == "snapshot" and t.max_steps is None and t.min_steps is None \
                and self.schedule.snapshots > t.epochs:
            raise _Problem("schedule.snapshots",
                           f"{self.schedule.snapshots} snapshots need as many epochs (train.epochs={t.epochs})")
        return self


#: the section class of each dotted prefix (unknown-key messages list its keys)
_SECTIONS: dict[str, type] = {"": ExperimentConfig, "data": DataConfig, "model": ModelConfig,
                              "optim": OptimConfig, "schedule": ScheduleConfig, "sampler": SamplerConfig,
                              "augment": AugmentConfig, "train": TrainConfig, "postprocess": PostprocessConfig}


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


# ---------------------------------------------------------------------------- pydantic errors -> one line
def _dotted(loc: Sequence[str | int]) -> str:
    """``("augment", "transforms", 0, "p")`` -> ``"augment.transforms[0].p"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _source(origin: Mapping[str, str], loc: Sequence[str | int], default: str = "<defaults>") -> str:
    """Who set ``loc``: the file or override of the key, else of the nearest enclosing key."""
    for n in range(len(loc), 0, -1):
        key = _dotted(loc[:n])
        if key in origin:
            return origin[key]
    return default


def _one_line(exc: ValidationError, origin: Mapping[str, str]) -> ConfigError:
    """The first problem of a ValidationError (an unknown key first) as ``SOURCE: KEY: what is wrong``."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    error = (unknown or errors)[0]
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    loc, value, ctx = list(error["loc"]), error["input"], error.get("ctx", {})
    if error in unknown:
        key, prefix = _dotted(loc), _dotted(loc[:-1])
        section = f"in {prefix!r}" if prefix else "at top level"
        names = ", ".join(_SECTIONS[prefix].__dataclass_fields__)
        return ConfigError(f"{origin.get(key, '<config>')}: unknown key {key!r} (valid keys {section}: {names}){more}")
    if isinstance(ctx.get("error"), _Problem):
        loc += [p for p in ctx["error"].key.split(".") if p]
    message = {
        "value_error": lambda: str(ctx.get("error")),
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}, got {value}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}, got {value}",
        "dataclass_type": lambda: f"expected a mapping of keys, got {value!r}",
        "list_type": lambda: f"expected a list, got {value!r}",
    }.get(error["type"], lambda: f"{error['msg']}, got {value!r}")()
    return ConfigError(f"{_source(origin, loc)}: {_dotted(loc)}: {message}{more}")


def _check_augment(cfg: ExperimentConfig, origin: Mapping[str, str]) -> None:
    """Can albumentations build the augmentation (names and parameters of custom transforms)?"""
    from pneumoseg.data.augment import build_transform  # albumentations: imported only here

    aug = cfg.augment
    try:
        build_transform(aug.preset, cfg.data.size, aug.transforms)
    except ConfigError as exc:
        key = "augment.transforms" if aug.transforms is not None else "augment.preset"
        raise ConfigError(f"{origin.get(key, '<defaults>')}: {exc}") from None


_EXPERIMENT = TypeAdapter(ExperimentConfig)


# ---------------------------------------------------------------------------- public API
def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Sequence[str] = (), *, check_augment: bool = True) -> ExperimentConfig:
    """Load an experiment: defaults, ``base`` chain, the file, then ``overrides`` (``"a.b=value"``).

    ``path`` is a YAML file, a run folder (its ``config.yaml``), a packaged config name
    (``"winner"``) or None for the packaged default. Raises ConfigError (one line) naming the file
    or the override, the key and the valid choices. ``check_augment``: build the augmentation once
    to check it (imports albumentations); off where a trained run's config is read for inference
    (``pneumoseg.runs.read_run_config``), which does not augment.
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
    try:
        cfg = _EXPERIMENT.validate_python(merged, context={"origin": origin})
    except ValidationError as exc:
        raise _one_line(exc, origin) from None
    if check_augment:
        _check_augment(cfg, origin)
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data (every key; nothing elided)."""
    return asdict(cfg)


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike[str] | None = None) -> str:
    """YAML text of the resolved config; written atomically to ``path`` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        atomic_write_text(path, text)
    return text
