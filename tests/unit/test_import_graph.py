"""No import cycle anywhere in functions/, counting imports inside functions and under TYPE_CHECKING
(the graph is built from the AST of every module), and the layering the packages promise."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str = "functions") -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (a `from pkg import mod` counts as importing pkg.mod)."""
    modules = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "functions.engine.context" in graph["functions.engine.vmops"]       # under TYPE_CHECKING
    assert "functions.engine.context" in graph["functions.ops.groups"]


def test_no_import_cycle_in_functions() -> None:
    assert find_cycle(import_graph()) is None


def test_lower_layers_never_import_upper_ones() -> None:
    """store/cloud/model/conf/views never import engine/ops/upkeep/tasks; engine never imports ops/upkeep."""
    upper = {"lower": ("functions.engine", "functions.ops", "functions.upkeep", "functions.tasks"),
             "engine": ("functions.ops", "functions.upkeep", "functions.tasks")}
    for name, edges in import_graph().items():
        layer = "engine" if name.startswith("functions.engine") else (
            "lower" if name.split(".")[1:2] and name.split(".")[1] in {"store", "cloud", "model", "conf", "views"}
            else None)
        if layer:
            bad = sorted(e for e in edges if e.startswith(upper[layer]))
            assert bad == [], f"{name} imports {bad}"


def test_only_entry_points_sit_directly_in_functions() -> None:
    top = sorted(p.name for p in (ROOT / "functions").glob("*.py"))
    assert top == ["__init__.py", "errors.py", "schedule.py", "tasks.py"]


def test_every_lua_script_opens_with_its_keys_and_argv_legend() -> None:
    from functions.store.scripts import LUA

    for name, text in LUA.items():
        first = text.strip().splitlines()[0]
        assert first.startswith("-- KEYS[1]") and "ARGV" in first, name
