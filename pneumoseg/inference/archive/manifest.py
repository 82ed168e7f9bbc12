"""``OUT/manifest.json``: what an archive prediction folder holds, so a rerun resumes only like with like.

``settings`` is everything that changes an output file: the models (checkpoint name and the
SHA-256 of each weight file), backend, TTA, precision, the post-processing rule, the RLE format,
which outputs are written and the input. ``history`` lists every invocation (time, processes);
``training_data`` says what the models were trained on and that they are not for clinical use.
A rerun whose settings differ is refused (one line naming the first difference) unless
``--overwrite``, which removes the folder's previous outputs first.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.digest import file_sha256
from pneumoseg.errors import DataError
from pneumoseg.inference.predictor import Predictor

__all__ = ["MANIFEST", "OUTPUT_DIRS", "check_manifest", "clear_outputs", "file_sha256", "record_invocation",
           "run_settings", "training_data"]

MANIFEST = "manifest.json"
FORMAT = 1
#: Everything an archive prediction writes inside OUT (``--overwrite`` removes exactly these).
OUTPUT_DIRS = ("masks", "overlays", "seg", "sr", "sc", ".parts")
OUTPUT_FILES = ("predictions.csv", "submission.csv", MANIFEST)


def run_settings(predictor: Predictor, input_spec: str, precision: str, overlays: bool, rle_format: str,
                 dicom_seg: bool, dicom_seg_empty: bool, dicom_sr: bool, dicom_sc: bool) -> dict[str, Any]:
    """The settings that determine every output file (JSON-ready; compared key by key on a rerun)."""
    return {
        "models": [{"file": str(Path(f).resolve()), "sha256": digest}
                   for f, digest in zip(predictor.weight_files, predictor.weight_digests, strict=True)],
        "checkpoint": predictor.checkpoint if predictor.backend == "torch" else None,
        "backend": predictor.backend,
        "tta": predictor.tta,
        "precision": precision,
        "postprocess": predictor.postprocess.to_dict(),
        "rle_format": rle_format,
        "overlays": overlays,
        "dicom_seg": dicom_seg,
        "dicom_seg_empty": dicom_seg_empty,
        "dicom_sr": dicom_sr,
        "dicom_sc": dicom_sc,
        "input": input_spec,
    }


def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings without where the weights lie (a moved run folder with the same weights is the same)."""
    out = dict(settings)
    out["models"] = [m["sha256"] for m in settings.get("models", [])]
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable manifest ({exc}); pass --overwrite to start the folder "
                        "afresh") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("settings"), dict):
        raise DataError(f"{path}: not a pneumoseg prediction manifest (format {FORMAT}); pass --overwrite "
                        "to start the folder afresh")
    return data


def check_manifest(out: str | os.PathLike[str], settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The folder's manifest when its settings equal ``settings`` (None for a new folder).

    DataError (one line) naming the first differing setting, its old and new value, and the way
    out (the same flags, another ``--out``, or ``--overwrite``). A folder with earlier outputs
    but no manifest (``pneumoseg predict`` before archives) is refused the same way.
    """
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        if any((out / name).exists() for name in (*OUTPUT_DIRS, "predictions.csv")):
            raise DataError(f"--out {out} holds predictions without a {MANIFEST} (settings unknown): "
                            "pass --overwrite to replace them, or choose another --out")
        return None
    data = _read(path)
    old, new = _comparable(data["settings"]), _comparable(settings)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            shown_old, shown_new = json.dumps(old.get(key)), json.dumps(new.get(key))
            raise DataError(f"--out {out} was predicted with other settings ({key}: {shown_old} there, "
                            f"{shown_new} now); rerun with the same settings to resume, choose another --out, "
                            "or pass --overwrite to replace it")
    return data


def clear_outputs(out: str | os.PathLike[str]) -> None:
    """Remove what an archive prediction wrote in ``out`` (``OUTPUT_DIRS``, CSVs, manifest); nothing else."""
    out = Path(out)
    for name in OUTPUT_DIRS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)


def training_data(predictor: Predictor) -> dict[str, Any]:
    """The manifest's ``training_data``: the notice ("... not for clinical use"), the summary line and
    each run's ``provenance.json`` record (``pneumoseg.training.provenance``)."""
    return {"notice": predictor.notice, "summary": predictor.training_data,
            "runs": [p.to_dict() for p in predictor.provenance]}


def record_invocation(out: str | os.PathLike[str], settings: Mapping[str, Any], previous: Mapping[str, Any] | None,
                      invocation: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> None:
    """Write the manifest: ``settings``, ``training`` (``training_data(predictor)``; not a setting: a
    moved cache does not change an output) and the history so far plus ``invocation`` (atomically, fsync'd)."""
    history = list(previous.get("history", [])) if previous else []
    history.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **invocation})
    data = {"format": FORMAT, "settings": dict(settings), "training_data": dict(training or {}), "history": history}
    atomic_write_text(Path(out) / MANIFEST, json.dumps(data, indent=2) + "\n", durable=True)
