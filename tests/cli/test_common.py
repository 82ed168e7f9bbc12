"""pneumoseg.cli._common: the shared options, load_predictor and the cleanup of a failed command's folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pneumoseg.cli._common import no_new_empty_folders, parse_runs
from pneumoseg.cli.main import app

ROOT = get_command(app)
SHARED = {"--checkpoint": "best | last | snapshot-K", "--device": "cpu | cuda | cuda:N | mps",
          "--tta": "Horizontal-flip", "--batch-size": "Images per forward pass.", "--progress": "Show progress bars."}


@pytest.mark.parametrize("option", sorted(SHARED))
def test_shared_options_have_one_declaration(option: str) -> None:
    """Every command offering a shared option declares it the same way (the alias in _common)."""
    found = {}
    for name, command in ROOT.commands.items():
        for param in command.params:
            if option in param.opts and (option != "--batch-size" or name != "train"):  # train's is per device
                found[name] = (param.help, param.metavar, getattr(param, "min", None))
    assert len(found) >= 3, found
    assert len(set(found.values())) == 1, found
    assert SHARED[option] in next(iter(found.values()))[0]


def test_device_is_parsed_once_for_every_command(tmp_path: Path) -> None:
    runner = CliRunner()
    for argv in (["predict", "RUN", str(tmp_path), "--out", str(tmp_path / "o")], ["tune", "RUN"],
                 ["evaluate", "RUN"], ["serve", "RUN", "--port", "1"]):
        result = runner.invoke(app, [*argv, "--device", "gpu"])
        assert result.exit_code == 2, (argv, result.output)
        assert result.output.strip().splitlines()[-1] == \
            "error: --device 'gpu' unknown (valid: cpu, cuda, cuda:N, mps)", argv
    assert not (tmp_path / "o").exists()


def test_parse_runs() -> None:
    assert parse_runs("a,b/c,,") == [Path("a"), Path("b/c")]


def test_no_new_empty_folders_removes_only_what_the_failed_call_made(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "inside").mkdir(parents=True)
    with pytest.raises(RuntimeError), no_new_empty_folders(tmp_path / "a" / "b", old):
        (tmp_path / "a" / "b" / "masks").mkdir(parents=True)
        (old / "new-empty").mkdir()
        (old / "new-full").mkdir()
        (old / "new-full" / "f.txt").write_text("kept")
        raise RuntimeError("failed")
    assert not (tmp_path / "a").exists()
    assert sorted(p.name for p in old.iterdir()) == ["inside", "new-full"]  # old and empty: kept

    with no_new_empty_folders(tmp_path / "ok"):  # success: nothing removed
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()
