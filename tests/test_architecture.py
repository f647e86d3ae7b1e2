"""The architecture as a contract: the dependency direction of ``../shared/STYLE.md``,
checked on every module's imports.

* each module has a layer; it imports only from lower layers or its own group, so
  nothing points back up (the agent wires, adapters and exposition never see each
  other, sizing never sees an adapter);
* the pure cores import only the standard library (and each other): they are tested
  by feeding them values, with no database, clock or lock of anyone else's;
* only the agent imports an adapter; nothing in ``poolwatch/`` imports the tests, load
  tests, benchmarks, dashboards or alerts; no two modules import each other in a cycle.

Imports inside ``if TYPE_CHECKING:`` are for the type checker only and do not count.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "poolwatch"

# (group, prefixes), lowest layer first; a module belongs to the group of its longest
# matching prefix. Groups on one line share a layer but may not import each other.
LAYERS: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...] = (
    (
        (
            "core",
            (
                "poolwatch.errors",
                "poolwatch.events",
                "poolwatch.config",
                "poolwatch.safety",
                "poolwatch.forksafe",
                "poolwatch.context",
            ),
        ),
    ),
    (("metric definitions", ("poolwatch.exposition.metrics", "poolwatch.exposition.histogram")),),
    (("queries", ("poolwatch.queries",)),),
    (("pools", ("poolwatch.pools",)),),
    (("sizing", ("poolwatch.sizing",)),),
    (("adapters", ("poolwatch.adapters",)), ("exposition", ("poolwatch.exposition",))),
    (("agent", ("poolwatch.agent",)),),
    # poolwatch run: wires the agent into an app that was not changed for it.
    (("launch", ("poolwatch.launch",)),),
    (
        (
            "front",
            (
                "poolwatch",
                "poolwatch.__main__",
                "poolwatch.cli",
                "poolwatch.testing",
                "poolwatch.pytest_plugin",
                "poolwatch.demo",
            ),
        ),
    ),
)

# Pure cores: the standard library and each other only.
PURE = frozenset(
    {
        "poolwatch.events",
        "poolwatch.errors",
        "poolwatch.safety",
        "poolwatch.forksafe",
        "poolwatch.queries.textcache",
        "poolwatch.queries.operations",
        "poolwatch.queries.fingerprint",
        "poolwatch.queries.callsite",
        "poolwatch.queries.frames",
        "poolwatch.queries.tasks",
        "poolwatch.queries.detect",
        "poolwatch.queries.groups",
        "poolwatch.queries.eager",
        "poolwatch.queries.findings",
        "poolwatch.queries.hints",
        "poolwatch.queries.kinds",
        "poolwatch.queries.suggestions",
        "poolwatch.sizing.controller",
        "poolwatch.sizing.budget",
        "poolwatch.sizing.appname",
        "poolwatch.sizing.limiter",
        "poolwatch.sizing.deadline",
        "poolwatch.pools.holders",
        "poolwatch.pools.reconcile",
        "poolwatch.pools.reading",
        "poolwatch.pools.checkout",
        "poolwatch.pools.regions",
        "poolwatch.pools.source",
        "poolwatch.pools.waits",
        "poolwatch.launch.names",
        "poolwatch.launch.options",
        "poolwatch.launch.workers",
        "poolwatch.launch.shared_dir",
        # run first in every process of the command: nothing of poolwatch at import
        "poolwatch.launch._bootstrap.sitecustomize",
    }
)

OUTSIDE = ("tests", "loadtests", "benchmarks", "dashboards", "alerts")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for inner in ast.walk(node))
    return hidden


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules ``path`` imports at run time (a ``from package import name`` of a
    submodule counts as that submodule)."""
    tree = ast.parse(path.read_text())
    hidden = _type_checking_nodes(tree)
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def graph() -> dict[str, set[str]]:
    """Every module of poolwatch/ and the modules it imports at run time."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def group_of(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None  # (prefix length, layer, group)
    for rank, groups in enumerate(LAYERS):
        for group, prefixes in groups:
            for prefix in prefixes:
                matches = module == prefix or module.startswith(prefix + ".")
                if matches and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), rank, group)
    if best is None:
        raise KeyError(f"{module} belongs to no layer: add it to LAYERS")
    return best[1], best[2]


def back_edges(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that point up, or across to another group of the same layer."""
    found = []
    for module, imported in sorted(edges.items()):
        rank, group = group_of(module)
        for target in sorted(imported):
            if not target.startswith("poolwatch"):
                continue
            target_rank, target_group = group_of(target)
            if target_rank > rank or (target_rank == rank and target_group != group):
                found.append(f"{module} ({group}) imports {target} ({target_group})")
    return found


def impure_imports(edges: Mapping[str, Iterable[str]]) -> list[str]:
    found = []
    for module in sorted(PURE & edges.keys()):
        for target in sorted(edges[module]):
            top = target.partition(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names or target in PURE:
                continue
            found.append(f"{module} (pure) imports {target}")
    return found


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Import cycles between modules (each found once, from its smallest module)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if target not in edges or target == module:
                continue
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def test_every_module_has_a_layer_and_nothing_points_back_up() -> None:
    edges = graph()
    for module in edges:
        group_of(module)  # raises for a module no layer claims
    assert back_edges(edges) == []


def test_the_pure_cores_import_only_the_standard_library() -> None:
    edges = graph()
    assert edges.keys() >= PURE, sorted(PURE - edges.keys())  # the list names real modules
    assert impure_imports(edges) == []


def test_only_the_agent_imports_an_adapter() -> None:
    found = [
        f"{module} imports {target}"
        for module, imported in graph().items()
        if not module.startswith(("poolwatch.adapters", "poolwatch.agent"))
        for target in imported
        if target.startswith("poolwatch.adapters")
    ]
    assert found == []


def test_nothing_in_the_package_imports_the_repository_around_it() -> None:
    found = [
        f"{module} imports {target}"
        for module, imported in graph().items()
        for target in imported
        if target.partition(".")[0] in OUTSIDE
    ]
    assert found == []


def test_no_two_modules_import_each_other_in_a_cycle() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("edges", "found"),
    [
        # an adapter reaching into exposition: across groups of one layer
        (
            {"poolwatch.adapters.x": {"poolwatch.exposition.middleware"}},
            "poolwatch.adapters.x (adapters) imports poolwatch.exposition.middleware",
        ),
        # sizing reaching up to the agent
        ({"poolwatch.sizing.gate": {"poolwatch.agent"}}, "poolwatch.sizing.gate (sizing)"),
        # the core reaching up into queries
        ({"poolwatch.context": {"poolwatch.queries.groups"}}, "poolwatch.context (core)"),
    ],
)
def test_the_contract_catches_a_back_edge(edges: dict[str, set[str]], found: str) -> None:
    # The checks above pass on the real graph; these show they would fail on a bad one.
    reported = back_edges(edges)
    assert len(reported) == 1
    assert reported[0].startswith(found)


def test_the_contract_catches_an_impure_core_and_a_cycle() -> None:
    assert impure_imports({"poolwatch.sizing.controller": {"prometheus_client"}}) == [
        "poolwatch.sizing.controller (pure) imports prometheus_client"
    ]
    loop = {"poolwatch.a": {"poolwatch.b"}, "poolwatch.b": {"poolwatch.a"}}
    assert cycles(loop) == [["poolwatch.a", "poolwatch.b", "poolwatch.a"]]
