"""``pneumoseg tune RUN`` and ``pneumoseg evaluate RUN``: post-processing search and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console, err_console

if TYPE_CHECKING:
    from pneumoseg.inference.predictor import Predictor

__all__ = ["evaluate", "register", "tune"]


def _runs(text: str) -> list[Path]:
    return [Path(r) for r in text.split(",") if r]


def _predictor(runs: list[Path], checkpoint: str, tta: bool, device: str | None, batch_size: int,
               backend: str = "torch") -> Predictor:
    from pneumoseg.inference.predictor import Predictor

    return Predictor(runs, checkpoint=checkpoint, tta=tta, device=device, batch_size=batch_size, backend=backend)


def _warn(lines: list[str]) -> None:
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


@cli_errors
def tune(
    run: str = typer.Argument(..., help="Run folder, or several as RUN,RUN2,... (the ensemble `predict` will use)."),
    split: str = typer.Option("val", "--split", help="Split to tune on (train | val | test)."),
    oof: bool = typer.Option(False, "--oof", help="Out-of-fold: each K-fold run on its own validation fold, "
                             "pooled (recommended for K-fold runs)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K in every run."),
    tta: bool = typer.Option(False, "--tta", help="Tune for horizontal-flip TTA (as `predict --tta`)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Grid-search threshold / min-area / triplet rule at the source resolution; store it for these runs + flags."""
    from pneumoseg.evaluation.tune import tune_runs

    runs = _runs(run)
    result = tune_runs(runs, split=split, oof=oof, checkpoint=checkpoint, tta=tta, device=device,
                       batch_size=batch_size, progress=progress)
    table = result.table
    columns = ("mode", "threshold", "top_threshold", "min_area", "bottom_threshold", "dice_kaggle", "dice_positive")
    where = "out-of-fold" if oof else split
    shown = Table(*columns, title=f"Post-processing search on {where}, {result.record.n_images} images, "
                  f"source pixels (top 5 of {len(table)})")
    for _, row in table.head(5).iterrows():
        shown.add_row(*(_fmt(row[c]) for c in columns))
    console.print(shown)
    rec = result.record
    _warn(result.warnings)
    console.print(f"best: {rec.rule.describe()}", highlight=False)
    console.print(f"dice_kaggle {rec.dice_kaggle:.4f} vs {rec.default_dice_kaggle:.4f} with the untuned default "
                  f"(gain {result.gain:+.4f}) on the same {rec.n_images} images", highlight=False)
    console.print(f"stored for runs={','.join(map(str, runs))} checkpoint={checkpoint} tta={tta} in "
                  f"{', '.join(str(f) for f in result.files if f.name == 'postprocess.json')}", highlight=False)


@cli_errors
def evaluate(
    run: str = typer.Argument(..., help="Run folder, or an ensemble RUN,RUN2,... (results go to the first)."),
    split: str = typer.Option("test", "--split", help="Split of the run's cache to evaluate (train | val | test)."),
    data: Path | None = typer.Option(None, "--data", help="External validation: a folder (or file) of labelled "
                                     "DICOM / PNG / JPEG images instead of a split; needs --rle or --png-dir."),
    rle: Path | None = typer.Option(None, "--rle", help="Labels of --data: challenge RLE CSV (ImageId = "
                                    "SOPInstanceUID, else the file stem)."),
    png_dir: Path | None = typer.Option(None, "--png-dir", help="Labels of --data: folder of <ImageId>.png "
                                        "masks (0/255) at each image's size."),
    name: str | None = typer.Option(None, "--name", help="With --data: results go to RUN/eval/<name>/ "
                                    "(default: the data folder's name)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K | a .ckpt path."),
    tta: bool = typer.Option(False, "--tta", help="Horizontal-flip test-time augmentation."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    report: bool = typer.Option(False, "--report", help="Also write RUN/report.html (+ .md), as `pneumoseg report`."),
    backend: str = typer.Option("auto", "--backend", help="auto (onnxruntime on CPU when RUN/model.onnx matches "
                                "the checkpoint, else torch) | torch | onnx (RUN/model.onnx)."),
) -> None:
    """Challenge metric (dice_kaggle) at the source resolution, dice_positive and image-level detection.

    A split of the run's cache (--split), or any labelled image set (--data DIR --rle CSV | --png-dir DIR):
    same metrics, CIs and files, in RUN/eval/<split or data name>/. Files that cannot be scored are
    listed one per line; the rest is scored and the exit code is 2.
    """
    from pneumoseg.errors import ConfigError
    from pneumoseg.evaluation.evaluate import eval_dir, evaluate_external, evaluate_run, external_name

    runs = _runs(run)
    failures: list[str] = []
    if data is None and (rle is not None or png_dir is not None or name is not None):
        raise ConfigError("--rle, --png-dir and --name go with --data DIR (external validation)")
    if data is not None:
        where = external_name(data, name)
        predictor = _predictor(runs, checkpoint, tta, device, batch_size, backend)
        console.print(f"backend: {predictor.backend_reason}", highlight=False, soft_wrap=True)
        result = evaluate_external(predictor, runs[0], data, rle, png_dir, name=where, progress=progress)
        metrics, failures = result.metrics, result.failures
        matched: dict[str, int] = metrics["matched_by"]  # type: ignore[assignment]
        title = f"{runs[0].name}: external set {where} ({data}) at its native resolution ({metrics['source_size']})"
    else:
        where = split
        predictor = _predictor(runs, checkpoint, tta, device, batch_size, backend)
        console.print(f"backend: {predictor.backend_reason}", highlight=False, soft_wrap=True)
        metrics = evaluate_run(predictor, runs[0], split, progress=progress)
        title = f"{runs[0].name}: {split} split at the source resolution ({metrics['source_size']})"
    table = Table(title=title, show_header=False)
    ci: dict[str, list[float]] = metrics["ci95"]  # type: ignore[assignment]
    ci_notes: dict[str, str] = metrics.get("ci95_notes", {})  # type: ignore[assignment]
    for key in ("dice_kaggle", "dice_empty_baseline", "dice_positive", "image_auc", "sensitivity", "specificity",
                "fpr_empty", "n_images", "n_positive"):
        value = metrics[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if key in ci and all(v == v for v in ci[key]):
            text += f"  [{ci[key][0]:.4f}, {ci[key][1]:.4f}] 95 % CI"
        elif key in ci_notes and value == value:
            text += f"  (no CI: {ci_notes[key]})"
        table.add_row(key, text)
    console.print(table)
    _warn(metrics.get("warnings", []))  # type: ignore[arg-type]
    console.print(f"post-processing: {metrics['postprocess_text']} ({metrics['postprocess_source']})", highlight=False)
    console.print(f"image_auc ranks images by the image score: {metrics['image_score']}", highlight=False)
    if data is not None:
        console.print(f"labels matched by SOPInstanceUID: {matched['uid']}, by file stem: {matched['stem']}"
                      + (f"; {metrics['labels_without_image']} labelled ImageIds have no image in {data}"
                         if metrics.get("labels_without_image") else ""), highlight=False)
    console.print(f"outputs: {eval_dir(runs[0], where)} (metrics.json, per_image.csv, pred_masks/, best.png, "
                  "worst.png, cases.csv, cases/)", highlight=False)
    if report:
        from pneumoseg.reporting.report import write_report

        files = write_report(runs[0], eval_dir=eval_dir(runs[0], where))
        console.print(f"report: {files.html} (summary: {files.markdown})", highlight=False)
    if failures:
        for line in failures:
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(failures)} file(s) not scored; {metrics['n_images']} scored", highlight=False)
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``evaluate`` to ``app``."""
    app.command("tune")(tune)
    app.command("evaluate")(evaluate)
