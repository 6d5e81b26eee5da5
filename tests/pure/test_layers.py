"""The layering of the package, read from its source: one-way imports, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ctfs"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every ctfs module and the ctfs modules it imports (TYPE_CHECKING ones too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


GRAPH = _imports()


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, "ctfs.files")))
def test_file_declarations_import_no_kernel_backend(module: str) -> None:
    assert not [m for m in GRAPH[module] if _in(m, "ctfs.kernel")]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, "ctfs.model")))
def test_the_model_knows_the_kernel_only_through_its_protocols(module: str) -> None:
    allowed = {"ctfs.kernel", "ctfs.kernel.api"}
    assert not [m for m in GRAPH[module] if _in(m, "ctfs.kernel") and m not in allowed]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, "ctfs.policy")))
def test_the_openvz_rules_are_pure(module: str) -> None:
    allowed = {"ctfs.errors", "ctfs.kernel", "ctfs.kernel.api"}
    assert not [m for m in GRAPH[module] if not _in(m, "ctfs.policy") and m not in allowed]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, "ctfs.kernel")))
def test_kernel_backends_never_import_upwards(module: str) -> None:
    upper = ("ctfs.model", "ctfs.files", "ctfs.fs", "ctfs.daemon", "ctfs.cli")
    assert not [m for m in GRAPH[module] if any(_in(m, u) for u in upper)]


def test_there_is_no_import_circle() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(GRAPH[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
