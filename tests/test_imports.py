"""The package's import graph: no cycles among its modules, and imports only go down the layers.

The graph is read with ``ast`` from the sources, without importing them, and counts every kind
of import: top-level ones, lazy ones inside functions, ``TYPE_CHECKING`` ones, and string
targets (``importlib.import_module("milvus_rerank.x")`` and ``"milvus_rerank.x:Name"``
literals such as the registry's).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import milvus_rerank

PACKAGE = "milvus_rerank"
SOURCE = Path(milvus_rerank.__file__).resolve().parent

#: Lower layers first; a module may import its own layer or any lower one, never a higher one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("core", "core.*", "_version", "_moved", "__init__", "registry")),
    ("providers", ("providers", "providers.*")),
    ("wrappers", ("wrappers", "wrappers.*", "cache")),
    ("integrations", ("integrations", "integrations.*", "langchain", "llama_index", "milvus")),
    ("app", ("app", "app.*", "cli", "ray_serve")),
]

#: Edges allowed to point upward, each the one registered indirection of its kind:
#: the package ``__init__``'s lazy map (and its ``TYPE_CHECKING`` mirror) names the public
#: classes without importing them, and the registry's ``"module:Class"`` targets are how a
#: provider key finds its class. Both are resolved on first use, never at import time.
EXEMPT_SOURCES = {"__init__", "core.registry"}

#: A string naming a package module, alone or as ``"module:Attr"`` (logger names that are no
#: module, such as ``"milvus_rerank.http"``, do not count).
_TARGET = re.compile(rf"^{PACKAGE}((?:\.\w+)+)(?::\w+)?$")


def module_names(root: Path = SOURCE) -> dict[str, Path]:
    """Module name (relative to the package, ``__init__`` for the package) -> its file."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``milvus_rerank.a.b`` (or ``a.b.Attr``) -> the package module it names, if any."""
    if name == PACKAGE:
        return "__init__"
    if not name.startswith(PACKAGE + "."):
        return None
    parts = name[len(PACKAGE) + 1 :].split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return "__init__"


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = [PACKAGE, *([] if module == "__init__" else module.split("."))]
    if not is_package:
        base.pop()  # a module's relative imports start from its package
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every package module that ``module`` imports, by any of the means the docstring lists."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _TARGET.match(node.value)
            if match and match.group(1)[1:] in modules:
                names = [node.value.split(":")[0]]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                yield target


def import_graph(root: Path = SOURCE) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = module_names(root)
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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
    return cycles


def layer_of(module: str) -> int:
    """The index of ``module``'s layer in ``LAYERS``."""
    for level, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return level
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import from a lower layer into a higher one (exemptions aside)."""
    return [
        f"{source} ({LAYERS[layer_of(source)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in sorted(graph.items())
        if source not in EXEMPT_SOURCES
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "providers.local.tiny" in graph["providers.local.reranker"]  # lazy, in a classmethod
    assert "providers.local.bge" in graph["core.registry"]  # a "module:Class" string target
    assert "providers.local.reranker" in graph["providers.local.bge"]  # top level
    assert {"core.base", "core.errors"} <= graph["core.registry"]


def test_no_import_cycles() -> None:
    # Every edge counts here, the exempt indirections included: none of them closes a loop.
    assert find_cycles(import_graph()) == []


def test_imports_only_go_down_the_layers() -> None:
    assert upward_imports(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        layer_of(module)


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_find_cycles(graph: dict[str, set[str]], cycles: list[list[str]]) -> None:
    assert find_cycles(graph) == cycles
