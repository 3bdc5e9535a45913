"""What the dashboard's pages show, as plain JSON-able values read from the scheduler's state.

Pure functions of :class:`~distributary.scheduler.state.SchedulerState` (read only):
the rows of the workers (a few numbers each, read on every update of an open page), and
the detail of one worker or one task (read when its info page is asked for).  Keys are
shown as text (``str(key)``) and found again from it by :func:`find_task`.
"""

from __future__ import annotations

import ast
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributary.scheduler.records import TaskRecord, WorkerRecord
    from distributary.scheduler.state import SchedulerState

# Keys listed at most on an info page, of each kind (processing, held, dependents, ...).
LISTED = 200
# Task prefixes shown at most by the progress bars (the newest).
PREFIXES = 100


def worker_row(ws: WorkerRecord) -> dict[str, Any]:
    """A worker's figures: memory in bytes (``managed``, ``unmanaged``, ``spilled`` and
    the process's), CPU in percent of a core, network in bytes per second, and its tasks."""
    memory, usage = ws.memory, ws.usage
    return {
        "address": ws.address,
        "name": str(ws.name),
        "host": ws.host,
        "status": ws.status,
        "nthreads": ws.nthreads,
        "memory_limit": ws.memory_limit,
        "memory": memory.process,
        "managed": memory.managed,
        "unmanaged": memory.unmanaged,
        "spilled": memory.spilled,
        "cpu": usage.get("cpu", 0.0),
        "read_bps": usage.get("read_bps", 0.0),
        "write_bps": usage.get("write_bps", 0.0),
        "processing": len(ws.processing),
        "occupied": ws.occupied,
        "stored": len(ws.has_what),
        "nbytes": ws.nbytes,
        "last_seen": ws.last_seen,
        "services": dict(ws.services),
    }


def workers(state: SchedulerState) -> list[dict[str, Any]]:
    """The rows of all the workers, by name."""
    rows = [worker_row(ws) for ws in state.workers.values()]
    rows.sort(key=lambda row: (row["name"], row["address"]))
    return rows


def prefixes(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """The progress bars of the task prefixes (the newest ``PREFIXES``), from the counts
    per prefix and state of ``scheduler.progress``: ``total``; ``memory``; ``released``
    (done, and their data released or forgotten: tasks not started yet are waiting);
    ``processing``; ``erred``; ``waiting`` (for dependencies, a worker, or a place)."""
    rows = []
    for name, count in list(counts.items())[-PREFIXES:]:
        rows.append(
            {
                "name": name,
                "total": count["all"],
                "memory": count["memory"],
                "released": count["released"] + count["forgotten"],
                "processing": count["processing"],
                "erred": count["erred"],
                "waiting": count["waiting"] + count["queued"] + count["no-worker"],
            }
        )
    return rows


def find_worker(state: SchedulerState, text: str) -> WorkerRecord | None:
    """The worker whose address or name (as text) is ``text``."""
    ws = state.workers.get(text)
    if ws is not None:
        return ws
    address = state.workers_by_name.get(text)
    if address is None:
        address = next((a for n, a in state.workers_by_name.items() if str(n) == text), None)
    return state.workers.get(address) if address is not None else None


def find_task(state: SchedulerState, text: str) -> TaskRecord | None:
    """The task whose key is ``text``, or is written ``text`` (``"('x', 0)"``, ``"3"``)."""
    tasks = state.tasks
    ts = tasks.get(text)
    if ts is not None:
        return ts
    try:
        key = ast.literal_eval(text)
        return tasks.get(key)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def worker_detail(state: SchedulerState, ws: WorkerRecord) -> dict[str, Any]:
    """A worker's row and more: where it runs, and (some of) the keys it runs and holds."""
    return {
        **worker_row(ws),
        "nanny": ws.nanny,
        "pid": ws.pid,
        "local_directory": ws.local_directory,
        "resources": dict(ws.resources),
        "processing_keys": [str(ts.key) for ts in islice(ws.processing, LISTED)],
        "held": [
            {"key": str(ts.key), "nbytes": ts.nbytes, "type": ts.type}
            for ts in islice(ws.has_what, LISTED)
        ],
    }


def task_detail(state: SchedulerState, ts: TaskRecord) -> dict[str, Any]:
    """A task's state and links, and its story: the transitions logged for its key."""
    return {
        "key": str(ts.key),
        "prefix": ts.prefix,
        "state": ts.state,
        "priority": list(ts.priority),
        "nbytes": ts.nbytes,
        "type": ts.type,
        "processing_on": ts.processing_on.address if ts.processing_on is not None else None,
        "who_has": sorted(ws.address for ws in ts.who_has),
        "who_wants": sorted(ts.who_wants),
        "retries": ts.retries,
        "suspicious": ts.suspicious,
        "exception": ts.exception_text,
        "dependencies": _linked(ts.dependencies),
        "n_dependencies": len(ts.dependencies),
        "dependents": _linked(ts.dependents),
        "n_dependents": len(ts.dependents),
        "waiting_on": len(ts.waiting_on),
        "story": [
            {"start": start, "finish": finish, "stimulus_id": stimulus_id}
            for _, start, finish, stimulus_id in state.story(ts.key)
        ],
    }


def _linked(tasks: Any) -> list[dict[str, str]]:
    return [{"key": str(ts.key), "state": ts.state} for ts in islice(tasks, LISTED)]
