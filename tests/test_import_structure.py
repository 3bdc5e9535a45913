"""The modules of distributary import each other without cycles.

Every ``import`` of a ``distributary`` module counts, at module level or inside a
function (an import moved into a function to dodge a cycle is still a cycle); only
those under ``if TYPE_CHECKING:`` do not run, and do not count.
"""

from __future__ import annotations

import ast
import pathlib

import distributary

PACKAGE = pathlib.Path(distributary.__file__).parent


def _module_names() -> dict[str, pathlib.Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, package: str) -> list[tuple[str, int]]:
    """``(dotted name, line)`` of what ``tree`` imports, outside ``if TYPE_CHECKING:``.

    ``from a import b`` gives ``a.b`` (which is ``a`` unless ``b`` is a module);
    ``package`` resolves relative imports.
    """
    found: list[tuple[str, int]] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found.extend((f"{module}.{alias.name}", node.lineno) for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over the modules of distributary."""
    modules = _module_names()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for target, line in _imported_names(ast.parse(path.read_text()), package):
            if target in modules and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """A cycle of ``graph`` (its modules, the first one repeated at the end), or None."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path = [root]
        on_path = {root}
        iterators = [iter(sorted(graph[root]))]
        while iterators:
            target = next(iterators[-1], None)
            if target is None:
                iterators.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                path.append(target)
                on_path.add(target)
                iterators.append(iter(sorted(graph[target])))
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return "\n".join(f"  {a} imports {b} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_finds_one():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 2}}) is None


def test_imports_under_type_checking_do_not_count():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import distributary.x\n"
        "if TYPE_CHECKING:\n"
        "    import distributary.y\n"
        "def f():\n"
        "    from distributary import z\n"
    )
    names = {name for name, _ in _imported_names(tree, "distributary")}
    assert {"distributary.x", "distributary.z"} <= names
    assert "distributary.y" not in names


def test_no_import_cycle_among_the_modules_of_distributary():
    graph = import_graph()
    assert "distributary.client.client" in graph  # (the walk found the modules)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + _describe(cycle, graph)
