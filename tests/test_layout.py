"""The package's shape: no import circle between its modules, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "inference"


def _imports() -> dict[str, set[str]]:
    """Module → the package's modules it imports, at the top or inside a function."""
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
                edges[name] |= {target for target in targets if target in modules}
    return edges


def test_no_import_circle():
    edges = _imports()
    circles = []
    for start in edges:
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for target in edges[module]:
                if target == start:
                    circles.append(" -> ".join([*path, target]))
                elif target not in path:
                    stack.append((target, [*path, target]))
    assert circles == []
