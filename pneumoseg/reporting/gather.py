"""Reading run and evaluation folders into what the report and the comparison show (no rendering).

A run folder: ``RUN/config.yaml`` (typed: ``pneumoseg.runs.read_run_config``; the report also shows it as
written), ``RUN/history.csv`` / ``curves.png``, ``RUN/tune.csv``, ``RUN/train_summary.json`` (predicts-nothing
flag, warnings), ``RUN/provenance.json``, and what ``pneumoseg evaluate`` wrote in ``RUN/eval/<split>/``, found
by ``pneumoseg.runs.find_eval_dir`` (an older ``RUN/eval/`` whose ``metrics.json`` names the split is read
too): ``metrics.json`` (with the post-processing rule it applied), ``per_image.csv`` (``image_id, has_truth,
truth_area_px, pred_area_px, probability, dice`` [, ``score``, older ``pixel_spacing_mm``,
``truth_area_mm2``]), ``images.csv`` (source file, pixel spacing), ``cases.csv`` + ``cases/`` and
``pred_masks/<id>.png``. The report also reads the cache's ``splits.csv`` + ``index.csv`` when reachable.

Conventions: image ids are read as text; a file that must be there and is not, or does not parse, is a
``DataError`` naming the file (and the row, for ``per_image.csv``'s values); an optional file that is absent
leaves its field None. Truth areas come from ``pneumoseg.runs.truth_areas`` (mm² when every positive image
has a pixel spacing, else source px). No model is loaded (the comparison may build one on torch's meta
device to count parameters).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumoseg.config import ExperimentConfig
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.runs import CONFIG_FILE, find_eval_dir, read_eval_images, read_run_config, truth_areas
from pneumoseg.training.provenance import NOT_FOR_CLINICAL_USE, Provenance, describe_training, read_provenance
from pneumoseg.util.paths import safe_name

__all__ = ["REQUIRED_COLUMNS", "ReportData", "RunEval", "image_score", "load_report_data", "load_run_eval",
           "outcomes", "read_csv", "read_json"]

REQUIRED_COLUMNS = ("image_id", "has_truth", "truth_area_px", "pred_area_px", "probability", "dice")


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV with ``image_id`` (where present) as text; DataError naming the file when it cannot be read."""
    try:
        return pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None


def read_json(path: Path) -> Any:
    """A JSON file's value; DataError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def image_score(per_image: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The image-level score (evaluate's AUC score, ``score``: top-k mean; older files: ``probability``) and
    the name of the column it came from."""
    col = "score" if "score" in per_image else "probability"
    return per_image[col].to_numpy(float), col


def outcomes(per_image: pd.DataFrame) -> pd.Series:
    """Each image's outcome at image level: ``TP`` | ``TN`` | ``FP`` | ``FN`` (non-empty truth / prediction)."""
    truth = per_image["truth_area_px"] > 0
    pred = per_image["pred_area_px"] > 0
    out = pd.Series("TN", index=per_image.index)
    out[truth & pred], out[~truth & pred], out[truth & ~pred] = "TP", "FP", "FN"
    return out


# ---------------------------------------------------------------- one run (the report)


@dataclass
class ReportData:
    """Everything the report shows, read from a run folder (None where a file is absent)."""

    run: Path
    eval_dir: Path
    metrics: dict[str, Any]
    per_image: pd.DataFrame
    config_text: str | None = None
    config: ExperimentConfig | None = None
    area: np.ndarray | None = None  # truth area of each per_image row, in ``area_unit``
    area_unit: str = "px"           # "mm²" when every positive image has a pixel spacing, else "px"
    data_summary: pd.DataFrame | None = None
    data_note: str = ""
    history: pd.DataFrame | None = None
    curves_png: bytes | None = None
    postprocess: dict[str, Any] | None = None
    tune: pd.DataFrame | None = None
    cases: pd.DataFrame | None = None
    train_summary: dict[str, Any] | None = None
    provenance: Provenance | None = None

    @property
    def provenance_line(self) -> str:
        """What the model was trained on, and "not for clinical use" (the header's line)."""
        records = [self.provenance] if self.provenance is not None else []
        return f"{describe_training(records)}. {NOT_FOR_CLINICAL_USE}."

    def count(self, outcome: str) -> int:
        """Images with outcome ``TP`` | ``TN`` | ``FP`` | ``FN`` (see :func:`outcomes`)."""
        return int((outcomes(self.per_image) == outcome).sum())


def _need(path: Path, run: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: run `pneumoseg evaluate {run}` first")
    return path


def _data_summary(cache: str | None) -> tuple[pd.DataFrame | None, str]:
    """Per split: images, patients, positives and positive rate, from the cache's CSVs."""
    if not cache:
        return None, "the run's config names no data.cache"
    splits, index = Path(cache) / "splits.csv", Path(cache) / "index.csv"
    if not (splits.is_file() and index.is_file()):
        return None, f"cache not reachable from here: {splits} / {index} not found"
    df = read_csv(splits).merge(read_csv(index), on="image_id", how="left")
    rows = []
    for name, part in [*df.groupby("split", sort=False), ("all", df)]:
        pos = int(part["has_pneumothorax"].fillna(0).sum())
        rows.append({"split": name, "images": len(part), "patients": part["patient_id"].nunique(),
                     "positive": pos, "positive_rate": pos / len(part) if len(part) else math.nan})
    order = {"train": 0, "val": 1, "test": 2, "all": 9}
    table = pd.DataFrame(rows).sort_values("split", key=lambda s: s.map(lambda v: order.get(v, 5)))
    note = f"from {cache}" + (f" ({df['fold'].nunique()} folds)" if "fold" in df else "")
    return table.reset_index(drop=True), note


def _curves(run: Path, history: pd.DataFrame | None) -> bytes | None:
    """``RUN/curves.png``, else the training curves drawn from ``history`` (None without either)."""
    if (run / "curves.png").is_file():
        return (run / "curves.png").read_bytes()
    if history is None or history.empty:
        return None
    from pneumoseg.training.callbacks import plot_history

    with tempfile.TemporaryDirectory() as tmp:
        plot_history(history.to_dict("records"), Path(tmp) / "curves.png")
        return (Path(tmp) / "curves.png").read_bytes()


def load_report_data(run_dir: str | os.PathLike[str], eval_dir: str | os.PathLike[str] | None = None) -> ReportData:
    """Read a run's files; DataError naming the missing file when ``evaluate`` has not run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist")
    ev = Path(eval_dir) if eval_dir else find_eval_dir(run)
    metrics = read_json(_need(ev / "metrics.json", run))
    data = ReportData(run, ev, metrics, read_csv(_need(ev / "per_image.csv", run)))
    data.provenance = read_provenance(run)
    data.config = read_run_config(run, required=False)
    if data.config is not None:
        data.config_text = (run / CONFIG_FILE).read_text()
    data.data_summary, data.data_note = _data_summary(data.config.data.cache if data.config else None)
    data.area, data.area_unit = truth_areas(data.per_image, read_eval_images(ev))
    if (run / "history.csv").is_file():
        data.history = read_csv(run / "history.csv")
    data.curves_png = _curves(run, data.history)
    applied = metrics.get("postprocess")
    data.postprocess = applied if isinstance(applied, dict) else None
    if (run / "tune.csv").is_file():
        data.tune = read_csv(run / "tune.csv")
    if (ev / "cases.csv").is_file():
        data.cases = read_csv(ev / "cases.csv")
    if (run / "train_summary.json").is_file():
        summary = read_json(run / "train_summary.json")
        data.train_summary = summary if isinstance(summary, dict) else None
    return data


# ---------------------------------------------------------------- several runs (the comparison)


@dataclass
class RunEval:
    """One run's evaluation of a split, as read from its folder."""

    label: str
    run: Path
    eval_dir: Path
    metrics: dict[str, Any]
    per_image: pd.DataFrame
    config: ExperimentConfig | None = None
    history: pd.DataFrame | None = None
    images: pd.DataFrame | None = None  # EV/images.csv: source file and pixel spacing of each image

    @property
    def name(self) -> str:
        return f"{self.label}: {self.run.resolve().name}"

    def facts(self) -> dict[str, Any]:
        """Model, parameter count, epochs, training time and throughput, inference latency (NaN: unknown)."""
        m, h = self.metrics, self.history
        model = m.get("model") or (self.config.model.name if self.config else None) or "n/a"
        params = m.get("n_params", m.get("parameters"))
        if params is None:
            params = _count_parameters(self.config)
        time_s = img_s = math.nan
        if h is not None and "epoch_time_s" in h:
            time_s = float(pd.to_numeric(h["epoch_time_s"], errors="coerce").sum())
        if h is not None and "train_img_per_s" in h:
            img_s = float(pd.to_numeric(h["train_img_per_s"], errors="coerce").median())
        latency = m.get("latency_ms_per_image", math.nan)
        if "predict_seconds" in m and m.get("n_images"):
            latency = 1000 * float(m["predict_seconds"]) / float(m["n_images"])
        return {"model": model, "parameters": params if params is not None else math.nan,
                "epochs": len(h) if h is not None else math.nan, "train_time_s": time_s,
                "train_img_per_s": img_s, "latency_ms": float(latency)}


def _count_parameters(config: ExperimentConfig | None) -> int | None:
    """Parameters of the config's model, built on torch's meta device (no memory); None if unknown."""
    if config is None:
        return None
    try:
        import torch

        from pneumoseg.models import create_model

        with torch.device("meta"):
            net = create_model(config.model.name, in_channels=config.data.in_channels,
                               aux_classifier=config.model.aux_classifier)
        return int(sum(p.numel() for p in net.parameters()))
    except (PneumosegError, ImportError, RuntimeError, TypeError, ValueError):
        return None


def _read_per_image(path: Path) -> pd.DataFrame:
    """``per_image.csv`` indexed by image id: the required columns, numeric, ids safe as file names, unique."""
    df = read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needs {', '.join(REQUIRED_COLUMNS)}")
    for col in REQUIRED_COLUMNS[1:]:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            k = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{path} row {k + 2} ImageId {df['image_id'].iloc[k]}: {col} {df[col].iloc[k]!r} "
                            "is not a number")
        df[col] = values
    for image_id in df["image_id"]:  # ids become file names (thumbnails): refuse ../ and the like
        safe_name(str(image_id), path)
    dup = df["image_id"].duplicated()
    if dup.any():
        raise DataError(f"{path}: ImageId {df['image_id'][dup].iloc[0]} appears more than once")
    return df.set_index("image_id", drop=False)


def load_run_eval(run: str | os.PathLike[str], split: str, label: str = "A") -> RunEval:
    """Read a run's evaluation of ``split``; DataError naming what is missing."""
    path = Path(run)
    ev = find_eval_dir(path, split)
    metrics = read_json(ev / "metrics.json") if (ev / "metrics.json").is_file() else {}
    if metrics.get("split", split) != split:
        raise DataError(f"{ev / 'metrics.json'}: split is {metrics.get('split')!r}, expected {split!r}")
    out = RunEval(label, path, ev, metrics, _read_per_image(ev / "per_image.csv"),
                  read_run_config(path, required=False), images=read_eval_images(ev))
    if (path / "history.csv").is_file():
        out.history = read_csv(path / "history.csv")
    return out
