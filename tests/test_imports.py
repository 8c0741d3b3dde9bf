"""The package's shape: no import circle among its modules, and tests and benches reach it
only through public modules."""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "adk_cancel"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_import_time(path: Path) -> set[str]:
    """The package modules ``path`` imports when it is imported: top-level imports, not the
    ones under ``if TYPE_CHECKING`` or inside functions (those cannot form a circle)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("adk_cancel")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("adk_cancel"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def test_no_import_circle_in_the_package() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports_at_import_time(path) & modules.keys() for name, path in modules.items()}
    # A package's own __init__ is imported before any of its modules: not an edge back.
    for name, edges in graph.items():
        edges.difference_update({n for n in edges if name.startswith(n + ".")})
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_tests_and_benches_import_no_private_module() -> None:
    offenders = []
    for folder in ("tests", "bench", "samples"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] in (["from"], ["import"]) and len(words) > 1:
                    module = words[1]
                    private = [p for p in module.split(".") if p.startswith("_")]
                    if module.startswith("adk_cancel") and private:
                        offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []
