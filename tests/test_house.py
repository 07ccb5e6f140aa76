"""The house keeps its rooms: the product never imports the simulator or the lab, imports without the sandbox
extra (SpiffWorkflow), follows the dependency direction, and its modules import each other without circles.

Imports are read with ``ast`` from every module, including those inside functions (a lazy import is still a
dependency: it runs the first time that function does).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("schemas", "importers", "policy", "critic", "service.runtime", "service.api")
# What each room of the product must not import of the project (beyond the sandbox and the lab, which no room
# of the product imports): the arrows point toward schemas.
FORBIDDEN: dict[str, set[str]] = {
    "schemas": {"importers", "policy", "critic", "service", "service.runtime", "service.api"},
    "importers": {"policy", "critic", "service", "service.runtime", "service.api"},
    "policy": {"critic", "service", "service.runtime", "service.api"},
    "critic": {"service", "service.runtime", "service.api"},
    "service.runtime": {"service", "service.api"},  # service.cli is the composition root; the API sits on top
    "service.api": {"service"},
}
ROOMS = ("schemas", "importers", "policy", "critic", "service", "sandbox", "lab", "bench", "tests")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> list[str]:
    """Every module of ``package`` (a dotted name), the package itself included."""
    folder = ROOT.joinpath(*package.split("."))
    return sorted(module_name(path) for path in folder.rglob("*.py"))


def imported(module: str) -> Iterator[str]:
    """The absolute names ``module`` imports anywhere in its source (for ``from a import b``: ``a`` and ``a.b``)."""
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def room_of(name: str) -> str | None:
    """The room a dotted name belongs to (``service.runtime`` and ``service.api`` are rooms of their own)."""
    for room in ("service.runtime", "service.api", *ROOMS):
        if name == room or name.startswith(room + "."):
            return room
    return None


def product_modules() -> list[str]:
    return [name for package in PRODUCT for name in modules(package)]


def test_the_import_reader_sees_imports_inside_functions() -> None:
    # critic.feedback imports the feedback store only when a database URL is read.
    assert "critic.store" in set(imported("critic.feedback"))
    assert "critic.store.FeedbackStore" in set(imported("critic.feedback"))


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_never_imports_the_sandbox_or_the_lab(package: str) -> None:
    offending = {
        f"{module} imports {name}"
        for module in modules(package)
        for name in imported(module)
        if room_of(name) in ("sandbox", "lab", "bench", "tests")
    }
    assert not offending, sorted(offending)


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_follows_the_dependency_direction(package: str) -> None:
    offending = set()
    for module in modules(package):
        for name in imported(module):
            room = room_of(name)
            if room in FORBIDDEN[package]:
                offending.add(f"{module} imports {name}")
    assert not offending, sorted(offending)


def test_the_product_modules_import_each_other_without_circles() -> None:
    names = set(product_modules())
    graph = {module: {n for n in imported(module) if n in names and n != module} for module in names}
    cycles: list[list[str]] = []
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


# Hides SpiffWorkflow (the sandbox extra), imports every module named on stdin, and checks that neither the
# simulator nor the lab came along; then checks the blocker really hides the engine.
WITHOUT_SANDBOX = """
import importlib, importlib.abc, json, sys

class HideSpiffWorkflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "SpiffWorkflow" or name.startswith("SpiffWorkflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (the sandbox extra is hidden)", name=name)
        return None

sys.meta_path.insert(0, HideSpiffWorkflow())
for name in json.load(sys.stdin):
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("sandbox", "lab", "SpiffWorkflow"))
assert not loaded, loaded
try:
    import SpiffWorkflow  # noqa: F401
except ModuleNotFoundError:
    print("ok")
else:
    raise SystemExit("the blocker did not hide SpiffWorkflow")
"""


def test_the_product_imports_without_the_sandbox_extra() -> None:
    names = product_modules()
    assert len(names) > 50  # every module of the product, not a handful
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SANDBOX],
        input=json.dumps(names),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
