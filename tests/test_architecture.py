"""Rules of the package's shape, checked on its source: no import cycle between modules, and a
leading underscore means private (no module imports another module's ``_name``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pfd_ase"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _target(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(module imported from, name) for every ``pfd_ase`` import, lazy ones included."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _target(module, node)
            if target.startswith("pfd_ase"):
                out += [(target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("pfd_ase")]
    return out


def _edges(module: str) -> set[str]:
    """Modules that ``module`` depends on (``from pkg import submodule`` -> the submodule)."""
    edges = set()
    for target, name in _imports(module):
        submodule = f"{target}.{name}"
        if name is not None and (submodule in MODULES or _is_extension(submodule)):
            if submodule in MODULES:
                edges.add(submodule)
        elif target in MODULES:
            edges.add(target)
    edges.discard(module)
    return edges


def _is_extension(name: str) -> bool:
    parts = name.split(".")
    folder = ROOT.parent.joinpath(*parts[:-1])
    return any(folder.glob(f"{parts[-1]}.c")) or any(folder.glob(f"{parts[-1]}.*.so"))


def _cycle() -> list[str] | None:
    graph = {m: _edges(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for module in MODULES:
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_checker_sees_the_package():
    assert "pfd_ase.models" in MODULES and "pfd_ase.selectors" in MODULES
    assert "pfd_ase.selectors._kde" in _edges("pfd_ase.selectors.quests")


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_no_private_name_crosses_a_module():
    bad = []
    for module in MODULES:
        for target, name in _imports(module):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            submodule = f"{target}.{name}"
            is_module = submodule in MODULES or _is_extension(submodule)
            # a private submodule may be imported from inside its own package only
            if is_module and _package(module).startswith(target):
                continue
            bad.append(f"{module}: from {target} import {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_has_a_docstring(module):
    tree = ast.parse(MODULES[module].read_text())
    assert ast.get_docstring(tree), f"{module} has no module docstring"
