"""``pneumoseg compare RUN_A RUN_B [...] --split S``: evaluated runs side by side, with bootstrap CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console
from pneumoseg.errors import DataError

__all__ = ["compare", "register"]


def _edges(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"--size-edges {text!r}: expected two numbers SMALL,LARGE (e.g. 500,2000)") from None
    if not 0 < lo < hi:
        raise DataError(f"--size-edges {text!r}: expected 0 < SMALL < LARGE")
    return lo, hi


@cli_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUNS", help="Two or more run folders, each evaluated on --split; the first is the reference A.")],
    split: Annotated[str, typer.Option("--split", metavar="SPLIT", help="Split the runs were evaluated on.")] = "test",
    out: Annotated[Path, typer.Option(
        "--out", metavar="HTML", help="HTML page to write; the Markdown goes beside it (.md).")] = Path("compare.html"),
    allow_different_sets: Annotated[bool, typer.Option(
        "--allow-different-sets",
        help="Compare on the common images when the runs were evaluated on different image sets.")] = False,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, metavar="N", help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Bootstrap seed.")] = 0,
    cases: Annotated[int, typer.Option(
        "--cases", min=0, metavar="N", help="Images shown per case kind (disagree, best, worst).")] = 6,
    size_edges: Annotated[str | None, typer.Option(
        "--size-edges", metavar="SMALL,LARGE",
        help="Size bucket edges in mm² (px without Pixel Spacing); default: tertiles of the positives.")] = None,
) -> None:
    """Every metric per run with a 95 % CI, paired differences to the first run, curves, cases, size buckets."""
    from pneumoseg.reporting.compare import compare_runs, metric_header, metric_rows, write_comparison
    from pneumoseg.util.paths import check_output_file

    check_output_file(out, runs, what="--out")
    c = compare_runs(runs, split, allow_different_sets, n_boot, seed, n_cases=cases, size_edges=_edges(size_edges))
    head, rows, k = metric_header(c), metric_rows(c, digits=3), 1 + len(c.runs)
    values = Table(*head[:k], title=f"split {split}: {len(c.image_ids)} images, {int(c.has_truth.sum())} with "
                   "pneumothorax; value [95 % CI]")
    diffs = Table(*head[:1], *head[k:], title="paired difference to A [95 % CI], two-sided p (paired bootstrap, or exact "
                  "permutation test)")
    for table in (values, diffs):
        table.columns[0].no_wrap = True
    for row in rows:
        row = [cell.replace(" [", "\n[") for cell in row]  # value over its interval: narrow columns
        values.add_row(*row[:k])
        diffs.add_row(*row[:1], *row[k:])
    console.print(values)
    console.print(diffs)
    for r in c.runs:
        console.print(f"{r.label}: {r.run.resolve()}", highlight=False)
    for r in c.runs[1:]:
        console.print(f"{r.label} vs A, per-image Dice: Wilcoxon p = {c.wilcoxon[r.label]:.3g}", highlight=False)
    console.print(f"predict-nothing baseline dice_kaggle: {c.baseline:.4f}", highlight=False)
    for note in c.notes:
        console.print(f"note: {note}", highlight=False)
    html_path, md_path = write_comparison(c, out)
    console.print(f"page: {html_path} (self-contained)\nsummary: {md_path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""
    app.command("compare")(compare)
