"""The package's shape: layers that only import downwards, and no import circle, lazy imports included.

    core      errors, settings, tasks, codecs, types, images, wire, annotate, request, video
    backends  backends.*            (core)
    engine    engine                (core, backends)
    model     model                 (core, backends, engine)
    top       server.*, compare, loopback, demo_models
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "inference"

CORE = {"errors", "settings", "tasks", "codecs", "types", "images", "wire", "annotate", "request", "video"}


def _layer(module: str) -> int:
    if module in CORE:
        return 0
    if module.startswith("backends."):
        return 1
    return {"engine": 2, "model": 3}.get(module, 4)


def _modules() -> dict[str, Path]:
    """``"backends.local"`` → its path, for every module of the package (``__init__`` files left out)."""
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
            for path in PACKAGE.rglob("*.py") if path.stem not in ("__init__", "__main__")}


def _imports() -> dict[str, set[str]]:
    """Module → the package's modules it imports, at the top, inside a function or under TYPE_CHECKING."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            prefix = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:
                for candidate in (".".join([*prefix, alias.name]), ".".join(prefix)):
                    if candidate in modules:
                        edges[name].add(candidate)
                        break
    return edges


def test_the_walk_finds_the_package():
    edges = _imports()
    assert {"backends.local", "backends.studio", "server.app", "server.pipeline", "codecs"} <= set(edges)
    assert "backends.base" in edges["backends.local"] and "engine" in edges["model"]


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


def test_nothing_imports_upwards():
    upward = [f"{module} -> {target}" for module, targets in _imports().items() for target in targets
              if _layer(target) > _layer(module)]
    assert upward == []


def test_the_server_runs_on_the_engine_and_backends_not_on_model():
    server = {module: targets for module, targets in _imports().items() if module.startswith("server.")}
    assert server and not any("model" in targets for targets in server.values())


def test_the_plain_server_never_imports_ray():
    """Ray lives in its own venv: only ``server.ray_serve`` imports it, and only ``--ray`` imports that module (inside
    the function that serves on Ray), so ``python -m inference.server`` runs without Ray installed."""
    importers, top_level = [], []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(imported == "ray" or imported.startswith("ray.") for imported in names):
                importers.append(name)
            if isinstance(node, ast.ImportFrom) and node.level and "ray_serve" in (
                    [alias.name for alias in node.names] + [node.module or ""]):
                importers.append(f"{name} (ray_serve)")
                if node in tree.body:
                    top_level.append(name)
    assert sorted(set(importers)) == ["server.cli (ray_serve)", "server.ray_serve"]
    assert top_level == []
