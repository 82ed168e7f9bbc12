"""The run-folder format: the one typed reader of ``RUN/config.yaml`` and the one resolver of ``RUN/eval/<name>/``.

Used by evaluate (where to write), compare and report (what to read); no weights are loaded here
(``pneumoseg.training.run_folder.load_run`` reads the same config, then the checkpoint).

- :func:`read_run_config`: ``RUN/config.yaml`` as the typed ``ExperimentConfig`` (``load_config``:
  the same defaults, checks and ConfigError messages as ``load_run``).
- :func:`eval_dir`: ``RUN/eval/<name>/``, where ``pneumoseg evaluate`` writes a split (``test``) or an
  external data set (its folder name or ``--name``).
- :func:`find_eval_dir`: an existing evaluation (``per_image.csv`` present): ``RUN/eval/<name>/``, an
  older flat ``RUN/eval/`` whose ``metrics.json`` names it, or without a name ``test``, else the only
  one evaluated. DataError naming the missing file and the command that writes it.
- :func:`truth_areas`: the size rule of compare's buckets and report's Dice-vs-size figure: truth
  areas in mm² when every positive image has a pixel spacing (``images.csv`` of the eval folder, or
  older ``per_image.csv`` columns ``truth_area_mm2`` / ``pixel_spacing_mm``), else in source pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumoseg.config import ExperimentConfig, load_config
from pneumoseg.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CONFIG_FILE", "EVAL_IMAGES_FILE", "eval_dir", "find_eval_dir", "read_eval_images", "read_run_config",
           "truth_areas", "unit_text"]

CONFIG_FILE = "config.yaml"
EVAL_IMAGES_FILE = "images.csv"
"""``RUN/eval/<name>/images.csv``: image_id, source (the file it was read from: the cache's source for a
split, the input file for an external set), pixel_spacing_mm (mm per source pixel; empty when unknown)."""


def read_run_config(run: str | os.PathLike[str], required: bool = True) -> ExperimentConfig | None:
    """``RUN/config.yaml`` as the typed config (nothing else of the run is read).

    Without the file: DataError when ``required``, else None. Bad values: ConfigError naming the file.
    The augmentation is not rebuilt (it was checked when the run was trained, and reading a run is
    for using its model: ~0.3 s of albumentations saved on every ``predict``).
    """
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        if required:
            raise DataError(f"{run} is not a run folder (no {CONFIG_FILE}): train one with `pneumoseg train`")
        return None
    return load_config(path, check_augment=False)


def eval_dir(run: str | os.PathLike[str], name: str) -> Path:
    """``RUN/eval/<name>``: where ``evaluate`` writes the evaluation of split or data set ``name``."""
    return Path(run) / "eval" / name


def _legacy_names(run: Path, name: str) -> bool:
    """True when the older flat ``RUN/eval/`` holds an evaluation whose metrics.json names ``name``."""
    legacy = run / "eval" / "metrics.json"
    if not (legacy.is_file() and (run / "eval" / "per_image.csv").is_file()):
        return False
    try:
        found = json.loads(legacy.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(found, dict) and found.get("split") == name


def find_eval_dir(run: str | os.PathLike[str], name: str | None = None) -> Path:
    """The folder of an existing evaluation of ``run`` (one with ``per_image.csv``).

    ``name``: a split or external data set name; None: ``test`` when evaluated, else the only one.
    DataError (one line) naming the missing file and the command to run.
    """
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist")
    root = run / "eval"
    if name is None:
        done = sorted(p.parent.name for p in root.glob("*/per_image.csv")) if root.is_dir() else []
        if len(done) > 1 and "test" not in done:
            raise DataError(f"{run}: evaluated on {', '.join(done)}; choose one with --split NAME "
                            f"(or --eval-dir {root}/<name>)")
        name = done[0] if len(done) == 1 else "test"
    if (root / name / "per_image.csv").is_file():
        return root / name
    if _legacy_names(run, name):
        return root
    raise DataError(f"{run}: no evaluation of {name!r} ({root / name / 'metrics.json'} and per_image.csv not "
                    f"found): run `pneumoseg evaluate {run} --split {name}` first (--data DIR for an external set)")


def read_eval_images(ev: str | os.PathLike[str]) -> pd.DataFrame | None:
    """``EV/images.csv`` indexed by image_id (columns source, pixel_spacing_mm as float, NaN when unknown);
    None for an evaluation written before the file existed."""
    import pandas as pd  # imported by the evaluation readers only, not by every reader of a run

    path = Path(ev) / EVAL_IMAGES_FILE
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "source": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    missing = [c for c in ("image_id", "source", "pixel_spacing_mm") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needs image_id, source, pixel_spacing_mm")
    df["pixel_spacing_mm"] = pd.to_numeric(df["pixel_spacing_mm"], errors="coerce")
    return df.drop_duplicates("image_id").set_index("image_id", drop=False)


def truth_areas(per_image: pd.DataFrame, images: pd.DataFrame | None = None) -> tuple[np.ndarray, str]:
    """Truth area of each row of ``per_image`` (evaluate's table) and its unit: ``"mm²"`` when every
    positive image has a pixel spacing (``images``: :func:`read_eval_images`; else the older columns
    ``truth_area_mm2`` / ``pixel_spacing_mm``), else ``"px"`` (source pixels).

    mm² = px * spacing² (spacing: sqrt(row * column) mm, ``DicomMeta.pixel_spacing_mm``).
    """
    import pandas as pd

    px = pd.to_numeric(per_image["truth_area_px"], errors="coerce").to_numpy(np.float64)
    mm2 = None
    if images is not None:
        spacing = images["pixel_spacing_mm"].reindex(per_image["image_id"].astype(str)).to_numpy(np.float64)
        mm2 = px * spacing**2
    elif "truth_area_mm2" in per_image:
        mm2 = pd.to_numeric(per_image["truth_area_mm2"], errors="coerce").to_numpy(np.float64)
    elif "pixel_spacing_mm" in per_image:
        mm2 = px * pd.to_numeric(per_image["pixel_spacing_mm"], errors="coerce").to_numpy(np.float64) ** 2
    if mm2 is not None and (px > 0).any() and not np.isnan(mm2[px > 0]).any():
        return mm2, "mm²"
    return px, "px"


def unit_text(unit: str) -> str:
    """What an area unit of :func:`truth_areas` means, for a table header's note."""
    return "mm² (from the images' Pixel Spacing)" if unit == "mm²" else "source pixels (no Pixel Spacing known)"
