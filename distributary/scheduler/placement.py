"""Where a task runs: restrictions, and the cost of each candidate worker.

Root tasks go to the next worker with room (the idle workers take turns).  A task
with dependencies goes where its estimated start is earliest: queueing behind the
worker's running tasks plus moving the dependencies it lacks there.  Only the
holders of its dependencies and one idle worker are considered, so the cost per
task does not grow with the size of the cluster.

Placement is reproducible: nothing depends on the order of a set (records hash by
``id``, addresses by the process's string hash).  Ties go to the lower address, and
tasks placed one after the other go in priority order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING

from distributary.scheduler.records import TaskRecord, WorkerRecord

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState

BANDWIDTH = 100e6  # bytes/s assumed for transfers when placing tasks


def valid_workers(state: SchedulerState, ts: TaskRecord) -> set[str] | None:
    """Addresses the task may run on, or None when any worker will do."""
    valid: set[str] | None = None
    if ts.worker_restrictions is not None:
        valid = set()
        for spec in ts.worker_restrictions:
            if spec in state.workers:
                valid.add(spec)
            elif spec in state.workers_by_name:
                valid.add(state.workers_by_name[spec])
            else:
                valid.update(state.workers_by_host.get(spec, ()))
    if ts.resource_restrictions is not None:
        having = {
            ws.address
            for ws in state.workers.values()
            if all(ws.resources.get(r, 0) >= n for r, n in ts.resource_restrictions.items())
        }
        valid = having if valid is None else valid & having
    if valid is not None and not valid and ts.loose_restrictions:
        return None
    return valid


def decide_worker(state: SchedulerState, ts: TaskRecord) -> WorkerRecord | None:
    """The worker to run ``ts`` on, or None if it must wait (queued or no-worker)."""
    if ts.is_queueable:
        for ws in state.idle.values():
            return ws
        if state.worker_saturation != math.inf or not state.workers:
            return None
    valid = valid_workers(state, ts)
    candidates: Iterable[WorkerRecord]
    if ts.dependencies and (valid is None or ts.loose_restrictions):
        holders = {ws for dep in ts.dependencies for ws in dep.who_has}
        candidates = [ws for ws in holders if ws.status == "running"]
        for ws in state.idle.values():  # one idle worker competes with the holders
            if ws not in holders:
                candidates.append(ws)
            break
        if not candidates:
            candidates = state.workers.values()
    elif valid is None:
        candidates = list(state.idle.values()) or state.workers.values()
    else:
        candidates = [state.workers[a] for a in valid]
    best, best_cost = None, (math.inf, "")
    duration = task_duration(state, ts)
    for ws in candidates:
        if ws.status != "running":
            continue
        cost = worker_objective(ts, ws, duration)
        if cost < best_cost:
            best, best_cost = ws, cost
    return best


def task_duration(state: SchedulerState, ts: TaskRecord, default: float | None = None) -> float:
    """The expected run time of ``ts``: the mean of its prefix's runs so far, else
    ``default`` (the configured unknown-task-duration when None)."""
    return state.durations.get(ts.prefix, state.unknown_duration if default is None else default)


def comm_cost(ts: TaskRecord, ws: WorkerRecord) -> float:
    """Seconds to move the dependencies of ``ts`` that ``ws`` lacks to it."""
    return sum(max(d.nbytes, 0) for d in ts.dependencies if ws not in d.who_has) / BANDWIDTH


def worker_objective(ts: TaskRecord, ws: WorkerRecord, duration: float) -> tuple[float, str]:
    """What placing ``ts`` on ``ws`` costs, lowest best: its estimated start (the tasks
    queued there, at ``duration`` each, and moving its dependencies), then the address."""
    return ((ws.occupied + 1) / ws.nthreads * duration + comm_cost(ts, ws), ws.address)


def urgent_last(tasks: Iterable[TaskRecord]) -> list[TaskRecord]:
    """The tasks from the least urgent to the most: recommendations run last-in first,
    so the most urgent task is placed first, and in the same order in every run."""
    return sorted(tasks, key=attrgetter("priority"), reverse=True)
