"""The layers import only downward: data <- models <- guides <- inference <- report <- app.

Every ``import`` statement of the project's packages is read from the source (function-level
imports too), so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("gallery.data", "gallery.models", "guides", "inference", "gallery.report", "gallery.app")


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a dotted module name; the package root ``gallery`` re-exports the
    models and data, so it sits with the models. ``None``: not the project's."""
    if module == "gallery":
        return LAYERS.index("gallery.models")
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a.b`` when a.b is a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


SOURCES = sorted(p for package in ("gallery", "guides", "inference") for p in (ROOT / package).rglob("*.py"))


def import_edges() -> dict[tuple[str, str], int]:
    """(importing layer, imported layer) -> number of import statements."""
    edges: dict[tuple[str, str], int] = {}
    for path in SOURCES:
        here = layer_of(module_name(path))
        for name in imported(path):
            there = layer_of(name)
            if here is not None and there is not None and there != here:
                key = (LAYERS[here], LAYERS[there])
                edges[key] = edges.get(key, 0) + 1
    return edges


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_goes_down(path):
    here = layer_of(module_name(path))
    if here is None or module_name(path) == "gallery":
        return
    upward = [name for name in imported(path) if (layer_of(name) or 0) > here]
    assert not upward, f"{module_name(path)} ({LAYERS[here]}) imports upward: {upward}"


def test_the_edge_table_has_no_upward_edge():
    edges = import_edges()
    assert edges, "no edges found: the test reads no source"
    assert all(LAYERS.index(a) > LAYERS.index(b) for a, b in edges)
