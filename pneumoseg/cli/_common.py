"""Shared CLI plumbing: the rich console, one-line error reporting, the help layout of every command, the
options several commands share (``Annotated`` aliases) and ``load_predictor``.

Nothing heavy is imported here (``pneumoseg --help`` stays fast): the predictor is imported when loaded.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from pneumoseg.errors import PneumosegError
from pneumoseg.util.devices import DEVICES_HELP, parse_device
from pneumoseg.util.paths import os_error_line

if TYPE_CHECKING:
    from pneumoseg.inference.predictor import Predictor

__all__ = [
    "BACKEND_HELP",
    "Backend",
    "BatchSize",
    "Checkpoint",
    "Device",
    "Overrides",
    "PneumosegCommand",
    "PneumosegGroup",
    "Progress",
    "Runs",
    "Tta",
    "cli_errors",
    "console",
    "err_console",
    "fail",
    "load_predictor",
    "no_new_empty_folders",
    "one_line_warnings",
    "parse_runs",
    "print_failures",
    "print_warnings",
]

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def print_failures(lines: Sequence[str]) -> None:
    """One ``failed: <line>`` per input that could not be used, to stderr (lines escaped: they hold file names)."""
    for line in lines:
        err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False, soft_wrap=True)


def print_warnings(lines: Iterable[str], file_warnings: Iterable[str] = ()) -> None:
    """Warnings in yellow to stderr: first ``file_warnings`` as they are (already ``<file>: warning: <text>``),
    then one ``warning: <line>`` per line of ``lines`` (all escaped: they hold file names and header values)."""
    for line in file_warnings:
        err_console.print(escape(line), highlight=False, soft_wrap=True, style="yellow")
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a PneumosegError (or a failed write: OSError) raised by a command into one line, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PneumosegError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:  # read-only folder, disk full, a file where a folder should be
            raise fail(os_error_line(exc)) from None

    return wrapper


def warning_line(message: Warning | str) -> str:
    """``warning: <message>`` on one line (the message's whitespace and line breaks collapsed)."""
    return "warning: " + " ".join(str(message).split())


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """While inside: every Python warning (ours, Lightning's, a library's) printed to stderr as one
    ``warning: ...`` line, without the category, file path and source line Python adds.

    The previous ``warnings.showwarning`` and filters come back on exit (``warnings.catch_warnings``).
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        del category, filename, lineno, file, line
        err_console.print(escape(warning_line(message)), style="yellow", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` and the folders under it, bottom-up, where empty (files are never touched)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_empty_tree(child)
    if not any(folder.iterdir()):
        folder.rmdir()


@contextmanager
def no_new_empty_folders(*folders: Path) -> Iterator[None]:
    """While inside, when the command fails (any exception, ``typer.Exit`` included): remove the folders
    this call created, and left empty, around ``folders`` (output folders and their missing parents).

    A folder that existed on entry stays whatever it holds; of its sub-folders only new, empty ones go.
    """
    created: list[Path] = []  # missing on entry: each folder and its missing parents, deepest first
    existing: dict[Path, set[Path]] = {}  # existing output folder -> its sub-folders on entry
    for folder in map(Path, folders):
        folder = folder.absolute()
        if folder.is_dir():
            existing[folder] = {c for c in folder.iterdir() if c.is_dir()}
            continue
        while not folder.exists() and folder != folder.parent:
            created.append(folder)
            folder = folder.parent
    try:
        yield
    except BaseException:
        try:
            for folder, before in existing.items():
                for child in [c for c in folder.iterdir() if c.is_dir() and c not in before]:
                    _remove_empty_tree(child)
            for folder in sorted(set(created), key=lambda f: len(f.parts), reverse=True):
                _remove_empty_tree(folder)
        except OSError:  # cleaning up never hides the failure itself
            pass
        raise


# ---------------------------------------------------------------- shared options

BACKEND_HELP = ("auto (onnxruntime on CPU when RUN/model.onnx matches the checkpoint, else torch) | torch | "
                "onnx (RUN/model.onnx)")

Runs = Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                     help="Run folder, or several as RUN,RUN2,... (ensembled by averaging).")]
Checkpoint = Annotated[str, typer.Option("--checkpoint", metavar="NAME",
                                         help="best | last | snapshot-K in every run, or a .ckpt path.")]
Device = Annotated[str | None, typer.Option("--device", metavar="DEVICE", show_default=False,
                                            help=f"{DEVICES_HELP.replace(', ', ' | ')} (default: cuda when "
                                                 "available, else cpu).")]
Tta = Annotated[bool, typer.Option("--tta", help="Horizontal-flip test-time augmentation.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Images per forward pass.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Backend = Annotated[str, typer.Option("--backend", metavar="NAME", help=BACKEND_HELP + ".")]
Overrides = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", show_default=False,
    help="Override a config key (repeatable), e.g. --set train.epochs=2.")]


def parse_runs(text: str) -> list[Path]:
    """``RUN,RUN2,...`` -> run folders (empty items dropped)."""
    return [Path(r) for r in text.split(",") if r]


def load_predictor(runs: str | Sequence[Path], *, checkpoint: str = "best", tta: bool = False,
                   device: str | None = None, batch_size: int = 4, backend: str = "torch",
                   onnx: Sequence[Path] | None = None) -> Predictor:
    """The ``Predictor`` of ``RUN[,RUN2,...]`` with the shared options; ``device`` read by ``parse_device``.

    Imports torch (when called): never at module level, so that ``--help`` stays light.
    """
    from pneumoseg.inference.predictor import Predictor

    folders = parse_runs(runs) if isinstance(runs, str) else list(runs)
    return Predictor(folders, checkpoint=checkpoint, tta=tta, device=parse_device(device), batch_size=batch_size,
                     backend=backend, onnx=onnx)


# ---------------------------------------------------------------- help layout

_TYPE_METAVARS = {"path": "PATH", "int": "INTEGER", "int range": "INTEGER", "float": "NUMBER",
                  "float range": "NUMBER", "str": "TEXT"}


def _type_metavar(label: str) -> str:
    """typer's ``<int range>`` / ``<list[Path]>`` -> ``INTEGER`` / ``PATH``: click's classic names."""
    label = label.strip("<>")
    if m := re.fullmatch(r"list\[(.*)\]", label):
        label = m[1]
    return _TYPE_METAVARS.get(label.lower(), label.upper())


def _usage_name(arg: TyperArgument) -> str:
    """``RUN``, ``[INPUT]``, ``RUNS...``: click's classic placeholders (typer 0.29 prints ``{run}``)."""
    name = (arg.metavar or arg.name or "").upper()
    if not arg.required:
        name = f"[{name}]"
    return name + ("..." if arg.nargs != 1 else "")


class PneumosegCommand(TyperCommand):
    """A typer command whose help is laid out by click (wrapped, never cut at 80 columns), with readable
    value placeholders (``--out PATH``, ``--batch-size N``; flags none: ``--tta``, not ``--tta <bool>``)
    and ``RUN`` / ``[INPUT]`` for arguments instead of ``{run}`` / ``run <str>``.

    Every command gets it (``pneumoseg.cli.main`` applies it); usage errors keep typer's format.
    """

    def get_params(self, ctx: Any) -> list[Any]:  # typer's (vendored) click types
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.metavar is None:
                # A flag takes no value, so it gets no type label (typer would print "<bool>" and users type "true").
                param.metavar = "" if param.is_flag else _type_metavar(param.display_type(ctx))
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # click's own layout (TyperCommand's base class), not typer's rich panels
        super(TyperCommand, self).format_help(ctx, formatter)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                args.append((_usage_name(param), record[1]))  # "RUN", not "run <str>"
            else:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class PneumosegGroup(TyperGroup):
    """The ``pneumoseg`` group: click's help layout as its commands have, each command's whole first
    sentence (click would cut it with "..."), no type labels on ``--version`` / ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperGroup, self).format_help(ctx, formatter)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
