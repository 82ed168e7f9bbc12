"""The README is true: every ``pneumoseg`` command in its code blocks parses, the split commands run,
and the demo figures it quotes are the ones docs/benchmarks.md measured.

Commands are parsed with the CLI's own click objects (option names, types, choices, ranges, arity; no
option checks that a path exists, so the README's example paths parse); ``split`` lines, whose option
combinations are checked at run time, are run on a small cache. Placeholders in ``[...]`` are optional
flags and are kept without brackets; ``$F`` takes the value assigned in the same block.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer._click.exceptions import UsageError  # typer >= 0.2x vendors its click
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()


def readme_commands() -> list[list[str]]:
    """Every ``pneumoseg ...`` line of the README's bash blocks as argv (after ``pneumoseg``)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        variables: dict[str, str] = {}
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if m := re.fullmatch(r"([A-Z_]+)=(\S+)", line):
                variables[m[1]] = m[2]
                continue
            if not line.startswith("pneumoseg "):
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # [--sr] -> --sr
            commands.append(shlex.split(line)[1:])
    return commands


COMMANDS = readme_commands()


def test_readme_has_commands() -> None:
    names = {argv[0] for argv in COMMANDS}
    assert {"synth", "explore", "prepare", "split", "train", "tune", "evaluate", "predict", "export",
            "serve", "listen", "dicomweb", "compare", "score", "study", "report", "demo", "models"} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(argv: list[str]) -> None:
    from pneumoseg.cli.main import app

    command = typer.main.get_command(app).commands.get(argv[0])  # type: ignore[attr-defined]
    assert command is not None, f"README names an unknown command: pneumoseg {argv[0]}"
    try:
        command.make_context(argv[0], list(argv[1:]))
    except UsageError as exc:
        pytest.fail(f"README: `pneumoseg {' '.join(argv)}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize("argv", [a for a in COMMANDS if a[0] == "split"],
                         ids=lambda a: " ".join(a))
def test_readme_split_commands_run(argv: list[str], synth_cache: Path, tmp_path: Path) -> None:
    from pneumoseg.cli.main import app

    cache = tmp_path / "cache"
    shutil.copytree(synth_cache, cache)
    (cache / "splits.csv").unlink()  # a fresh cache, as after `prepare`
    result = CliRunner().invoke(app, ["split", str(cache), *argv[2:]])
    assert result.exit_code == 0, f"README: `pneumoseg {' '.join(argv)}` fails: {result.output}"
    assert (cache / "splits.csv").is_file()


def _demo_seed_table() -> list[tuple[int, float, float]]:
    """(seed, test dice_kaggle, test dice_positive) rows of the "Learns with every seed" table of the current
    demo recipe (the section's first table; the recipes it replaced follow under ### headings)."""
    section = BENCHMARKS.split("## Learns with every seed", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return [(int(m[1]), float(m[2]), float(m[3]))
            for m in re.finditer(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|", section, flags=re.M)]


def test_readme_demo_figures_are_the_measured_ones() -> None:
    rows = _demo_seed_table()
    assert len(rows) >= 5
    seeds = [r[0] for r in rows]
    kaggle = [r[1] for r in rows]
    positive = [r[2] for r in rows]
    text = " ".join(README.split())
    mean_k, mean_p = sum(kaggle) / len(kaggle), sum(positive) / len(positive)
    assert f"dice_kaggle {mean_k:.2f} and dice_positive {mean_p:.2f}" in text
    assert f"seeds {min(seeds)}-{max(seeds)}" in text and seeds == list(range(min(seeds), max(seeds) + 1))
    assert f"dice_kaggle {min(kaggle):.2f}-{max(kaggle):.2f}, dice_positive {min(positive):.2f}-{max(positive):.2f}" \
        in text


def test_readme_recipe_table_is_the_measured_one() -> None:
    """The README's few-images table quotes docs/benchmarks.md's seeded 256 px cross-validation, row by row."""
    start, end = "<!-- small-data-256-seeds:start -->", "<!-- small-data-256-seeds:end -->"
    section = BENCHMARKS[BENCHMARKS.index(start):BENCHMARKS.index(end)]
    dice = r"[\d.]+ \([\d.]+-[\d.]+\)"
    # benchmarks: | `name` | what | steps | seeds | OOF dice_positive (CI) | ...
    measured = {m[1]: (m[2], m[3]) for m in re.finditer(
        rf"^\| `(\w+)` \| [^|]+ \| (\d+) \| \d+ \| ({dice}) \|", section, flags=re.M)}
    # README: | `name` (what) | steps | OOF dice_positive (CI) | ...
    recipes = README[README.index("## Which recipe for which data size"):]
    recipes = recipes[:recipes.index("\n## ")]
    quoted = re.findall(rf"^\| `(\w+)`[^|]* \| (\d+) \| ({dice}) \|", recipes, flags=re.M)
    assert {"small_data", "resnet34_150", "lite0_scratch_150"} <= {name for name, _, _ in quoted}
    for name, steps, value in quoted:
        assert measured[name] == (steps, value), name
