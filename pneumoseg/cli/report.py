"""``pneumoseg report RUN``: one self-contained HTML report (and a Markdown summary) of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumoseg.cli._common import cli_errors, console

__all__ = ["register", "report"]


@cli_errors
def report(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder, after `pneumoseg evaluate RUN`.")],
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="HTML", help="HTML file to write (default: RUN/report.html); the Markdown summary goes "
                                      "beside it (.md).")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", metavar="NAME", help="Evaluated split or external data set to show: RUN/eval/<split>/ (default: "
                                        "test, else the only one evaluated).")] = None,
    eval_dir: Annotated[Path | None, typer.Option(
        "--eval-dir", metavar="DIR", help="Evaluation folder (overrides --split).")] = None,
) -> None:
    """Config, data, curves, metrics, threshold search, per-image table and case galleries in one HTML file."""
    from pneumoseg.reporting.report import write_report
    from pneumoseg.runs import find_eval_dir

    chosen = eval_dir or find_eval_dir(run, split)
    files = write_report(run, out, chosen)
    console.print(f"report of {chosen.name} ({chosen}): {files.html} (self-contained, opens offline)\n"
                  f"summary: {files.markdown}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)
