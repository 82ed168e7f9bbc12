"""``pneumoseg demo``: the whole pipeline on synthetic phantoms, in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console

__all__ = ["demo", "register"]


@cli_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder for every step."),
    n: int = typer.Option(400, "--n", help="Number of synthetic images."),
    size: int = typer.Option(256, "--size", help="Phantom and cache size (256, 512 or 1024)."),
    seed: int = typer.Option(0, "--seed"),
    set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE (repeatable), e.g. train.epochs=2."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete OUT first instead of reusing finished steps."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """synth -> prepare -> split -> train -> tune -> evaluate -> predict, printing where every output is."""
    from pneumoseg.demo import run_demo

    start = time.perf_counter()
    res = run_demo(out, n=n, size=size, seed=seed, overrides=set_, progress=progress, fresh=fresh,
                   log=lambda msg: console.print(f"[bold cyan]{msg}[/]"))
    metrics = Table(title="Test split (synthetic)", show_header=False)
    for key in ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity", "fpr_empty",
                "n_images", "n_positive"):
        value = res.metrics[key]
        metrics.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(metrics)
    paths = Table("output", "where", title="Outputs")
    for name, path in res.paths.items():
        paths.add_row(name, str(path))
    console.print(paths)
    console.print(f"post-processing: {res.postprocess}")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s. The data is synthetic; see README.md "
                  "for running on the real SIIM-ACR data.")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)
