"""The import graph keeps the shape docs/architecture.md draws. Each rule is one test: a
forbidden arrow fails with the importing module, the line and the rule it breaks.

Imports are read with `ast` from the source, so the test sees every arrow (also those under
`if TYPE_CHECKING:`, which are arrows of the design even if not of the running program)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "router"

# Libraries that do I/O: a pure module importing one is no longer testable without sockets.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "asyncio",
        "httpx",
        "httptools",
        "socket",
        "ssl",
        "selectors",
        "uvloop",
        "urllib.request",
        "http.client",
        "dns.asyncquery",
        "dns.query",
        "subprocess",
    }
)
# The pure core (docs/architecture.md, "Pure core").
PURE = (
    "router.models",
    "router.snapshot",
    "router.status",
    "router.settings_types",
    "router.failures",
    "router.balancing",
    "router.health.state",
    "router.dns.records",
    "router.dns.formats",
    "router.discovery.records",
    "router.attestation.quote",
    "router.attestation.eventlog",
    "router.attestation.verify",
)
CONTROL_PLANE = ("router.discovery", "router.health", "router.attestation")
DATA_PLANE = ("router.proxy",)
# What the data plane never calls: it reads snapshots and reports observations.
DATA_PLANE_NEVER = ("router.discovery", "router.attestation", "router.reconciler")
# The entry points that may start a simulator.
SIMULATOR_USERS = ("router.cli", "router.demo", "router.demo_ratls", "router.simulator")
# Imports inside a function are allowed only for optional third-party libraries and in the
# CLI, which imports a command's modules when the command runs (start-up time).
LAZY_IMPORTERS = (
    "router.cli",
    "router.cli_config",
    "router.cli_dns",
    "router.cli_support",
    "router.cli_verify",
)
# Other function-level imports, each with its reason (none of them dodges a cycle).
LAZY_ALLOWED = {
    ("router.compose_engine", "router.proxy.envoy.engine"): "Envoy needs the [envoy] extra",
    ("router.proxy.envoy.engine", "router.proxy.envoy.xds"): "grpcio only with xds_listen",
    ("router.simulator.settings", "router.simulator.quotes"): "cryptography only for a key file",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a router module resolved to its file when it is one)
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.source} (line {self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(base: str, name: str | None) -> str:
    """`from base import name`: the submodule when `name` is one, else `base` itself."""
    if name is not None and f"{base}.{name}" in modules():
        return f"{base}.{name}"
    return base


def _absolute(source: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = modules()[source].name == "__init__.py"
    parts = source.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str) -> None:
        self.source = source
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.source, node)
        for alias in node.names:
            self._add(_resolve(base, alias.name), node.lineno)

    def _add(self, target: str, line: int) -> None:
        self.found.append(Import(self.source, target, line, self.depth > 0))


@functools.cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for name, path in modules().items():
        collector = _Collector(name)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += collector.found
    return tuple(found)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def router_deps(name: str) -> Iterator[str]:
    """The router modules `name` loads: what it imports and the packages around them."""
    for item in imports():
        if item.source == name and item.target in modules():
            yield item.target
    parent = name.rpartition(".")[0]
    if parent and parent != "router":
        yield parent


def loaded_by(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for dep in router_deps(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read() -> None:
    # Guards the other tests against passing on an empty graph.
    assert "router.app" in modules()
    assert any(i.target == "router.reconciler" for i in imports() if i.source == "router.app")


def test_the_pure_core_loads_no_io_library() -> None:
    pure = [m for m in modules() if within(m, PURE)]
    bad = [
        f"{item} (loaded from {start})"
        for start in pure
        for module in sorted(loaded_by(start))
        for item in imports()
        if item.source == module and within(item.target, tuple(IO_LIBRARIES))
    ]
    assert not bad, "pure core must import no I/O library:\n" + "\n".join(sorted(set(bad)))


def _forbidden(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    return [str(i) for i in imports() if within(i.source, sources) and within(i.target, targets)]


def test_the_control_plane_never_imports_the_data_plane() -> None:
    bad = _forbidden(CONTROL_PLANE, DATA_PLANE)
    assert not bad, "control plane -> data plane:\n" + "\n".join(bad)


def test_the_data_plane_reads_snapshots_and_never_calls_the_control_plane() -> None:
    bad = _forbidden(DATA_PLANE, DATA_PLANE_NEVER)
    assert not bad, "data plane -> discovery/attestation/reconciler:\n" + "\n".join(bad)


def test_only_the_entry_points_import_the_simulator() -> None:
    bad = [
        str(i)
        for i in imports()
        if within(i.target, ("router.simulator",)) and not within(i.source, SIMULATOR_USERS)
    ]
    assert not bad, "only the CLI and the demo start a simulator:\n" + "\n".join(bad)


def test_config_flows_down_as_slices() -> None:
    # Settings modules never import the root config; the engines never see it either.
    settings = tuple(
        m for m in modules() if m.endswith(".settings") or m == "router.settings_types"
    )
    bad = _forbidden(settings + DATA_PLANE, ("router.config",))
    assert not bad, "settings and engines take slices, not RouterConfig:\n" + "\n".join(bad)


def test_no_import_inside_a_function_dodges_a_cycle() -> None:
    bad = [
        str(i)
        for i in imports()
        if i.in_function
        and i.target.startswith("router")
        and not within(i.source, LAZY_IMPORTERS)
        and (i.source, i.target) not in LAZY_ALLOWED
    ]
    assert not bad, "move these imports to the top of the module:\n" + "\n".join(bad)


def test_no_module_level_getattr() -> None:
    lazy = [
        name
        for name, path in modules().items()
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
    ]
    assert not lazy, f"lazy module attributes hide arrows: {lazy}"


def _area(module: str) -> str:
    """router.<package> for modules in a sub-package, the module itself at the top."""
    parts = module.split(".")
    return ".".join(parts[:2])


def area_graph() -> dict[str, set[str]]:
    """Arrows between areas: a sub-package as a whole, or a top-level module."""
    graph: dict[str, set[str]] = {}
    for item in imports():
        if item.target in modules():
            a, b = _area(item.source), _area(item.target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each elementary cycle once, starting from its smallest node."""
    cycles: list[list[str]] = []
    for start in sorted(graph):
        todo: list[list[str]] = [[start]]
        while todo:
            path = todo.pop()
            for nxt in sorted(graph.get(path[-1], ())):
                if nxt == start:
                    cycles.append(path)
                elif nxt not in path and nxt > start:
                    todo.append([*path, nxt])
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@functools.cache
def _packages() -> frozenset[str]:
    return frozenset(m for m, p in modules().items() if p.name == "__init__.py" and m != "router")


@pytest.mark.parametrize("package", ["router.proxy", "router.balancing", "router.health"])
def test_the_areas_named_by_the_rules_exist(package: str) -> None:
    assert package in _packages()


def test_no_cycles_between_packages_and_top_level_modules() -> None:
    cycles = find_cycles(area_graph())
    assert not cycles, "package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_router_error_is_in_the_tree_errors_py_draws() -> None:
    # A public exception that derives from RouterError lives in router/errors.py and is
    # drawn in its docstring, so the tree is the whole list (private ones never escape).
    errors = ast.parse(modules()["router.errors"].read_text(encoding="utf-8"))
    tree = {n.name for n in errors.body if isinstance(n, ast.ClassDef)}
    drawn = ast.get_docstring(errors) or ""
    outside = [
        f"{name}.{node.name}"
        for name, path in modules().items()
        if name != "router.errors"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")
        and any(isinstance(b, ast.Name) and b.id in tree for b in node.bases)
    ]
    assert not outside, f"define these in router/errors.py: {outside}"
    assert not [n for n in tree if n not in drawn], "draw every class in the docstring"


def imported_by(start: str) -> set[str]:
    """The router modules `start` imports, directly or through others (package `__init__`s
    not followed: this is about who depends on whom, not what loading runs)."""
    seen, todo = {start}, [start]
    while todo:
        source = todo.pop()
        for item in imports():
            if item.source == source and item.target in modules() and item.target not in seen:
                seen.add(item.target)
                todo.append(item.target)
    return seen


FAST_SERVER = "router.proxy.fast.server"


def test_the_fast_engines_dependency_runs_from_connection_to_request() -> None:
    # A request (exchange.py and its bases) talks to its client connection through the
    # narrow client_side.ClientSide protocol; only the engine, which accepts connections,
    # imports server.py.
    bad = [
        str(i)
        for i in imports()
        if i.target == FAST_SERVER and i.source != "router.proxy.fast.engine"
    ]
    assert not bad, "only fast/engine.py imports fast/server.py:\n" + "\n".join(bad)
    for request_side in ("exchange", "relay", "retrying", "client_side", "core"):
        reached = imported_by(f"router.proxy.fast.{request_side}")
        assert FAST_SERVER not in reached, f"fast/{request_side}.py depends on fast/server.py"


def test_the_dependency_check_sees_a_dependency() -> None:
    assert FAST_SERVER in imported_by("router.proxy.fast.engine")
    assert "router.proxy.fast.exchange" in imported_by(FAST_SERVER)
