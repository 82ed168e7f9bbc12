"""`pneumoseg --help` and every subcommand's --help import no heavy library (torch, pandas, cv2, ...)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

from pneumoseg.cli.main import app

COMMANDS = sorted(get_command(app).commands)
FORBIDDEN = ("torch", "lightning", "pandas", "cv2", "fastapi", "numpy", "matplotlib", "pydicom", "sklearn")


def _loaded(argv: list[str]) -> set[str]:
    code = (f"import sys; sys.argv={['pneumoseg', *argv]!r}\nfrom pneumoseg.cli.main import app\ntry:\n    app()\n"
            "except SystemExit:\n    pass\nprint('MODS', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "250", "NO_COLOR": "1", "PATH": "", "HF_HUB_OFFLINE": "1"}).stdout
    line = next(row for row in out.splitlines() if row.startswith("MODS "))
    return set(line.split()[1:])


def test_root_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "pneumoseg.cli.main", "--help"], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "250", "NO_COLOR": "1"}).stdout
    for name in COMMANDS:
        assert name in out, name


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["nosuchcommand"]])
def test_root_imports_nothing_heavy(argv: list[str]) -> None:
    assert not _loaded(argv) & set(FORBIDDEN)


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_imports_nothing_heavy(name: str) -> None:
    assert not _loaded([name, "--help"]) & set(FORBIDDEN[:5])


def test_prepare_help_constants_match_library() -> None:
    from pneumoseg.cli import prepare as cli_prepare
    from pneumoseg.data import prepare as lib_prepare
    from pneumoseg.io import images

    assert cli_prepare.SIZES == lib_prepare.SIZES
    assert cli_prepare.DEFAULT_MASK_RULE == lib_prepare.DEFAULT_MASK_RULE
    assert cli_prepare.MASK_RULES == images.MASK_RULES


def test_train_help_config_names_match_library() -> None:
    from pneumoseg.cli.train import experiment_configs
    from pneumoseg.config import list_configs

    assert experiment_configs() == [name.removesuffix(".yaml") for name in list_configs()]
