"""``graph_parts``: a graph as update-graph messages in dask's order (no cluster needed)."""

from __future__ import annotations

from operator import add

import dask.order
from dask._task_spec import convert_legacy_graph

from distributary.client.graphs import graph_parts


def inc(x):
    return x + 1


def chain(length: int) -> dict:
    """``x0 <- x1 <- ... <- x{length-1}``, each incrementing the one before."""
    graph = {"x0": (inc, 0)}
    graph.update({f"x{i}": (inc, f"x{i - 1}") for i in range(1, length)})
    return convert_legacy_graph(graph)


def parts_of(nodes: dict, wanted: set, size: int) -> list[tuple[list, list]]:
    return [
        ([task.key for task in tasks], want)
        for tasks, want in graph_parts(nodes, list(nodes), wanted, (0,), {}, None, size)
    ]


def test_parts_follow_dask_order_and_keep_what_later_parts_need():
    nodes = chain(5)
    assert parts_of(nodes, {"x4"}, 2) == [
        (["x0", "x1"], ["x1"]),  # x2, in the next part, needs x1
        (["x2", "x3"], ["x3"]),
        (["x4"], ["x4"]),  # the wanted key
    ]


def test_priorities_are_dask_order_across_parts():
    nodes = convert_legacy_graph({"a": (inc, 1), "b": (inc, 2), "c": (add, "a", "b")})
    order = dask.order.order(nodes)
    tasks = [
        t
        for part, _ in graph_parts(nodes, list(nodes), {"c"}, (-3, 7.5), {}, None, 1)
        for t in part
    ]
    assert [t.priority for t in tasks] == sorted((-3, 7.5, order[k]) for k in nodes)
    assert {t.key: t.dependencies for t in tasks}["c"] in (("a", "b"), ("b", "a"))


def test_one_part_when_the_order_puts_a_task_before_its_dependency(monkeypatch):
    nodes = chain(4)
    backwards = {key: -int(key[1:]) for key in nodes}
    monkeypatch.setattr(dask.order, "order", lambda graph: backwards)
    (only,) = parts_of(nodes, {"x3"}, 1)
    assert sorted(only[0]) == sorted(nodes) and only[1] == ["x3"]
