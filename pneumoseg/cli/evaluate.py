"""``pneumoseg tune RUN`` and ``pneumoseg evaluate RUN``: post-processing search and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import (
    Backend,
    BatchSize,
    Checkpoint,
    Device,
    Progress,
    Runs,
    Tta,
    cli_errors,
    console,
    err_console,
    load_predictor,
    parse_runs,
    print_warnings,
)

__all__ = ["evaluate", "register", "tune"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


@cli_errors
def tune(
    run: Runs,
    split: Annotated[str, typer.Option("--split", metavar="SPLIT",
                                       help="Split to tune on (train | val | test).")] = "val",
    oof: Annotated[bool, typer.Option("--oof", help="Out-of-fold: each K-fold run on its own validation fold, "
                                                    "pooled (recommended for K-fold runs).")] = False,
    checkpoint: Checkpoint = "best",
    tta: Tta = False,
    device: Device = None,
    batch_size: BatchSize = 4,
    progress: Progress = True,
) -> None:
    """Grid-search threshold / min-area / triplet rule at the source resolution; store it for these runs + flags.

    The rule is stored for exactly these runs, --checkpoint and --tta: `predict` with the same ones uses it.
    """
    from pneumoseg.evaluation.tune import tune_runs
    from pneumoseg.util.devices import parse_device

    runs = parse_runs(run)
    result = tune_runs(runs, split=split, oof=oof, checkpoint=checkpoint, tta=tta, device=parse_device(device),
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
    print_warnings(result.warnings)
    console.print(f"best: {rec.rule.describe()}", highlight=False)
    console.print(f"dice_kaggle {rec.dice_kaggle:.4f} vs {rec.default_dice_kaggle:.4f} with the untuned default "
                  f"(gain {result.gain:+.4f}) on the same {rec.n_images} images", highlight=False)
    console.print(f"stored for runs={','.join(map(str, runs))} checkpoint={checkpoint} tta={tta} in "
                  f"{', '.join(str(f) for f in result.files if f.name == 'postprocess.json')}", highlight=False)


@cli_errors
def evaluate(
    run: Runs,
    split: Annotated[str, typer.Option("--split", metavar="SPLIT",
                                       help="Split of the run's cache to evaluate (train | val | test).")] = "test",
    data: Annotated[Path | None, typer.Option(
        "--data", help="External validation: a folder (or file) of labelled DICOM / PNG / JPEG images instead of a "
                       "split; needs --rle or --png-dir.")] = None,
    rle: Annotated[Path | None, typer.Option(
        "--rle", metavar="CSV", help="Labels of --data: challenge RLE CSV (ImageId = SOPInstanceUID, else the file "
                                     "stem).")] = None,
    png_dir: Annotated[Path | None, typer.Option(
        "--png-dir", metavar="DIR", help="Labels of --data: folder of <ImageId>.png masks (0/255) at each image's "
                                         "size.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME", help="With --data: results go to RUN/eval/<name>/ (default: the data folder's "
                                       "name).")] = None,
    checkpoint: Checkpoint = "best",
    tta: Tta = False,
    device: Device = None,
    batch_size: BatchSize = 4,
    progress: Progress = True,
    report: Annotated[bool, typer.Option(
        "--report", help="Also write RUN/report.html (+ .md), as `pneumoseg report`.")] = False,
    backend: Backend = "auto",
) -> None:
    """Challenge metric (dice_kaggle) at the source resolution, dice_positive and image-level detection.

    A split of the run's cache (--split), or any labelled image set (--data DIR --rle CSV | --png-dir DIR):
    same metrics, CIs and files, in RUN/eval/<split or data name>/ of the first RUN. Files that cannot be scored are
    listed one per line; the rest is scored and the exit code is 2.
    """
    from pneumoseg.errors import ConfigError
    from pneumoseg.evaluation.evaluate import evaluate_run
    from pneumoseg.evaluation.external import evaluate_external, external_name
    from pneumoseg.runs import eval_dir

    runs = parse_runs(run)
    failures: list[str] = []
    if data is None and (rle is not None or png_dir is not None or name is not None):
        raise ConfigError("--rle, --png-dir and --name go with --data DIR (external validation)")
    where = split if data is None else external_name(data, name)
    predictor = load_predictor(runs, checkpoint=checkpoint, tta=tta, device=device, batch_size=batch_size,
                               backend=backend)
    console.print(f"backend: {predictor.backend_reason}", highlight=False, soft_wrap=True)
    if data is not None:
        result = evaluate_external(predictor, runs[0], data, rle, png_dir, name=where, progress=progress)
        metrics, failures = result.metrics, result.failures
        matched: dict[str, int] = metrics["matched_by"]  # type: ignore[assignment]
        title = f"{runs[0].name}: external set {where} ({data}) at its native resolution ({metrics['source_size']})"
    else:
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
    print_warnings(metrics.get("warnings", []))  # type: ignore[arg-type]
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
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(failures)} file(s) not scored; {metrics['n_images']} scored", highlight=False)
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``evaluate`` to ``app``."""
    app.command("tune")(tune)
    app.command("evaluate")(evaluate)
