"""Data flows one way: a module imports only modules above it in docs/architecture.md's list."""

from __future__ import annotations

import ast
from pathlib import Path

import pneumoseg

# Top to bottom; modules inside one entry (a sub-package) may import each other.
LAYERS = [
    "pneumoseg.errors", "pneumoseg.util", "pneumoseg.io",
    "pneumoseg.data.phantom", "pneumoseg.data.synth", "pneumoseg.data.explore", "pneumoseg.data.cache",
    "pneumoseg.data.pool", "pneumoseg.data.prepare_items", "pneumoseg.data.prepare", "pneumoseg.data.split",
    "pneumoseg.data.augment", "pneumoseg.data.dataset", "pneumoseg.data.sampler", "pneumoseg.data.datamodule",
    "pneumoseg.config", "pneumoseg.runs", "pneumoseg.models", "pneumoseg.scoring", "pneumoseg.training", "pneumoseg.inference",
    "pneumoseg.evaluation", "pneumoseg.reporting", "pneumoseg.workflows", "pneumoseg.pacs", "pneumoseg.service",
    "pneumoseg.cli",
]


def _layer(module: str) -> int | None:
    matches = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return matches[-1] if matches else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("pneumoseg.")}


def test_no_upward_imports() -> None:
    root = Path(pneumoseg.__file__).parent
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("pneumoseg", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        own = _layer(module)
        if own is None:
            if module != "pneumoseg" and not module.endswith("data"):
                problems.append(f"{module} is not in LAYERS")
            continue
        for imported in _imports(path):
            layer = _layer(imported)
            if layer is not None and layer > own:
                problems.append(f"{module} imports {imported} (below it)")
    assert not problems, "\n".join(problems)
