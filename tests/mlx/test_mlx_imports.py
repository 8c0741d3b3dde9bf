"""The modules of adk_cancel.mlx import one another without a cycle.

Read from the source (every ``from . import`` / ``from ._x import``, at module level, in
functions and under ``TYPE_CHECKING`` alike), so a cycle is caught even where it would
only show up as a half-initialised module at import time in some import order.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import adk_cancel.mlx

PACKAGE = Path(adk_cancel.mlx.__file__).resolve().parent


def _sibling_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        if node.module is not None:
            found.add(node.module.split(".")[0])
        else:
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_among_the_mlx_modules() -> None:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {
        name: {m for m in _sibling_imports(path) if m in modules} for name, path in modules.items()
    }
    assert graph["_llm"], "the import scan found nothing: it is broken, not the package clean"
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle among adk_cancel.mlx modules: {exc.args[1]}") from exc
    assert set(order) == set(modules)
