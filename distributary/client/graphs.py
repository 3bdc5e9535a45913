"""Turning dask graphs into task records for the scheduler.

Any graph dask produces is accepted: a dict of legacy tuple tasks, a HighLevelGraph,
``dask._task_spec`` nodes, or an expression (anything with ``__dask_graph__``).  dask's
own functions convert it (``convert_legacy_graph``) and order it (``dask.order``).  Only
what the wanted keys need is sent; a missing dependency or a cycle is reported before
anything runs.  Futures inside the graph are dask ``TaskRef``\\ s, so they become
dependencies on data already on the cluster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dask.config
import dask.order
from dask._task_spec import Alias, GraphNode, TaskRef, convert_legacy_graph
from dask.utils import parse_timedelta

from distributary.protocol.client_messages import TaskSpec
from distributary.protocol.tasks import dumps_node


def part_size() -> int:
    """Tasks per ``update-graph`` message (``distributed.client.graph-part-tasks``): a big
    graph goes out in parts, so that its first tasks start while the rest is pickled."""
    return max(int(dask.config.get("distributed.client.graph-part-tasks")), 1)


class SubmissionWindows:
    """The place in line of a client's work (dask.distributed's ``fifo_timeout``).

    Work submitted within ``fifo_timeout`` of the start of the current window shares
    its place: its tasks go by user priority, then graph order.  Work submitted later
    opens a new window, and earlier windows go first, so one long computation does
    not make work submitted after it wait for ever, nor jump ahead of it.  Windows are
    stamped with the wall clock, so the work of several clients queues in the same line.
    """

    def __init__(self) -> None:
        self._start = -math.inf

    def priority(self, user_priority: int, fifo_timeout: Any) -> tuple[int, float]:
        """The first part of the priority of the tasks of a submission made now."""
        now = time.time()
        if now > self._start + parse_timedelta(fifo_timeout):
            self._start = now
        return (-user_priority, self._start)


def no_actors(actors: Any) -> None:
    """Actors are not supported yet: say so rather than run the tasks as plain ones."""
    if actors:
        raise NotImplementedError("distributary does not support actors yet (actor=/actors=)")


def check_graph_options(method: str, actors: Any, options: dict) -> None:
    """Refuse what ``get``, ``compute`` and ``persist`` cannot honour: actors, and
    keyword options for dask's graph optimizations, which distributary passes none of."""
    no_actors(actors)
    if options:
        raise TypeError(
            f"{method}() got an unexpected keyword argument {next(iter(options))!r} "
            "(distributary passes no options on to graph optimization)"
        )


def task_options(workers: Any, resources: Any, retries: Any, allow_other_workers: bool) -> dict:
    """The options every task of a submit, map or graph gets: restrictions and retries."""
    options: dict = {}
    if workers is not None:
        options["workers"] = (workers,) if isinstance(workers, str) else tuple(workers)
        options["allow_other_workers"] = allow_other_workers
    if resources:
        options["resources"] = dict(resources)
    if retries:
        options["retries"] = int(retries)
    return options


def per_key_restrictions(restrictions: Any, loose_restrictions: Any) -> dict | None:
    """The options of each key that ``Client.get``'s older ``restrictions={key: workers}``
    and ``loose_restrictions=[key, ...]`` give (None when there are none)."""
    if restrictions is None:
        if loose_restrictions:
            raise ValueError("loose_restrictions= names keys of restrictions=, which is None")
        return None
    if not isinstance(restrictions, Mapping):
        raise TypeError(
            f"restrictions= is a dict {{key: workers}}, not {type(restrictions).__name__} "
            "(workers= restricts every task)"
        )
    loose = set(loose_restrictions or ())
    return {
        key: {
            "workers": (workers,) if isinstance(workers, str) else tuple(workers),
            "allow_other_workers": key in loose,
        }
        for key, workers in restrictions.items()
    }


class GraphError(ValueError):
    """The graph cannot be run: a missing dependency, a cycle or an unknown key."""


def materialize(graph: Any) -> dict:
    """A plain ``{key: GraphNode}`` dict from any graph-like object."""
    if not isinstance(graph, Mapping) and hasattr(graph, "__dask_graph__"):
        graph = graph.__dask_graph__()
    graph = dict(graph)
    nodes = {}
    for key, value in graph.items():
        if isinstance(value, TaskRef) and not isinstance(value, GraphNode):
            if value.key == key:
                continue  # a persisted collection's {key: future}: the data is on the cluster
            value = Alias(key, value.key)  # {"y": future}: y is that future's data
        nodes[key] = value
    # every key of the graph, the dropped ones too: legacy tasks name those as strings
    return convert_legacy_graph(nodes, all_keys=set(graph))


def needed_nodes(nodes: dict, keys: Iterable, known: Any) -> dict:
    """The nodes the wanted ``keys`` need, checked for missing keys and cycles.

    ``known(key)`` says whether a key outside the graph exists on the cluster.
    """
    needed: dict = {}
    state: dict = {}  # key -> "visiting" | "done", for an iterative depth-first walk
    for root in keys:
        if root not in nodes:
            if known(root):
                continue
            raise GraphError(f"Key {root!r} is not in the graph")
        stack = [(root, False)]
        while stack:
            key, leaving = stack.pop()
            if leaving:
                state[key] = "done"
                continue
            mark = state.get(key)
            if mark == "done":
                continue
            if mark == "visiting":
                raise GraphError(f"The graph has a cycle through {key!r}")
            state[key] = "visiting"
            node = nodes[key]
            needed[key] = node
            stack.append((key, True))
            for dep in node.dependencies:
                if dep in nodes:
                    if state.get(dep) == "visiting":
                        raise GraphError(f"The graph has a cycle through {dep!r}")
                    if state.get(dep) is None:
                        stack.append((dep, False))
                elif not known(dep):
                    raise GraphError(f"Task {key!r} depends on {dep!r}, which is not in the graph")
    return needed


def graph_parts(
    nodes: dict,
    send: Iterable,
    wanted: set,
    priority: tuple,
    options: dict,
    per_key: dict | None,
    size: int,
) -> Iterator[tuple[list[dict], list]]:
    """The ``send`` keys of ``nodes`` (what :func:`needed_nodes` gave) as task records, in
    parts of at most ``size`` tasks, in dask's priority order over all of ``nodes``.

    Yields ``(tasks, want)``: the task records of one ``update-graph`` message, and the keys
    it should ask the scheduler to keep.  Those are the ``wanted`` keys in the part, and
    the keys a later part depends on, so that they are not released before it arrives.
    A part is pickled only when it is asked for, so the first can be sent early.

    Every task gets ``options``; the tasks named in ``per_key`` get theirs on top.
    A task's priority is ``priority`` (see :class:`SubmissionWindows`) and its place in
    dask's order.
    """
    if per_key:
        per_key = _through_aliases(per_key, nodes)
    order = dask.order.order(nodes) if len(nodes) > 1 else dict.fromkeys(nodes, 0)
    send = sorted(send, key=order.__getitem__)
    held_for_later = _needed_by_later_parts(nodes, send, size)
    if held_for_later is None:  # (dask.order gave no dependency order) all in one part
        size, held_for_later = max(len(send), 1), set()
    for start in range(0, len(send), size):
        tasks = []
        for key in send[start : start + size]:
            node = nodes[key]
            task = {
                "key": key,
                "payload": dumps_node(node),
                "priority": (*priority, order[key]),
                **options,
            }
            if per_key and key in per_key:
                task.update(per_key[key])
            if node.dependencies:
                task["dependencies"] = tuple(node.dependencies)
            tasks.append(TaskSpec(**task))
        want = [t.key for t in tasks if t.key in wanted or t.key in held_for_later]
        yield tasks, want


def _needed_by_later_parts(nodes: dict, send: list, size: int) -> set | None:
    """The keys of ``send`` that a task in a later part of ``size`` depends on; None if
    some task comes before one of its dependencies."""
    part_of = {key: index // size for index, key in enumerate(send)}
    needed = set()
    for key in send:
        part = part_of[key]
        for dep in nodes[key].dependencies:
            dep_part = part_of.get(dep, part)  # (a key outside ``send`` is on the cluster)
            if dep_part > part:
                return None
            if dep_part < part:
                needed.add(dep)
    return needed


def _through_aliases(per_key: dict, nodes: dict) -> dict:
    """``per_key`` with the options of an alias also given to the task it names (an
    optimized graph often keeps a collection's keys only as aliases of fused tasks)."""
    result = dict(per_key)
    for key, options in per_key.items():
        node = nodes.get(key)
        while isinstance(node, Alias) and node.target in nodes:
            result.setdefault(node.target, options)
            node = nodes[node.target]
    return result
