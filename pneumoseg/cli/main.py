"""The ``pneumoseg`` command. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
from typer.core import TyperCommand

from pneumoseg import __version__
from pneumoseg.cli._common import PneumosegCommand, PneumosegGroup

app = typer.Typer(
    name="pneumoseg",
    cls=PneumosegGroup,
    help="Pneumothorax segmentation on chest radiographs (SIIM-ACR): explore, prepare, train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order here is the order in `pneumoseg --help`.
COMMAND_MODULES = [
    "demo", "synth", "explore", "prepare", "split", "models", "train", "evaluate", "compare", "study", "score",
    "predict",
    "report", "export", "serve", "listen", "pacs_demo",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pneumoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Pneumothorax segmentation on chest radiographs (SIIM-ACR)."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"pneumoseg.cli.{_name}").register(app)
for _command in app.registered_commands:  # one help style everywhere (readable metavars, RUN not {run})
    if _command.cls in (None, TyperCommand):
        _command.cls = PneumosegCommand


if __name__ == "__main__":
    app()
