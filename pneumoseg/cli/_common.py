"""Shared CLI plumbing: the rich console and one-line error reporting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pneumoseg.errors import PneumosegError
from pneumoseg.paths import os_error_line

__all__ = ["cli_errors", "console", "err_console", "fail"]

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
