"""The shape of the code: no import cycles among the zoo's modules, no module using another's private names, and
a dependency's private API touched only in zoo/compat.py (read from the source with ``ast``, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("zoo", "datamodules")
# The one cycle that function-local imports close, on purpose: the registry imports the backbone modules on the
# first lookup (they register themselves), so that `import zoo` and `zoo --help` load no network code.
LAZY_LOADERS = {"zoo.registry"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def imported(name: str, module_level: bool) -> dict[str, list[tuple[str, int]]]:
    """The zoo modules ``name`` imports (at the top only, or anywhere) -> the names it takes and the lines."""
    tree = TREES[name]
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] if module_level else ast.walk(tree)
    found: dict[str, list[tuple[str, int]]] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, []).append(("", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:  # `from zoo.backbones import pretrained`: the submodule itself
                    found.setdefault(full, []).append(("", node.lineno))
                else:
                    found.setdefault(base, []).append((alias.name, node.lineno))
    return {m: v for m, v in found.items() if m in MODULES and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_modules_are_found():
    assert {"zoo.lightning_cli", "zoo.run.build", "zoo.compat", "zoo.registry", "datamodules.base"} <= set(MODULES)


def test_no_import_cycle_at_module_level():
    graph = {name: set(imported(name, module_level=True)) for name in MODULES}
    assert cycles(graph) == []


def test_no_import_cycle_through_function_local_imports_but_the_registrys_lazy_loading():
    graph = {name: set(imported(name, module_level=False)) for name in MODULES}
    for loader in LAZY_LOADERS:
        graph[loader] = set(imported(loader, module_level=True))
    assert cycles(graph) == []


def test_the_registry_is_the_only_lazy_loader():
    """The exception above stays one: without it, the only cycle is the registry's with the backbones."""
    graph = {name: set(imported(name, module_level=False)) for name in MODULES}
    found = cycles(graph)
    assert len(found) <= 1 and all("zoo.registry" in c for c in found), found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_of_another_module_is_imported(name):
    taken = [
        (f"{module}.{attr}", line)
        for module, names in imported(name, module_level=False).items()
        for attr, line in names
        if attr.startswith("_") and not attr.startswith("__")
    ]
    # `from zoo.backbones import pretrained as adapters; adapters._x`: a private name reached as an attribute.
    aliases = {}
    for node in ast.walk(TREES[name]):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                base = node.module if isinstance(node, ast.ImportFrom) else None
                full = f"{base}.{alias.name}" if base else alias.name
                if full in MODULES and full != name:
                    aliases[alias.asname or alias.name.split(".")[0]] = full
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                taken.append((f"{aliases[node.value.id]}.{node.attr}", node.lineno))
    assert taken == [], f"{name} uses other modules' private names (make them public or move them): {taken}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"zoo.compat"}))
def test_a_dependencys_private_api_is_imported_only_in_compat(name):
    """zoo/compat.py wraps each of them, with a test in tests/test_compat.py."""
    used = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in PACKAGES:
                continue
            private_module = any(p.startswith("_") and not p.startswith("__") for p in node.module.split("."))
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private_module or names:
                used.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(p.startswith("_") and not p.startswith("__") for p in alias.name.split(".")):
                    used.append((alias.name, [], node.lineno))
    assert used == [], f"{name} imports a dependency's private API; wrap it in zoo/compat.py: {used}"
