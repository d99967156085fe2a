"""The package tree is the layer map of docs/design.md, and imports point one way: down.

The import graph is built with ``ast`` from every module of ``kdcache``: module-level and function-level imports
alike (an import inside a function still ties the two modules together). A module importing ``kdcache.a.b`` depends
on ``kdcache.a.b`` when that is a module, else on the nearest enclosing package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdcache"

# The layers of docs/design.md, bottom up: a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "registry", "fingerprint", "checkpoint", "names", "tables", "atomic")),
    ("domain", ("views", "datasets", "models", "targets", "losses", "capture", "metrics")),
    ("store", ("store",)),
    ("stage one", ("precompute",)),
    ("stage two", ("train",)),
    ("pipeline", ("pipeline",)),
    ("tools", ("tools",)),
    ("cli", ("cli", "__main__")),
]
RANK = {"foundation": 0, "domain": 1, "store": 2, "stage one": 3, "stage two": 3, "pipeline": 4, "tools": 5, "cli": 6}
NO_TORCH = ("kdcache.store", "kdcache.errors", "kdcache.registry", "kdcache.fingerprint", "kdcache.names",
            "kdcache.tables", "kdcache.atomic")  # fmt: skip
STORE_ERRORS = {"StoreMismatchError", "StoreFormatError", "StoreIncompleteError", "CorruptShardError",
                "StoreNotFoundError", "StoreIOError"}  # fmt: skip
MAX_ROOT_MODULES, MAX_MODULE_LINES, MAX_FUNCTION_LINES = 11, 400, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def resolve(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imported_names(tree: ast.AST) -> list[str]:
    """Every absolute name an import statement anywhere in the module brings in (``from a import b`` gives a.b)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "kdcache uses absolute imports only"
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def build_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, tree in TREES.items():
        for imported in imported_names(tree):
            if imported == "kdcache" or imported.startswith("kdcache."):
                target = resolve(imported)
                if target != name:
                    graph[name].add(target)
    return graph


GRAPH = build_graph()


def layer_of(module: str) -> str:
    if module == "kdcache":
        return "api"
    first = module.split(".")[1]
    for layer, members in LAYERS:
        if first in members:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the layer map of docs/design.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
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

    for module in sorted(set(graph) | {w for targets in graph.values() for w in targets}):
        if module not in index:
            visit(module)
    return found


def test_every_module_belongs_to_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_imports_point_down() -> None:
    wrong = []
    for source, targets in GRAPH.items():
        a = layer_of(source)
        for target in targets:
            b = layer_of(target)
            if a == "api" or a == b:
                continue
            if b == "api" or RANK[b] >= RANK[a]:
                wrong.append(f"{source} ({a}) -> {target} ({b})")
    assert wrong == []


def test_the_cycle_test_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(NO_TORCH)])
def test_store_and_foundation_do_not_import_torch(module: str) -> None:
    """Opening a store needs no torch: the store knows arrays and manifests, not networks or tensors."""
    assert not [n for n in imported_names(TREES[module]) if n.split(".")[0] == "torch"]


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("kdcache.losses", "kdcache.targets"))])
def test_losses_and_targets_know_nothing_of_stores(module: str) -> None:
    """A loss fed by a live teacher must not talk about stores: no store errors, no store imports."""
    names = {node.id for node in ast.walk(TREES[module]) if isinstance(node, ast.Name)}
    names |= {
        alias.name for node in ast.walk(TREES[module]) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert not names & STORE_ERRORS
    assert not [t for t in GRAPH.get(module, ()) if layer_of(t) == "store"]


def test_the_root_is_small() -> None:
    root = [p.name for p in PACKAGE.glob("*.py")]
    assert len(root) <= MAX_ROOT_MODULES, sorted(root)


def test_modules_and_functions_are_small() -> None:
    big = [f"{m} ({len(p.read_text().splitlines())})" for m, p in MODULES.items()
           if len(p.read_text().splitlines()) > MAX_MODULE_LINES]  # fmt: skip
    long = [
        f"{m}:{node.name} ({node.end_lineno - node.lineno + 1})"
        for m, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert (big, long) == ([], [])


def test_design_doc_lists_every_layer_folder() -> None:
    """The layer map at the top of docs/design.md names every package folder and root module."""
    doc = (PACKAGE.parent / "docs" / "design.md").read_text().split("\n## ")[1]
    assert doc.startswith("Layer map")
    missing = [p.name for p in sorted(PACKAGE.iterdir())
               if (p.is_dir() and (p / "__init__.py").exists() or p.suffix == ".py") and p.name != "__init__.py"
               and f"`{p.stem if p.suffix else p.name}" not in doc]  # fmt: skip
    assert missing == []
