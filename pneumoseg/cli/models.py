"""``pneumoseg models``: the registered model names with their parameter counts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import cli_errors, console
from pneumoseg.errors import ConfigError

__all__ = ["count_parameters", "models", "register"]


def count_parameters(name: str, in_channels: int = 1) -> int:
    """Parameters of ``create_model(name, in_channels=...)``, built on the meta device (no memory, fast)."""
    import torch  # lazy: keeps `pneumoseg --help` fast

    from pneumoseg.models import create_model

    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels)
    return sum(p.numel() for p in model.parameters())


def _family(name: str) -> tuple[str, str]:
    arch, _, encoder = name.partition("-")
    return arch, encoder or "(own)"


@cli_errors
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Shell wildcard on the name, e.g. 'unet*' or '*resnet34'.")
    ] = None,
    params: Annotated[
        bool, typer.Option("--params/--no-params", help="Count parameters (in_channels=1).")
    ] = True,
) -> None:
    """List model names for the config's model.name (any smp '<arch>-<encoder>' works too)."""
    from pneumoseg.models import list_models

    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no model matches {pattern!r}; try `pneumoseg models` for all names")
    table = Table(title=f"{len(names)} models" + (f" matching {pattern!r}" if pattern else ""))
    table.add_column("name", no_wrap=True)
    table.add_column("architecture")
    table.add_column("encoder")
    if params:
        table.add_column("parameters", justify="right")
    for name in names:
        cells = [name, *_family(name)]
        if params:
            cells.append(f"{count_parameters(name) / 1e6:.2f} M")
        table.add_row(*cells)
    console.print(table)
    console.print(
        "Any smp '<arch>-<encoder>' (e.g. 'unetplusplus-resnext50_32x4d', 'fpn-tu-convnext_tiny') is accepted too.",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("models")(models)
