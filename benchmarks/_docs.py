"""Shared by the benchmark scripts: rewrite one marked section of docs/benchmarks.md in place."""

from __future__ import annotations

from pathlib import Path

from pneumoseg.util.atomic import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def update_section(name: str, section: str, docs: Path = DOCS) -> None:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (append if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section}{end}\n"
    text = docs.read_text() if docs.is_file() else "# Benchmarks\n\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(docs, text)
