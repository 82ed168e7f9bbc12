"""``pneumoseg demo``: the whole pipeline on synthetic phantoms, in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pneumoseg.cli._common import Overrides, Progress, cli_errors, console, print_warnings

__all__ = ["demo", "register"]


def _log(message: str) -> None:
    """A step in bold cyan; a warning in yellow on stderr."""
    if message.startswith("warning: "):
        print_warnings([message.removeprefix("warning: ")])
    else:
        console.print(f"[bold cyan]{escape(message)}[/]", highlight=False, soft_wrap=True)


@cli_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder for every step.")] = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", min=10, help="Number of synthetic images.")] = 400,
    size: Annotated[int, typer.Option("--size", help="Phantom and cache size in pixels: a multiple of 32 from 128 "
                                                     "to 1024.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the phantoms and of the split; the same seed gives "
                                                     "the same data.")] = 0,
    set_: Overrides = None,
    fresh: Annotated[bool, typer.Option("--fresh/--no-fresh", help="Delete OUT first instead of reusing finished "
                                                                   "steps.")] = False,
    progress: Progress = True,
) -> None:
    """synth -> prepare -> split -> train -> tune -> evaluate -> report -> predict, printing where every output is.

    Rerunning the same command reuses the finished steps; --fresh starts over.
    """
    from pneumoseg.workflows.demo import run_demo

    start = time.perf_counter()
    res = run_demo(out, n=n, size=size, seed=seed, overrides=set_ or [], progress=progress, fresh=fresh,
                   log=_log)
    metrics = Table(title="Test split (synthetic)", show_header=False)
    for key in ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity", "fpr_empty",
                "n_images", "n_positive"):
        value = res.metrics[key]
        metrics.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(metrics)
    paths = Table("output", "where", title="Outputs")
    for name, path in res.paths.items():
        paths.add_row(name, escape(str(path)))
    console.print(paths)
    console.print(f"post-processing: {escape(res.postprocess)}", highlight=False, soft_wrap=True)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s. The data is synthetic; see README.md "
                  "for running on the real SIIM-ACR data.", highlight=False)
    console.print("[bold]next, try:[/]")
    for line in res.next_steps:
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)
