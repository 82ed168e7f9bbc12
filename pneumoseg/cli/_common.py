"""Shared CLI plumbing: the rich console, one-line error reporting and the help layout of every command."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperOption

from pneumoseg.errors import PneumosegError
from pneumoseg.util.paths import os_error_line

__all__ = ["PneumosegCommand", "cli_errors", "console", "err_console", "fail", "one_line_warnings"]

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


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


def _usage_name(arg: TyperArgument) -> str:
    """``RUN``, ``[INPUT]``, ``RUNS...``: click's classic placeholders (typer 0.29 prints ``{run}``)."""
    name = (arg.metavar or arg.name or "").upper()
    if not arg.required:
        name = f"[{name}]"
    return name + ("..." if arg.nargs != 1 else "")


class PneumosegCommand(TyperCommand):
    """A typer command whose help shows no type column for flags (``--tta``, not ``--tta <bool>``) and
    ``RUN`` / ``[INPUT]`` placeholders on the usage line instead of ``{run}`` / ``[input]``.

    Use it for every command: ``app.command("name", cls=PneumosegCommand)(fn)``.
    """

    def get_params(self, ctx: Any) -> list[Any]:  # typer's (vendored) click types
        params = super().get_params(ctx)
        for param in params:
            # A flag takes no value, so it gets no type label (typer would print "<bool>" and users type "true").
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces
