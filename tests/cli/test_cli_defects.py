"""Issue 21 item 8, the CLI defects: help cut at 80 columns with type labels, post-processing rules printed as
Python dicts, a start line naming a placeholder instead of the cache used, and empty folders left by a failed
``predict``. Each test failed before its fix."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from pneumoseg.cli.main import app

COMMANDS = sorted(get_command(app).commands)
# typer's type labels: "<bool>", "<str>", "<int range>", "<path>", "<list[Path]>", "<float>"
TYPE_LABEL = re.compile(r"<(bool|str|int|int range|float|float range|path|list\[\w+\])>")


def _help80(argv: list[str]) -> str:
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_fits_80_columns_uncut_with_readable_metavars(name: str) -> None:
    text = _help80([name, "--help"] if name else ["--help"])
    assert "…" not in text  # rich cut long words ("OUT/submission.cs…")
    assert all(len(line) <= 80 for line in text.splitlines()), [x for x in text.splitlines() if len(x) > 80]
    assert not TYPE_LABEL.search(text), TYPE_LABEL.search(text)


def test_predict_help_shows_every_help_text_whole() -> None:
    text = " ".join(_help80(["predict", "--help"]).split())
    for whole in ("Submission CSV path (default OUT/submission.csv).", "Write OUT/overlays/<image_id>.png.",
                  "--out PATH", "--batch-size N", "--device DEVICE", "--checkpoint NAME", "--list FILE"):
        assert whole in text, whole


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_and_export_print_the_rule_as_text(trained_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # print the start lines, do not serve
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(trained_run), "--port", str(_free_port()), "--device", "cpu"],
                           terminal_width=300)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("model "))
    assert "post-processing: prob > " in line and "{" not in line, line

    result = runner.invoke(app, ["export", str(trained_run), "--onnx", str(tmp_path / "m.onnx"), "--no-verify"],
                           env={"COLUMNS": "300"}, terminal_width=300)
    assert result.exit_code == 0, result.output
    row = next(x for x in result.output.splitlines() if "post-processing" in x)
    assert "prob > " in row and "{" not in row and "threshold" not in row, row


def test_study_start_line_names_the_cache_really_used(tmp_path: Path) -> None:
    """The study file sets no ``cache:``, its experiments' configs do: the line named "(config cache)"."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "set": [f"data.cache={tmp_path / 'elsewhere'}"],
                                    "experiments": [{"name": "a", "config": "seed_unet"}]}))
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "S"), "--folds", "2"],
                                terminal_width=300)
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert f"1 experiments on {tmp_path / 'elsewhere'}," in first and "(config cache)" not in first, first

    spec.write_text(yaml.safe_dump({"name": "s", "experiments": [{"name": "a", "config": "seed_unet"}]}))
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "S2")], terminal_width=300)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {spec}: experiment 'a' has no data.cache (set cache: in the study file or pass --cache)"]


def test_failed_predict_leaves_no_new_empty_folder(trained_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"not a DICOM")
    common = ["--no-progress", "--device", "cpu"]

    out = tmp_path / "new" / "out"  # two folders this call would create
    result = runner.invoke(app, ["predict", str(trained_run), str(tmp_path / "missing"), "--out", str(out), *common])
    assert result.exit_code == 2 and "missing: no such file or folder" in result.output
    assert not (tmp_path / "new").exists()

    result = runner.invoke(app, ["predict", str(tmp_path / "norun"), str(bad), "--out", str(out), *common])
    assert result.exit_code == 2 and "not a run folder" in result.output
    assert not (tmp_path / "new").exists()

    result = runner.invoke(app, ["predict", str(trained_run), str(bad), "--out", str(out),
                                 "--submission", str(tmp_path / "sub" / "s.csv"), *common])
    assert result.exit_code == 2 and "1 input(s) could not be predicted" in result.output
    empty = [p for p in (tmp_path / "new").rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty and not (tmp_path / "sub").exists()  # what remains records the failure (manifest)

    kept = tmp_path / "kept"  # a folder that existed: kept with what it held, no new empty folders in it
    (kept / "old").mkdir(parents=True)
    result = runner.invoke(app, ["predict", str(tmp_path / "norun"), str(bad), "--out", str(kept), *common])
    assert result.exit_code == 2 and (kept / "old").is_dir()
    result = runner.invoke(app, ["predict", str(trained_run), str(bad), "--out", str(kept), *common])
    assert result.exit_code == 2
    assert (kept / "old").is_dir() and not [p for p in kept.rglob("*") if p.is_dir() and p.name != "old"
                                            and not any(p.iterdir())]
