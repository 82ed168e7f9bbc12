"""Every command's --help, rendered as users see it: no type labels on flags, no ``{run}``
placeholders, no reStructuredText backticks, and a help text for every option and argument."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pneumoseg.cli.main import app

ROOT = get_command(app)
COMMANDS = sorted(ROOT.commands)
# Registered without pneumoseg.cli._common.PneumosegCommand yet (owned elsewhere): typer 0.29 prints
# "<bool>" and "{run}" for them. Strict: once they use it (or main.py applies it), drop this.
_NOT_YET: set[str] = set()


def _help(name: str) -> str:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason="register with cls=PneumosegCommand")) if n in _NOT_YET else n for n in COMMANDS])
def test_help_renders_cleanly(name: str) -> None:
    text = _help(name)
    assert "<bool>" not in text  # flags take no value: "--tta", not "--tta <bool>"
    assert "``" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert not re.search(r"\{\w+\}", usage), usage  # RUN, not {run}
    assert re.search(rf"Usage: pneumoseg {name} \[OPTIONS\]", usage), usage


@pytest.mark.parametrize("name", COMMANDS)
def test_every_parameter_has_help(name: str) -> None:
    command = ROOT.commands[name]
    missing = [p.name for p in command.params if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"{name}: no help text for {missing}"


def test_prepare_shows_the_workers_default_and_sizes() -> None:
    text = " ".join(_help("prepare").split())
    assert "Worker processes (default: one per CPU core)" in text
    assert "multiple of 32 from 128 to 1024" in text


def test_usage_placeholders_are_upper_case() -> None:
    assert "Usage: pneumoseg predict [OPTIONS] RUN [INPUT]" in _help("predict")
    assert "Usage: pneumoseg compare [OPTIONS] RUNS..." in _help("compare")


def test_bool_flags_accept_no_value() -> None:
    result = CliRunner().invoke(app, ["split", "nowhere", "--force", "true"])
    assert result.exit_code == 2 and "true" in result.output  # "true" is an extra argument, not a value
