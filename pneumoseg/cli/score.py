"""``pneumoseg score SUBMISSION --truth TRUTH``: a local Kaggle-style scorer of a submission CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console

__all__ = ["register", "score"]

_SHOW_IDS = 5


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOW_IDS])
    return shown + (f", ... ({len(ids) - _SHOW_IDS} more)" if len(ids) > _SHOW_IDS else "")


@cli_errors
def score(
    submission: Annotated[Path, typer.Argument(
        metavar="SUBMISSION",
        help="Submission CSV (ImageId,EncodedPixels; several rows per image are united).")],
    truth: Annotated[Path, typer.Option(
        "--truth", metavar="CSV", help="Truth CSV in the same form (e.g. train-rle.csv).")],
    rle_format: Annotated[str, typer.Option(
        "--rle-format", metavar="FORMAT", help="Submission RLE: auto | relative (train-rle.csv form) | absolute "
                                               "(standard Kaggle, 1-based, column-major).")] = "auto",
    truth_format: Annotated[str, typer.Option(
        "--truth-rle-format", metavar="FORMAT", help="Truth RLE: auto | relative | absolute.")] = "auto",
    height: Annotated[int, typer.Option("--height", metavar="PX", help="Image height in pixels (all images).")] = 1024,
    width: Annotated[int, typer.Option("--width", metavar="PX", help="Image width in pixels (all images).")] = 1024,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="CSV", help="Write the per-image table (CSV) here.")] = None,
    n_boot: Annotated[int, typer.Option(
        "--n-boot", min=1, metavar="N", help="Bootstrap resamples for the CIs.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Bootstrap seed.")] = 0,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a submission that lacks truth ImageIds, as Kaggle did (default: score them as "
                         "empty predictions).")] = False,
) -> None:
    """Per-image Dice (empty/empty = 1) averaged over the truth's images, with a 95 % bootstrap CI."""
    from pneumoseg.util.paths import check_output_file
    from pneumoseg.scoring.submission import score_submission, write_per_image

    if out is not None:
        check_output_file(out, [submission, truth], what="--out")
    result = score_submission(submission, truth, rle_format, truth_format, height, width,  # type: ignore[arg-type]
                              n_boot=n_boot, seed=seed, strict=strict)
    m = result.metrics
    table = Table(title=f"{submission.name} vs {truth.name} ({m['n_images']} images, {m['n_positive']} "
                  "with pneumothorax)", show_header=True)
    for column in ("metric", "value", "95 % CI"):
        table.add_column(column)
    for name, ci in (("dice_kaggle", result.dice_kaggle), ("dice_positive", result.dice_positive)):
        table.add_row(name, _fmt(ci.value), f"[{_fmt(ci.low)}, {_fmt(ci.high)}]")
    for name in ("sensitivity", "specificity", "fpr_empty"):
        table.add_row(name, _fmt(m[name]), "")
    table.add_row("image_auc", _fmt(m["image_auc"]), "scored by predicted area")
    table.add_row("predict nothing", _fmt(m["predict_nothing"]), "dice_kaggle of an all-empty submission")
    console.print(table)
    console.print(f"RLE: submission {result.submission_format}, truth {result.truth_format}", highlight=False)
    if result.missing:
        console.print(f"missing ({len(result.missing)}, scored empty): {_ids(result.missing)}", highlight=False)
    if result.extra:
        console.print(f"extra ({len(result.extra)}, ignored): {_ids(result.extra)}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if out is not None:
        console.print(f"per-image: {write_per_image(result, out)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``score`` to ``app``."""
    app.command("score")(score)
