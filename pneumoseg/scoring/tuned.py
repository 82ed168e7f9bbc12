"""The rules ``pneumoseg tune`` found, as stored in run folders, and which weights they belong to.

``TunedRule`` records which weights (SHA-256 of each checkpoint) and TTA setting a rule was tuned
for, so ``predict`` uses a rule only for the ensemble it was tuned on, wherever its run folders are
copied or moved. In each run folder: ``postprocess.json`` (``TUNED_NAME``: ``{"tuned": [record,
...]}``), ``tune.csv`` (``TUNE_TABLE``: every rule a single run's tuning scored) and
``tune-ensembles/<16 hex>.csv`` (``TUNE_ENSEMBLES``: an ensemble's). A ``postprocess.json`` holding a
bare rule was written by an older pneumoseg (areas at the model's size): it is ignored, and
``legacy_rule_present`` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumoseg.errors import ConfigError
from pneumoseg.scoring.postprocess import PostProcess, read_rule_json
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.digest import file_sha256

__all__ = [
    "TUNED_NAME",
    "TUNE_ENSEMBLES",
    "TUNE_TABLE",
    "TunedRule",
    "checkpoint_digests",
    "find_tuned",
    "legacy_rule_present",
    "save_tuned",
]

TUNED_NAME = "postprocess.json"  #: where ``pneumoseg tune`` stores its rules in each run folder


@dataclass(frozen=True)
class TunedRule:
    """A rule found by ``pneumoseg tune`` and what it was tuned for.

    The key is the content: ``weights``, the SHA-256 of each member's weight file (sorted; one
    entry per member, so a run folder copied or moved anywhere keeps its rule), and ``tta``.
    ``predict`` uses the rule only for the same weights and TTA. ``runs`` (the folders as tuned,
    resolved) and ``checkpoint`` (its name there) are for people. ``split``: ``val`` etc., or
    ``oof`` (each fold's model on its own validation fold, pooled). ``dice_kaggle`` of the rule and
    ``default_dice_kaggle`` of the untuned default on the same images. ``table``: the file, in each
    run folder, with every rule scored (``tune.csv`` for one run, ``tune-ensembles/<id>.csv`` for
    an ensemble, so an ensemble's sweep never replaces a run's own). Records written before
    content keys (no ``weights``) still match by their resolved run paths, checkpoint and TTA.
    """

    rule: PostProcess
    runs: tuple[str, ...]
    checkpoint: str
    tta: bool
    split: str
    n_images: int
    dice_kaggle: float
    default_dice_kaggle: float
    weights: tuple[str, ...] = ()
    table: str = ""

    @staticmethod
    def content_key(weights: Sequence[str], tta: bool) -> tuple[Any, ...]:
        """The key of an ensemble: its members' weight digests (sorted) and TTA."""
        return ("sha256", tuple(sorted(weights)), bool(tta))

    @staticmethod
    def key_of(runs: Sequence[str | os.PathLike[str]], checkpoint: str, tta: bool) -> tuple[Any, ...]:
        """The key of a record without ``weights`` (written before content keys): resolved, sorted
        run folders (``key_of(...)[0]``, what ``runs`` holds), checkpoint name and TTA."""
        return (tuple(sorted(str(Path(r).resolve()) for r in runs)), checkpoint, bool(tta))

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.content_key(self.weights, self.tta) if self.weights
                else (self.runs, self.checkpoint, self.tta))

    @property
    def ensemble(self) -> bool:
        return len(self.weights or self.runs) > 1

    def table_name(self) -> str:
        """``tune.csv`` for one run, else ``tune-ensembles/<16 hex of the key>.csv``."""
        if not self.ensemble:
            return TUNE_TABLE
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        return f"{TUNE_ENSEMBLES}/{digest}.csv"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "weights": list(self.weights), "tta": self.tta, "runs": list(self.runs),
                "checkpoint": self.checkpoint, "split": self.split, "n_images": self.n_images,
                "dice_kaggle": self.dice_kaggle, "default_dice_kaggle": self.default_dice_kaggle,
                "table": self.table}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TunedRule:
        try:
            return cls(PostProcess.from_dict(data["rule"]), tuple(data["runs"]), str(data["checkpoint"]),
                       bool(data["tta"]), str(data["split"]), int(data["n_images"]), float(data["dice_kaggle"]),
                       float(data["default_dice_kaggle"]), tuple(str(w) for w in data.get("weights", ())),
                       str(data.get("table", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tuned rule record is malformed ({exc})") from None


TUNE_TABLE = "tune.csv"  #: every rule scored by a single run's tuning (the report's threshold sweep)
TUNE_ENSEMBLES = "tune-ensembles"  #: ensembles' tables, one per key: never a member's own tune.csv


def _read_tuned(run_dir: str | os.PathLike[str]) -> list[TunedRule]:
    """The records of ``RUN/postprocess.json``; [] when absent or written by an older pneumoseg.

    Older files (a bare rule, tuned at the model's size: areas in model pixels) are ignored: their
    ``min_area`` means something else now, so using them would be wrong.
    """
    path = Path(run_dir) / TUNED_NAME
    if not path.is_file():
        return []
    data = read_rule_json(path)
    if "tuned" not in data:
        return []
    try:
        return [TunedRule.from_dict(d) for d in data["tuned"]]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def checkpoint_digests(runs: Sequence[str | os.PathLike[str]], checkpoint: str) -> list[str]:
    """Hex SHA-256 of each run's weights, in order: ``checkpoint`` itself when it is a ``.ckpt``
    file, else ``RUN/checkpoints/<checkpoint>.ckpt``; [] when a run has no such file."""
    files = [Path(checkpoint) if checkpoint.endswith(".ckpt") and Path(checkpoint).is_file()
             else Path(r) / "checkpoints" / f"{checkpoint}.ckpt" for r in runs]
    try:
        return [file_sha256(f) for f in files]
    except OSError:
        return []


def save_tuned(record: TunedRule, run_dirs: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Store ``record`` in ``postprocess.json`` of every run folder (default ``record.runs``),
    replacing one with the same key (and a path-keyed one of the same runs, checkpoint and TTA)."""
    written = []
    legacy = (record.runs, record.checkpoint, record.tta)
    for run in record.runs if run_dirs is None else run_dirs:
        kept = [r for r in _read_tuned(run) if r.key not in (record.key, legacy)]
        path = Path(run) / TUNED_NAME
        payload = {"tuned": [r.to_dict() for r in (*kept, record)]}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        written.append(path)
    return written


def find_tuned(runs: Sequence[str | os.PathLike[str]], checkpoint: str, tta: bool,
               weights: Sequence[str] | None = None) -> TunedRule | None:
    """The rule tuned for exactly these weights and TTA setting, or None.

    ``weights``: the SHA-256 of each member's weight file (default: ``checkpoint_digests(runs,
    checkpoint)``). Looked up in the first run folder's ``postprocess.json``, wherever the folder
    lies now. A record from before content keys matches when it names these runs (resolved),
    ``checkpoint`` and ``tta``.
    """
    if not runs:
        return None
    digests = checkpoint_digests(runs, checkpoint) if weights is None else list(weights)
    keys = [TunedRule.key_of(runs, checkpoint, tta)]
    if digests:
        keys.append(TunedRule.content_key(digests, tta))
    return next((r for r in reversed(_read_tuned(runs[0])) if r.key in keys), None)


def legacy_rule_present(run_dir: str | os.PathLike[str]) -> bool:
    """True when ``RUN/postprocess.json`` is an older single rule (model-size areas), now ignored."""
    path = Path(run_dir) / TUNED_NAME
    return path.is_file() and "tuned" not in read_rule_json(path)
