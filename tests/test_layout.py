"""The package's layout holds: no import cycle among its modules, and the core never imports the
machine-learning stack.

Every import counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): a lazy import still ties two modules together, and a cycle of lazy imports
only waits for the wrong call order to break.  What is not counted is the package ``__init__``
Python runs before a submodule: ``atomicwrite/__init__.py`` is the public face and imports the
modules it re-exports, and the subpackages' ``__init__`` files import nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "atomicwrite"
# The adapters, which may import what they adapt (lazily: see test_adapters_import_lazily).
ADAPTERS = {
    "atomicwrite.torch",
    "atomicwrite.lightning",
    "atomicwrite.distributed",
    "atomicwrite.pytorch_lightning",
    "atomicwrite.transformers",
}
ML_STACK = (
    "torch",
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "transformers",
    "accelerate",
    "pandas",
    "zarr",
    "numpy",
    "safetensors",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, ast.stmt]]:
    """Every module name ``name`` imports, absolute, with the statement (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, ast.stmt]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from . import torch" imports the submodule atomicwrite.torch; "from .. import
            # sweep" the name sweep from atomicwrite/__init__.py.
            submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
            found += [(submodule, node) for submodule in submodules]
            if len(submodules) < len(node.names):
                found.append((module, node))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {imported for imported, _ in _imports(name, path) if imported in MODULES and imported != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def test_the_walk_sees_every_kind_of_import() -> None:
    """The checks below are only as good as the walk: it must find relative, lazy and
    TYPE_CHECKING imports, and tell a submodule imported by name from a name of a package."""
    graph = _graph()
    assert "atomicwrite._local.base" in graph["atomicwrite._local.posix"]  # from .base import ...
    assert "atomicwrite._local.posix" in graph["atomicwrite._directories.api"]  # inside a function
    assert "atomicwrite" in graph["atomicwrite._cli.main"]  # from .. import __version__
    assert "atomicwrite" not in graph["atomicwrite.lightning"]  # from . import torch: the submodule only
    assert "atomicwrite._directories.store" in graph["atomicwrite._sweep"]  # imported inside sweep()
    assert "atomicwrite.torch" in graph["atomicwrite._cli.verify"]  # from .. import torch, in a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other, directly or through others: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_core_never_imports_the_ml_stack() -> None:
    """Only the adapters touch torch, Lightning & co.; the CLI reaches them through an adapter
    (its training demo is the one exception, and imports them at run time only)."""
    offenders = []
    for name, path in MODULES.items():
        if name in ADAPTERS or name == "atomicwrite._cli.demo_lightning":
            continue
        for imported, node in _imports(name, path):
            if imported.split(".")[0] in ML_STACK:
                offenders.append(f"{name}:{node.lineno} imports {imported}")
    assert not offenders


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapters_import_lazily(name: str) -> None:
    """``import atomicwrite.torch`` must work without torch: its imports of the stack sit in
    functions (or under TYPE_CHECKING), never at module level."""
    tree = ast.parse(MODULES[name].read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    for node in top_level:
        if isinstance(node, ast.ImportFrom) and node.level:
            continue  # our own modules
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        assert not [n for n in names if n.split(".")[0] in ML_STACK], f"{name}:{node.lineno} imports {names}"


def test_subpackages_read_like_the_architecture() -> None:
    """One folder per role, each private, each with a docstring that says what it holds."""
    roles = {"_local", "_stores", "_directories", "_cli"}
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert folders == roles
    for role in roles:
        doc = ast.get_docstring(ast.parse((PACKAGE / role / "__init__.py").read_text()))
        assert doc, f"atomicwrite/{role}/__init__.py says nothing of its role"
