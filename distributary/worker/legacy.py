"""The worker's internal state as dask.distributed's docstring lists it: read-only views.

dask.distributed documents a worker's volatile state as plain attributes (``task_state``,
``ready``, ``in_flight_tasks``, ...).  distributary keeps that state once, in
:class:`~distributary.worker.state.WorkerState`; each view here is computed from it
when read (a snapshot, by key), so that the hot path keeps no second copy.  They are
properties of :class:`~distributary.worker.server.Worker` (see :func:`add_views`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask.config

from distributary.worker.context import running_tasks

if TYPE_CHECKING:
    from distributary.worker.server import Worker
    from distributary.worker.state import WorkerTask


def _tasks(worker: Worker, *states: str) -> list[WorkerTask]:
    return [ts for ts in worker.state.tasks.values() if not states or ts.state in states]


def _keys(tasks: Any) -> set:
    return {ts.key for ts in tasks}


def _has_what(worker: Worker) -> dict[str, set]:
    holders: dict[str, set] = {}
    for ts in _tasks(worker, "fetch", "flight"):
        for peer in ts.who_has:
            holders.setdefault(peer, set()).add(ts.key)
    return holders


def _pending_data_per_worker(worker: Worker) -> dict[str, list]:
    pending: dict[str, list] = {}
    for ts in sorted(_tasks(worker, "fetch"), key=lambda ts: ts.priority):
        for peer in ts.who_has:
            pending.setdefault(peer, []).append(ts.key)
    return pending


def _ran(worker: Worker) -> list[dict]:
    """The task stream's records of the tasks this worker ran lately."""
    return worker.task_stream.records()


def _startstops(worker: Worker) -> dict[Any, list[tuple]]:
    return {
        r["key"]: [(p["action"], p["start"], p["stop"]) for p in r["startstops"]]
        for r in _ran(worker)
    }


def _compute_seconds(record: dict) -> float:
    return sum(p["stop"] - p["start"] for p in record["startstops"] if p["action"] == "compute")


VIEWS: dict[str, tuple[Callable[[Worker], Any], str]] = {
    "total_out_connections": (
        lambda w: w.state.max_peers_in_flight,
        "The most peers this worker fetches data from at once.",
    ),
    "total_in_connections": (
        lambda w: dask.config.get("distributed.worker.connections.incoming"),
        "The most data requests from peers this worker is meant to serve at once.",
    ),
    "total_comm_nbytes": (
        lambda w: w.state.transfer_batch_bytes,
        "The most bytes fetched from one peer in one request.",
    ),
    "services": (
        lambda w: {name: w.http for name in w.http.services},
        "The web servers of this worker, by name (``dashboard``: /metrics and /health).",
    ),
    "service_ports": (
        lambda w: dict(w.http.services),
        "The ports of this worker's web servers, by name.",
    ),
    "batched_stream": (
        lambda w: w.batched,
        "The batched stream to the scheduler.",
    ),
    "log": (
        lambda w: w.state.transition_log,
        "The transitions of this worker's tasks, ``(key, start, finish, stimulus_id)``.",
    ),
    "executed_count": (
        lambda w: w.state.executed_count,
        "How many tasks this worker ran to their end, whatever the outcome.",
    ),
    "tasks": (
        lambda w: w.state.tasks,
        "The worker's records of its tasks and of the dependencies it fetches, by key.",
    ),
    "task_state": (
        lambda w: {ts.key: ts.state for ts in _tasks(w)},
        "The state of every task the worker knows, by key.",
    ),
    "dependencies": (
        lambda w: {ts.key: _keys(ts.dependencies) for ts in _tasks(w)},
        "The keys each task needs, by key.",
    ),
    "dependents": (
        lambda w: {ts.key: _keys(ts.dependents) for ts in _tasks(w)},
        "The keys that need each task, by key.",
    ),
    "waiting_for_data": (
        lambda w: {ts.key: _keys(ts.waiting_for_data) for ts in _tasks(w, "waiting")},
        "The dependencies each waiting task still lacks, by key.",
    ),
    "data_needed": (
        lambda w: [ts.key for ts in sorted(_tasks(w, "fetch"), key=lambda ts: ts.priority)],
        "The keys to fetch from peers, most urgent first.",
    ),
    "ready": (
        lambda w: [ts.key for ts in sorted(_tasks(w, "ready"), key=lambda ts: ts.priority)],
        "The keys ready to run, most urgent first.",
    ),
    "constrained": (
        lambda w: [ts.key for ts in _tasks(w, "constrained")],
        "The keys ready to run but waiting for resources.",
    ),
    "executing": (
        lambda w: _keys(w.state.executing),
        "The keys running now.",
    ),
    "long_running": (
        lambda w: _keys(w.state.long_running),
        "The keys running now that seceded from the thread pool.",
    ),
    "dep_state": (
        lambda w: {ts.key: ts.state for ts in _tasks(w) if ts.dependents},
        "The state of every dependency of the worker's tasks, by key.",
    ),
    "who_has": (
        lambda w: {ts.key: set(ts.who_has) for ts in _tasks(w, "fetch", "flight")},
        "The peers thought to hold each dependency still to fetch, by key.",
    ),
    "has_what": (
        _has_what,
        "The dependencies still to fetch that each peer is thought to hold.",
    ),
    "pending_data_per_worker": (
        _pending_data_per_worker,
        "The dependencies still to fetch from each peer, most urgent first.",
    ),
    "in_flight_tasks": (
        lambda w: {ts.key: ts.coming_from for ts in _tasks(w, "flight")},
        "The dependencies being fetched now, and the peer each comes from.",
    ),
    "in_flight_workers": (
        lambda w: {peer: _keys(tasks) for peer, tasks in w.state.in_flight_peers.items()},
        "The peers being fetched from now, and what comes from each.",
    ),
    "comm_bytes": (
        lambda w: sum(ts.nbytes for ts in _tasks(w, "flight")),
        "The bytes being fetched from peers now.",
    ),
    "nbytes": (
        lambda w: {ts.key: ts.nbytes for ts in _tasks(w, "memory")},
        "The size of every result the worker holds, by key.",
    ),
    "types": (
        lambda w: {ts.key: ts.type for ts in _tasks(w, "memory")},
        "The type name of every result the worker holds, by key.",
    ),
    "active_threads": (
        lambda w: dict(running_tasks(w)),
        "The key each busy thread runs, by thread ident.",
    ),
    "threads": (
        lambda w: {r["key"]: r["thread"] for r in _ran(w)},
        "The ident of the thread each task ran on, by key (of the task stream's records).",
    ),
    "startstops": (
        _startstops,
        "What each task did when, ``[(action, start, stop)]`` by key: transfer, disk-read, "
        "compute and disk-write phases (of the task stream's records).",
    ),
    "exceptions": (
        lambda w: {r["key"]: r["exception_text"] for r in _ran(w) if r["status"] == "error"},
        "The exception each erred task raised, as text, by key (of the task stream's records).",
    ),
    "tracebacks": (
        lambda w: {r["key"]: r["traceback_text"] for r in _ran(w) if r["status"] == "error"},
        "The traceback of each erred task, as text, by key (of the task stream's records).",
    ),
    "durations": (
        lambda w: {r["key"]: _compute_seconds(r) for r in _ran(w)},
        "How long each task's function ran, in seconds, by key (of the task stream's "
        "records: distributary's workers are not told expected durations).",
    ),
    "suspicious_deps": (
        lambda w: dict(w.state.suspicious),
        "How many peers said to hold each dependency did not have it, by key.",
    ),
    "priorities": (
        lambda w: {ts.key: ts.priority for ts in _tasks(w) if ts.run_id},
        "The priority the scheduler gave each task, by key.",
    ),
    "resource_restrictions": (
        lambda w: {ts.key: ts.resources for ts in _tasks(w) if ts.resources},
        "The resources each task needs to run, by key.",
    ),
}


def add_views(cls: type) -> type:
    """Give ``cls`` (the Worker) a read-only property per view."""
    for name, (view, doc) in VIEWS.items():
        setattr(cls, name, property(view, doc=doc))
    return cls
