"""``pneumoseg report RUN``: one self-contained HTML report (and a Markdown summary) of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoseg.cli._common import cli_errors, console

__all__ = ["register", "report"]


@cli_errors
def report(
    run: Path = typer.Argument(..., help="Run folder, after `pneumoseg evaluate RUN`."),
    out: Path | None = typer.Option(None, "--out", help="HTML file to write (default: RUN/report.html); "
                                    "the Markdown summary goes beside it (.md)."),
    eval_dir: Path | None = typer.Option(None, "--eval-dir", help="Evaluation folder (default: RUN/eval)."),
) -> None:
    """Config, data, curves, metrics, threshold search, per-image table and case galleries in one HTML file."""
    from pneumoseg.report import write_report

    files = write_report(run, out, eval_dir)
    console.print(f"report: {files.html} (self-contained, opens offline)\nsummary: {files.markdown}",
                  highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)
