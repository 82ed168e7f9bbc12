"""The built-in demo: synth -> prepare -> split -> train -> tune -> evaluate -> predict.

Runs in a few minutes on 2 CPU cores with the packaged ``demo`` config (the seed's small UNet on
synthetic phantoms). The data is synthetic: the numbers show the pipeline works, not how a model
does on real radiographs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumoseg.config import dump_config, load_config
from pneumoseg.data.prepare import prepare_dicom
from pneumoseg.data.split import write_splits
from pneumoseg.data.synth import generate_dataset
from pneumoseg.errors import DataError
from pneumoseg.evaluate import evaluate_run
from pneumoseg.predict import Predictor, find_inputs, predict_to_folder
from pneumoseg.training.run import train
from pneumoseg.tune import tune_runs

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where every output of the demo is, and the test metrics."""

    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    postprocess: str = ""  #: the tuned rule in words


def run_demo(out_dir: str | os.PathLike[str] = "demo-out", n: int = 400, size: int = 256, seed: int = 0,
             overrides: Sequence[str] = (), progress: bool = True, fresh: bool = False,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole pipeline into ``out_dir`` and return where everything went.

    ``overrides`` are config overrides (``"train.epochs=2"``) applied over the packaged ``demo``
    config. ``fresh=True`` deletes ``out_dir`` first; otherwise finished steps are reused
    (synth and prepare skip what exists, a finished training run is resumed to its end).
    """
    out = Path(out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    res = DemoResult(out)
    data, cache, run, pred = out / "synth", out / "cache", out / "run", out / "predict"

    log(f"1/6 synth: {n} synthetic phantoms at {size} px -> {data}")
    if not (data / "train-rle.csv").is_file():  # written last: its presence means synth finished
        generate_dataset(data, n=n, size=size, seed=seed, progress=progress, overwrite=True)
    log(f"2/6 prepare: cache at {size} px -> {cache}")
    prepared = prepare_dicom(data / "dicom", data / "train-rle.csv", cache, size=size, progress=progress)
    if prepared.n_failed:
        raise DataError(f"demo: {prepared.n_failed} synthetic images failed to prepare: {prepared.failures[:3]}")
    log("3/6 split: patient-grouped, stratified train/val/test")
    write_splits(cache, val=0.15, test=0.15, seed=seed)

    cfg = load_config("demo", [f"data.cache={cache.resolve()}", *overrides])
    log(f"4/6 train: {cfg.model.name}, {cfg.train.epochs} epochs at {cfg.data.size} px -> {run}")
    resume = (run / "checkpoints" / "last.ckpt").is_file()
    if not resume:
        dump_config(cfg)  # validates before any work
    train(cfg, run, resume=resume, progress=progress)

    device = "cpu" if not _cuda() else None
    log("5/6 tune + evaluate: post-processing searched on val, scored on test at the source resolution")
    tuned = tune_runs([run], split="val", device=device, progress=progress)
    res.postprocess = tuned.rule.describe()
    predictor = Predictor([run], device=device)  # picks up the rule just tuned
    res.metrics = evaluate_run(predictor, run, "test", progress=progress)

    log(f"6/6 predict: the test DICOMs -> {pred}")
    test_ids = set(_test_ids(cache))
    inputs = [p for p in find_inputs(data / "dicom") if p.stem in test_ids]
    result = predict_to_folder(predictor, inputs, pred, progress=progress)
    res.paths = {
        "synthetic data": data, "cache": cache, "run": run, "config": run / "config.yaml",
        "curves": run / "curves.png", "history": run / "history.csv", "best checkpoint": run / "checkpoints" / "best.ckpt",
        "post-processing": run / "postprocess.json", "metrics": run / "eval" / "test" / "metrics.json",
        "per-image scores": run / "eval" / "test" / "per_image.csv", "best cases": run / "eval" / "test" / "best.png",
        "worst cases": run / "eval" / "test" / "worst.png", "masks": pred / "masks", "overlays": pred / "overlays",
        "predictions": pred / "predictions.csv", "submission": result.submission_csv or pred / "submission.csv",
    }
    return res


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _test_ids(cache: Path) -> list[str]:
    from pneumoseg.data.dataset import split_ids

    return split_ids(cache, "test")
