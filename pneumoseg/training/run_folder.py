"""A run folder on disk: where a run goes, its preprocessing file, its checkpoints, the network it holds.

What inference, export, the service and the PACS node need to load a run, without Lightning (see
``pneumoseg.training.run`` for the folder's layout and ``train``). ``load_run(RUN)`` rebuilds the
network of ``RUN/config.yaml`` (:func:`build_model`) and loads a checkpoint's ``net.*`` weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from pneumoseg.config import ExperimentConfig, dump_config
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.models import create_model
from pneumoseg.models.heads import init_output_bias
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.runs import read_run_config
from pneumoseg.training.provenance import build_provenance, save_provenance
from pneumoseg.util.atomic import atomic_path, atomic_write_text

__all__ = [
    "PREPROCESSING_FILE",
    "RUN_DIR_ENV",
    "build_model",
    "default_run_dir",
    "init_run",
    "list_checkpoints",
    "load_preprocessing",
    "load_run",
    "resolve_checkpoint",
    "run_dir_for_ranks",
    "save_preprocessing",
]

#: the environment variable the ``pneumoseg train`` command leaves its run folder in for the processes
#: Lightning relaunches for DDP ranks 1..N-1 (read by the command only: see :func:`default_run_dir`)
RUN_DIR_ENV = "PNEUMOSEG_RUN_DIR"
PREPROCESSING_FILE = "preprocessing.json"


def default_run_dir(config: str | os.PathLike[str] | None, root: str | os.PathLike[str] = "runs",
                    inherited: str | os.PathLike[str] | None = None) -> Path:
    """The run folder when none is given: ``<root>/<config stem>-<YYYYmmdd-HHMMSS>`` (local time).

    ``config``: the experiment file (a run folder's ``config.yaml`` names the folder; None: "default").
    ``inherited``: a folder already chosen for this run, returned as given (empty: ignored). DDP ranks
    relaunched by Lightning run the command again, later on the clock: the command passes the folder
    rank 0 chose (``os.environ.get(RUN_DIR_ENV)``, which it set before training) so every rank writes
    into the same one. Nothing here reads the environment.
    """
    if inherited:
        return Path(inherited)
    stem = Path(config).stem if config is not None else "default"
    if stem == "config":  # a run folder's config.yaml
        stem = Path(config).parent.name if config is not None else stem
    return Path(root) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


@contextmanager
def run_dir_for_ranks(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """While inside: ``RUN_DIR_ENV`` names ``run_dir``, so that the DDP ranks Lightning relaunches (which run
    the command again) pass it to :func:`default_run_dir` as ``inherited`` and write into the same folder.

    The variable's previous value (or its absence) comes back on exit, whatever happened inside.
    """
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def build_model(cfg: ExperimentConfig, encoder_weights: bool = True) -> nn.Module:
    """The network of ``cfg.model`` (``encoder_weights=False`` skips pretrained weights), its mask
    head's bias at ``model.output_prior`` (``pneumoseg.models.heads``)."""
    net = create_model(cfg.model.name, in_channels=cfg.data.in_channels, classes=1,
                       encoder_weights=cfg.model.encoder_weights if encoder_weights else None,
                       aux_classifier=cfg.model.aux_classifier)
    if cfg.model.output_prior is not None:
        init_output_bias(net, cfg.model.output_prior)
    return net


def init_run(cfg: ExperimentConfig, run_dir: str | os.PathLike[str]) -> Path:
    """A run folder holding ``cfg`` and its untrained network as ``checkpoints/best.ckpt``.

    For benchmarks and export tests: latency and file formats do not depend on the weights.
    """
    run = Path(run_dir)
    net = build_model(cfg, encoder_weights=False)
    dump_config(cfg, run / "config.yaml")
    preprocessing = Preprocessing.from_config(cfg)
    save_preprocessing(preprocessing, run)
    save_provenance(build_provenance(cfg), run)
    state = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
             "preprocessing": preprocessing.to_dict()}
    with atomic_path(run / "checkpoints" / "best.ckpt") as tmp:
        torch.save(state, tmp)
    return run


def save_preprocessing(preprocessing: Preprocessing, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/preprocessing.json`` (atomically); returns its path."""
    path = Path(run_dir) / PREPROCESSING_FILE
    atomic_write_text(path, json.dumps(preprocessing.to_dict(), indent=2) + "\n")
    return path


def load_preprocessing(run_dir: str | os.PathLike[str]) -> Preprocessing:
    """The model's input rule of a run: ``RUN/preprocessing.json``, else (older runs) its config.

    DataError for a folder with neither, or an unreadable file; ConfigError for bad values.
    """
    run_dir = Path(run_dir)
    path = run_dir / PREPROCESSING_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not readable JSON ({exc})") from None
        try:
            return Preprocessing.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    cfg = read_run_config(run_dir, required=False)
    if cfg is None:
        raise DataError(f"{run_dir} is not a run folder (no {PREPROCESSING_FILE}, no config.yaml)")
    return Preprocessing.from_config(cfg)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``{"best": RUN/checkpoints/best.ckpt, "last": ..., "snapshot-1": ...}`` of a run folder."""
    folder = Path(run_dir) / "checkpoints"
    return {p.stem: p for p in sorted(folder.glob("*.ckpt"))} if folder.is_dir() else {}


def resolve_checkpoint(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> Path:
    """The ``.ckpt`` file ``load_run(run_dir, checkpoint)`` reads: a ``.ckpt`` path, or a name in RUN/checkpoints.

    DataError for a folder without checkpoints; ConfigError for an unknown name (listing the available ones).
    """
    run_dir = Path(run_dir)
    path = Path(checkpoint)
    if path.suffix == ".ckpt" and path.is_file():
        return path
    available = list_checkpoints(run_dir)
    if not available:
        raise DataError(f"{run_dir} has no checkpoint in {run_dir / 'checkpoints'} "
                        "(training never finished an epoch?)")
    if checkpoint not in available:
        raise ConfigError(f"{run_dir}: no checkpoint {checkpoint!r} (available: {', '.join(available)})")
    return available[checkpoint]


def load_run(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> tuple[nn.Module, ExperimentConfig]:
    """The trained network (eval mode, CPU) and the config of a run folder.

    ``checkpoint``: a name in ``RUN/checkpoints`` (``best``, ``last``, ``snapshot-K``) or a path
    to a ``.ckpt``. DataError for a folder without config or checkpoints; ConfigError for an
    unknown checkpoint name (the message lists the available ones).
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as exc:
        raise DataError(f"{path}: not a readable pneumoseg checkpoint ({exc})") from None
    net = build_model(cfg, encoder_weights=False)
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{path}: weights do not fit model {cfg.model.name!r} ({first})") from None
    return net.eval(), cfg
