"""A study in one command: named experiments on one shared split, trained, tuned, evaluated, compared.

A study file (YAML; ``pneumoseg/configs/seed_study.yaml`` is packaged)::

    name: seed_study            # optional; default: the file's stem
    cache: null                 # the shared prepared cache (or --cache); its splits.csv is the split
    split: test                 # evaluated and compared split
    folds: 0                    # K >= 2: train K folds per experiment (`pneumoseg split CACHE --folds K`)
    set: [train.epochs=30]      # overrides applied to every experiment
    experiments:
      - {name: seed_unet, config: seed_unet, set: [loss=bce_dice]}

Layout of ``STUDY/`` (``run_study``)::

    STUDY/study.json                  stages done per experiment, with each config's fingerprint
    STUDY/<name>/                     a run folder (folds 0), or, with K folds:
    STUDY/<name>/fold-<k>/            one run folder per fold (data.fold = k)
    STUDY/<name>/config.yaml          (K folds) fold 0's config, for compare and report
    STUDY/<name>/folds.json           (K folds) per-fold scores, mean +/- sd, the out-of-fold metrics
    STUDY/<name>/eval/oof/            (K folds) the pooled out-of-fold predictions, scored like a split
    STUDY/<name>/eval/<split>/        the evaluation of ``split`` (K folds: the K-fold ensemble)
    STUDY/<name>/report.html          the run's report of ``split`` (+ .md; rewritten by every run)
    STUDY/compare.html, compare.md    `pneumoseg compare` of every experiment on ``split``

Resumable: a finished stage (train, tune, evaluate) of an experiment is skipped; a killed training
resumes from its ``last.ckpt``. A finished experiment whose resolved config changed is refused
(its results would not match the study file).

K folds (``train_folds``): each fold trains with fold k as validation; the post-processing is tuned
out of fold (``tune_runs(runs, oof=True)``: each model on its own validation fold, pooled) and the
pooled predictions are scored with that rule (``pneumoseg.evaluation.evaluate.evaluate_items``). The rule is
tuned on the same pooled images, so the out-of-fold score is slightly optimistic; the held-out
split evaluated by the K-fold ensemble is the unbiased figure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.config import ExperimentConfig, config_to_dict, dump_config, load_config, packaged_config
from pneumoseg.data.dataset import SPLITS
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.evaluation.cases import cache_loader
from pneumoseg.evaluation.evaluate import evaluate_items, evaluate_run, iter_split
from pneumoseg.runs import eval_dir
from pneumoseg.training.kfold import best_val, fold_dirs, train_all_folds, train_once, with_fold
from pneumoseg.util.paths import safe_name

if TYPE_CHECKING:
    from pneumoseg.reporting.report import ReportFiles

__all__ = [
    "Experiment",
    "FoldSummary",
    "StudyResult",
    "StudySpec",
    "fold_dirs",
    "load_study",
    "run_study",
    "train_folds",
    "train_once",
]

STATE_FILE = "study.json"
FOLDS_FILE = "folds.json"
_KEYS = {"name", "cache", "split", "folds", "set", "experiments"}
_EXPERIMENT_KEYS = {"name", "config", "set"}


@dataclass(frozen=True)
class Experiment:
    """One member: an experiment config (file or packaged name) and its ``key=value`` overrides."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudySpec:
    """A study file, resolved: experiments, the shared cache, the evaluated split and the folds."""

    name: str
    experiments: tuple[Experiment, ...]
    source: Path
    cache: str | None = None
    split: str = "test"
    folds: int = 0
    overrides: tuple[str, ...] = ()

    def with_options(self, cache: str | os.PathLike[str] | None = None, folds: int | None = None) -> StudySpec:
        """This study with another shared cache and / or folds (the command line's ``--cache`` / ``--folds``).

        ConfigError for folds other than 0 (train/val/test) or K >= 2.
        """
        spec = self
        if cache is not None:
            spec = dataclasses.replace(spec, cache=str(cache))
        if folds is not None:
            if folds < 0 or folds == 1:
                raise ConfigError(f"--folds {folds}: 0 (train/val/test) or K >= 2")
            spec = dataclasses.replace(spec, folds=folds)
        return spec

    def config(self, exp: Experiment, extra: Sequence[str] = ()) -> ExperimentConfig:
        """The experiment's resolved config: its file, the study's ``set``, its own ``set``, ``extra``."""
        cache = [f"data.cache={json.dumps(self.cache)}"] if self.cache else []
        return load_config(exp.config, [*cache, *self.overrides, *exp.overrides, *extra])

    def configs(self, extra: Sequence[str] = ()) -> dict[str, ExperimentConfig]:
        """Every experiment's resolved config (``config``), by name; ConfigError naming one without a cache."""
        cfgs = {exp.name: self.config(exp, extra) for exp in self.experiments}
        for name, cfg in cfgs.items():
            if not cfg.data.cache:
                raise ConfigError(f"{self.source}: experiment {name!r} has no data.cache (set cache: in the study "
                                  "file or pass --cache)")
        return cfgs

    def caches(self, extra: Sequence[str] = ()) -> list[str]:
        """The caches the experiments really train on (resolved configs, ``extra`` applied), each once, in order."""
        return list(dict.fromkeys(str(cfg.data.cache) for cfg in self.configs(extra).values()))


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of KEY=VALUE strings, got {value!r}")
    return tuple(value)


def _experiment_config(text: Any, folder: Path, where: str) -> str:
    """A config file relative to the study file's folder when one exists there, else the name as given."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: config must be a YAML file or a packaged config name, got {text!r}")
    local = folder / text
    return str(local) if local.is_file() else text


def load_study(path: str | os.PathLike[str]) -> StudySpec:
    """Read a study YAML (a file, or a packaged name such as ``seed_study``); ConfigError naming the key."""
    source = Path(path)
    if not source.is_file():
        source = packaged_config(str(path))
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: cannot read the study file ({exc})".replace("\n", " ")) from None
    if not isinstance(raw, dict) or "experiments" not in raw:
        raise ConfigError(f"{source}: not a study file (needs an 'experiments:' list; keys: {sorted(_KEYS)})")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} (valid: {sorted(_KEYS)})")
    items = raw["experiments"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: experiments must be a non-empty list of {{name, config, set}}")
    exps: list[Experiment] = []
    for k, item in enumerate(items):
        where = f"{source} experiments[{k}]"
        if not isinstance(item, dict) or "name" not in item or "config" not in item:
            raise ConfigError(f"{where}: expected a mapping with name and config, got {item!r}")
        bad = sorted(set(item) - _EXPERIMENT_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad} (valid: {sorted(_EXPERIMENT_KEYS)})")
        name = safe_name(str(item["name"]), where, "experiment name")
        if name in {e.name for e in exps}:
            raise ConfigError(f"{where}: experiment name {name!r} used twice")
        exps.append(Experiment(name, _experiment_config(item["config"], source.parent, where),
                               _strings(item.get("set"), f"{where} set")))
    split = raw.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"{source}: split {split!r} unknown (valid: {', '.join(SPLITS)})")
    folds = raw.get("folds", 0)
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 0 or folds == 1:
        raise ConfigError(f"{source}: folds {folds!r}: 0 (train/val/test) or K >= 2")
    cache = raw.get("cache")
    return StudySpec(str(raw.get("name") or source.stem), tuple(exps), source,
                     str(cache) if cache is not None else None, split, folds, _strings(raw.get("set"), f"{source} set"))


# ---------------------------------------------------------------- state


@dataclass
class _State:
    """``study.json``: for each experiment its config fingerprint and the stages done (atomic rewrites)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> _State:
        if not path.is_file():
            return cls(path, {"experiments": {}})
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); delete it to start the study again") from None
        return cls(path, data)

    def member(self, name: str, fingerprint: str, where: Path) -> dict[str, Any]:
        members = self.data.setdefault("experiments", {})
        entry = members.setdefault(name, {"config": fingerprint, "done": []})
        if entry["config"] != fingerprint:
            if entry["done"]:
                raise DataError(f"{where}: experiment {name!r} was run with another config (the study file or "
                                f"the overrides changed); delete {where} or rename the experiment")
            entry["config"] = fingerprint
        return entry

    def done(self, name: str, stage: str) -> bool:
        return stage in self.data["experiments"][name]["done"]

    def mark(self, name: str, stage: str) -> None:
        self.data["experiments"][name]["done"].append(stage)
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def _fingerprint(cfgs: Sequence[ExperimentConfig]) -> str:
    text = json.dumps([config_to_dict(c) for c in cfgs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class FoldSummary:
    """K-fold results: per-fold scores, their mean and sd (ddof 1), the out-of-fold metrics and rule."""

    runs: list[Path]
    per_fold: pd.DataFrame
    oof: dict[str, Any]
    rule: str

    def mean_sd(self, column: str) -> tuple[float, float]:
        values = self.per_fold[column].to_numpy(float)
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": [str(r) for r in self.runs], "per_fold": self.per_fold.to_dict("records")}
        for col in self.per_fold.columns.drop("fold"):
            mean, sd = self.mean_sd(col)
            out[f"{col}_mean"], out[f"{col}_sd"] = mean, sd
        out.update(oof_postprocess=self.rule, oof=self.oof)
        return out


def train_folds(cfg: ExperimentConfig, out: str | os.PathLike[str], folds: int, progress: bool = True,
                is_done: Callable[[str], bool] = lambda stage: False,
                mark: Callable[[str], None] = lambda stage: None, device: str | None = None) -> FoldSummary:
    """Train every fold of ``cfg`` into ``OUT/fold-k``, tune out of fold, score the pooled predictions.

    Writes ``OUT/config.yaml`` (fold 0's), ``OUT/eval/oof/`` (the split files) and ``OUT/folds.json``.
    Folds whose training finished (a ``history.csv`` and no ``is_done``: see ``run_study``) are
    resumed or skipped as ``train_once`` / ``is_done`` say (``pneumoseg.training.kfold``; ``FoldMarkers``
    are ``train --folds K``'s). Per fold: ``val_<monitor>`` (best epoch, training resolution) and
    ``oof_dice_kaggle`` (native resolution, the out-of-fold rule).
    """
    from pneumoseg.inference.predictor import Predictor
    from pneumoseg.evaluation.tune import tune_runs

    out = Path(out)
    runs = train_all_folds(cfg, out, folds, progress, is_done, mark)
    dump_config(with_fold(cfg, 0), out / "config.yaml")
    result = tune_runs(runs, oof=True, device=device, progress=progress)
    rule = result.rule
    predictors = [Predictor([run], postprocess=rule, device=device) for run in runs]
    items = itertools.chain.from_iterable(iter_split(p, "val", progress) for p in predictors)
    loader = cache_loader(Path(cfg.data.cache or ""), predictors[0].size)
    oof = evaluate_items(predictors[0], items, out / "eval" / "oof", "oof", loader, rule,
                         extra={"folds": folds, "runs": [str(r) for r in runs],
                                "note": "rule tuned on these pooled out-of-fold predictions (slightly optimistic)"})
    per_image = pd.read_csv(out / "eval" / "oof" / "per_image.csv", dtype={"image_id": str})
    rows = []
    for k, predictor in enumerate(predictors):
        ids = set(_val_ids(predictor))
        dice = per_image.loc[per_image["image_id"].isin(ids), "dice"]
        rows.append({"fold": k, f"val_{cfg.train.monitor}": best_val(runs[k], cfg.train.monitor),
                     "oof_dice_kaggle": float(dice.mean()) if len(dice) else math.nan, "n_images": len(dice)})
    summary = FoldSummary(runs, pd.DataFrame(rows), oof, rule.describe())
    atomic_write_text(out / FOLDS_FILE, json.dumps(summary.to_dict(), indent=2, allow_nan=True) + "\n")
    return summary


def _val_ids(predictor: Any) -> list[str]:
    from pneumoseg.data.dataset import split_ids

    return split_ids(predictor.cfg.data.cache, "val", predictor.cfg.data.fold)


# ---------------------------------------------------------------- the study


@dataclass
class StudyResult:
    """Where each experiment's evaluated run is, what was skipped, and the comparison page."""

    out_dir: Path
    runs: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    folds: dict[str, FoldSummary] = field(default_factory=dict)
    reports: dict[str, ReportFiles] = field(default_factory=dict)
    compare_html: Path | None = None


def run_study(spec: StudySpec, out_dir: str | os.PathLike[str], overrides: Sequence[str] = (),
              progress: bool = True, device: str | None = None,
              log: Callable[[str], None] = lambda line: None, reports: bool = True) -> StudyResult:
    """Train, tune and evaluate every experiment of ``spec`` into ``OUT/<name>/``, then compare them.

    ``overrides`` apply to every experiment after the study's own. Finished stages are skipped (see
    the module docstring); ``log`` receives one line per stage. With ``reports`` each experiment's
    report of ``spec.split`` is (re)written, ``OUT/<name>/report.html`` + ``.md`` (``result.reports``).
    """
    from pneumoseg.reporting.compare import compare_runs, write_comparison
    from pneumoseg.reporting.report import write_report
    from pneumoseg.inference.predictor import Predictor
    from pneumoseg.evaluation.tune import tune_runs

    out = Path(out_dir)
    state = _State.open(out / STATE_FILE)
    result = StudyResult(out)
    cfgs = spec.configs(overrides)
    for exp in spec.experiments:
        cfg, member = cfgs[exp.name], out / exp.name
        folds = [with_fold(cfg, k) for k in range(spec.folds)] if spec.folds else [cfg]
        state.member(exp.name, _fingerprint(folds), member)
        skipped = result.skipped.setdefault(exp.name, [])

        def is_done(stage: str, name: str = exp.name, skipped: list[str] = skipped) -> bool:
            done = state.done(name, stage)
            if done:
                skipped.append(stage)
            return done

        def mark(stage: str, name: str = exp.name) -> None:
            state.mark(name, stage)
            log(f"{name}: {stage} done")

        if spec.folds:
            runs = fold_dirs(member, spec.folds)
            if not is_done("tune"):
                result.folds[exp.name] = train_folds(cfg, member, spec.folds, progress, is_done, mark, device)
                mark("tune")
            predictor_runs = runs
        else:
            if not is_done("train"):
                train_once(cfg, member, progress)
                mark("train")
            if not is_done("tune"):
                tune_runs([member], split="val", device=device, progress=progress)
                mark("tune")
            predictor_runs = [member]
        if not is_done("evaluate"):
            predictor = Predictor(predictor_runs, device=device)
            evaluate_run(predictor, member, spec.split, progress=progress)
            mark("evaluate")
        result.runs[exp.name] = member
        result.metrics[exp.name] = json.loads((eval_dir(member, spec.split) / "metrics.json").read_text())
    if len(result.runs) >= 2:
        comparison = compare_runs(list(result.runs.values()), spec.split)
        result.compare_html, _ = write_comparison(comparison, out / "compare.html")
    if reports:
        for name, run in result.runs.items():
            result.reports[name] = write_report(run, eval_dir=eval_dir(run, spec.split))
    return result
