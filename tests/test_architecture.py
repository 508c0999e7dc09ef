"""The package's shape (ARCHITECTURE.md): no import circle between modules, no overlong function.

The layering itself is the import-linter contract in pyproject.toml, run by .ci/run (`lint-imports`).
"""

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "nncf_elastic_lora"
MAX_FUNCTION_LINES = 80


def _import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}``, imports inside functions included; importing ``a.b.c`` also
    runs ``a.b``'s ``__init__``, so an import reaches the imported module's packages too."""
    graph = grimp.build_graph("nncf_elastic_lora", cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        targets = set()
        for imported in graph.find_modules_directly_imported_by(module):
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in graph.modules and not module.startswith(target + ".") and target != module:
                    targets.add(target)
        edges[module] = targets
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_modules():
    circles = _circles(_import_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_a_circle_through_a_package_init():
    # int4.checkpoint -> elastic.channels runs elastic/__init__, which imports supernet -> int4.checkpoint
    edges = {
        "p.int4.checkpoint": {"p.elastic", "p.elastic.channels"},
        "p.elastic": {"p.elastic.supernet"},
        "p.elastic.supernet": {"p.int4", "p.int4.checkpoint"},
        "p.int4": {"p.int4.checkpoint"},
        "p.elastic.channels": set(),
    }
    assert _circles(edges) == [["p.elastic", "p.elastic.supernet", "p.int4", "p.int4.checkpoint"]]


def test_no_function_longer_than_the_limit():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + "; ".join(long)
