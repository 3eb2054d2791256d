"""The shape of services/: no import cycle (type-checking imports included), short functions, pure lower layers.

Read from the source with `ast`, so the checks see every import, also those under `if TYPE_CHECKING:` and inside
functions, and nothing has to be imported to be checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SERVICES.rglob("*.py"))}


def _nearest_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The services modules `module` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # `from package import module` imports the module; `from module import name` imports the module.
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        found |= {t for t in map(_nearest_module, targets) if t is not None and t != module}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_services_have_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


def functions(path: Path) -> Iterator[tuple[str, int, int]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_services_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
        for path in MODULES.values()
        for name, line, length in functions(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize(
    ("module", "may_import"),
    [
        ("services.common.contract", set()),
        ("services.tts_gateway.domain", {"services.common.contract"}),
        ("services.tts_gateway.upstream_protocols", {"services.common.contract", "services.tts_gateway.domain"}),
    ],
)
def test_the_lowest_layers_import_nothing_above_them(module: str, may_import: set[str]) -> None:
    assert GRAPH[module] <= may_import


def test_engines_and_the_gateway_domain_import_no_grpc() -> None:
    pure = [m for m in MODULES if m.startswith("services.rvc_service.engines")] + ["services.tts_gateway.domain"]
    for module in pure:
        source = MODULES[module].read_text()
        tree = ast.parse(source)
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n == "grpc" or n.startswith("grpc.")}, module
