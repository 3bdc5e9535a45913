"""Reading a client's graph into the scheduler's task records.

Pure functions over the ``{key: TaskRecord}`` table: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask.utils import key_split

from distributary.scheduler.events import TaskSpec
from distributary.scheduler.records import TaskRecord, linked


def read_graph(
    tasks: dict[Any, TaskRecord], specs: Iterable[TaskSpec]
) -> tuple[list[TaskRecord], set[TaskRecord]]:
    """Records for the specs of tasks this scheduler does not hold yet, filled and
    linked to their dependencies; returns them, and those made new here.

    A task already known (and not a bare released record) keeps its record: a key the
    client sends again is the same task.  A dependency not in ``tasks`` is linked to a
    record left out of the table, which :func:`forget_lost` finds.  Payloads are kept
    until their tasks are forgotten, and a map sends the same pickled function with
    every task: one copy of it is kept.
    """
    fresh: list[tuple[TaskRecord, TaskSpec]] = []
    created: set[TaskRecord] = set()
    for spec in specs:
        ts = tasks.get(spec.key)
        if ts is None:
            ts = tasks[spec.key] = TaskRecord(spec.key, key_split(spec.key))
            created.add(ts)
        elif ts.state != "released" or ts.payload is not None:
            continue
        fresh.append((ts, spec))
    functions: dict[bytes, bytes] = {}
    for ts, spec in fresh:  # a second pass: dependencies may come after dependents
        _fill(tasks, ts, spec)
        payload = ts.payload
        if type(payload) is dict and type(payload.get("func")) is bytes:
            payload["func"] = functions.setdefault(payload["func"], payload["func"])
    return [ts for ts, _ in fresh], created


def _fill(tasks: dict[Any, TaskRecord], ts: TaskRecord, spec: TaskSpec) -> None:
    ts.payload = spec.payload
    ts.priority = spec.priority
    ts.retries = spec.retries
    ts.loose_restrictions = spec.allow_other_workers
    ts.worker_restrictions = set(spec.workers) if spec.workers else None
    ts.resource_restrictions = dict(spec.resources) if spec.resources else None
    for dep_key in spec.dependencies:
        dep = tasks.get(dep_key)
        if dep is None:
            dep = TaskRecord(dep_key, key_split(dep_key))  # left out of ``tasks``: missing
        linked(ts, "dependencies").add(dep)
        linked(dep, "dependents").add(ts)


def forget_lost(
    tasks: dict[Any, TaskRecord], created: set[TaskRecord]
) -> tuple[set[TaskRecord], list[TaskRecord]]:
    """Drop the new records that depend on a key not in ``tasks``, and their new
    dependents; return them, and the known records they were dependents of."""
    stack = [ts for ts in created if any(tasks.get(d.key) is not d for d in ts.dependencies)]
    lost: set[TaskRecord] = set()
    while stack:
        ts = stack.pop()
        if ts not in lost:
            lost.add(ts)
            stack.extend(d for d in ts.dependents if d in created)
    unlinked = []
    for ts in lost:
        for dep in ts.dependencies:
            dep.dependents.discard(ts)
            if dep not in lost and tasks.get(dep.key) is dep:
                unlinked.append(dep)
        ts.state = "forgotten"
        del tasks[ts.key]
    return lost, unlinked
