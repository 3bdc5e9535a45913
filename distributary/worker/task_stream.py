"""The worker's task stream: what each task it ran did, and when.

Theory of operation
-------------------
The worker keeps the records of the last ``distributed.worker.task-stream-length``
tasks it ran (a deque: old ones fall off), and answers
:class:`~distributary.protocol.diagnostics.GetTaskStream` from them; the scheduler only
merges the answers of its workers when asked, and keeps nothing per task.

A record is made of what the worker knows anyway, in the order it learns it:

* **transfer**: each batch of dependencies fetched from a peer (:meth:`transferred`) is
  kept by key until the first task that needs one of them starts
  (:meth:`read_dependencies`), which takes the batch;
* **disk-read**: the time the spilling buffer spends loading the task's dependencies back
  from disk, while :meth:`read_dependencies` reads them (``cause`` is the task);
* **compute**: the wall-clock start and stop of the task's function, measured in its
  thread (:class:`~distributary.worker.execution.TaskOutcome`);
* **disk-write**: the time spent spilling to disk while its result is stored
  (``cause`` is the task until :meth:`finished`), or its dependencies read back.
A record's phases are in the order they started.

The per-task cost is a tuple appended to the deque; the dicts of dask.distributed's
format are built only when someone asks.  Incoming transfers are kept too, for the
bandwidth between workers (:meth:`transfers`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import dask.config

from distributary.protocol import diagnostics as dg
from distributary.worker.execution import TaskOutcome
from distributary.worker.memory import SpillBuffer

# Batches of fetched data waiting for the task that needs them, at most (the oldest
# are dropped: data fetched for no task here, such as replicas).
_MAX_WAITING_TRANSFERS = 10_000

# The fields of an internal record, in order.
_RECORDED, _KEY, _THREAD, _NBYTES, _TYPE, _START, _STOP, _PHASES, _ERROR = range(9)


class TaskStreamRecorder:
    """The bounded record of the tasks that one worker ran and of the data it fetched."""

    def __init__(self, length: int | None = None):
        if length is None:
            length = dask.config.get("distributed.worker.task-stream-length", default=10_000)
        length = int(length)
        if length < 0:
            raise ValueError(f"distributed.worker.task-stream-length must be >= 0, not {length}")
        self.address = ""  # the worker's, once it listens
        self._records: deque[tuple] = deque(maxlen=length)
        self._transfers: deque[tuple] = deque(maxlen=length)
        self._fetched: dict[Any, list] = {}  # key -> its batch's transfer phase (shared)
        self._phases: dict[Any, list[dict]] = {}  # running task -> transfers, disk phases
        # The task whose work reads or writes the disk now (see the theory of operation).
        self.cause: Any = None
        self.handlers = {
            dg.GetTaskStream: lambda comm, msg: self.records(msg.start, msg.stop, msg.count),
            dg.GetTransfers: lambda comm, msg: self.transfers(msg.start, msg.stop),
        }

    def watch(self, address: str, data: Any) -> None:
        """Record as the worker at ``address``, timing the disk of its ``data`` (if it
        spills)."""
        self.address = address
        if isinstance(data, SpillBuffer):
            data.on_disk = self.disk

    # ------------------------------------------------------------------ recording

    def transferred(
        self, source: str, nbytes: Mapping[Any, int], start: float, stop: float
    ) -> None:
        """Data of these keys (their sizes) arrived from ``source``."""
        if not nbytes:
            return
        self._transfers.append((stop, source, start, len(nbytes), sum(nbytes.values())))
        phase = {"action": "transfer", "start": start, "stop": stop, "source": source}
        batch = [phase, tuple(nbytes)]
        fetched = self._fetched
        for key in nbytes:
            fetched[key] = batch
        while len(fetched) > _MAX_WAITING_TRANSFERS:
            del fetched[next(iter(fetched))]

    def read_dependencies(self, key: Any, dependencies: Iterable[Any], data: Mapping) -> dict:
        """The values of task ``key``'s dependencies, read from ``data`` (timing what the
        disk takes); the transfers that brought them become the task's."""
        cause, self.cause = self.cause, key
        try:
            values = {dep: data[dep] for dep in dependencies}
        finally:
            self.cause = cause  # (a task whose result is being stored started this one)
        if self._fetched:
            self._take_transfers(key, values)
        return values

    def _take_transfers(self, key: Any, dependencies: Iterable[Any]) -> None:
        fetched = self._fetched
        for dep in dependencies:
            batch = fetched.get(dep)
            if batch is None:
                continue
            phase, keys = batch
            for other in keys:  # the batch is this task's alone
                if fetched.get(other) is batch:
                    del fetched[other]
            self._phases.setdefault(key, []).append(phase)

    def disk(self, action: str, start: float, stop: float) -> None:
        """The spilling buffer read (``"disk-read"``) or wrote (``"disk-write"``) for
        ``start``-``stop``: a phase of the task that caused it, if any."""
        if self.cause is not None:
            phase = {"action": action, "start": start, "stop": stop}
            self._phases.setdefault(self.cause, []).append(phase)

    def finished(self, key: Any, outcome: TaskOutcome) -> None:
        """Task ``key`` ran (and its result, if any, is stored): record it (not if it
        asked to be rescheduled)."""
        self.cause = None
        phases = self._phases.pop(key, None) if self._phases else None
        if outcome.reschedule:
            return
        error = outcome.error
        self._records.append(
            (
                time.time(),
                key,
                outcome.thread,
                outcome.nbytes,
                outcome.type,
                outcome.start,
                outcome.stop,
                phases,
                None if error is None else (error.exception_text, error.traceback_text),
            )
        )

    # ------------------------------------------------------------------ reading

    def records(
        self, start: float | None = None, stop: float | None = None, count: int | None = None
    ) -> list[dict]:
        """The records of the tasks that finished in [``start``, ``stop``), oldest
        first: the last ``count`` (the first ``count`` after ``start`` when only
        ``start`` is given; ``count`` is ignored when both bounds are)."""
        selected = _between(self._records, start, stop, count)
        return [self._record(r) for r in selected]

    def transfers(self, start: float | None = None, stop: float | None = None) -> list[dict]:
        """The data fetched from peers in [``start``, ``stop``), oldest first:
        ``source``, ``destination`` (this worker), ``start``, ``stop``, ``keys`` (how
        many) and ``nbytes``."""
        return [
            {
                "source": source,
                "destination": self.address,
                "start": begun,
                "stop": ended,
                "keys": keys,
                "nbytes": nbytes,
            }
            for ended, source, begun, keys, nbytes in _between(self._transfers, start, stop)
        ]

    def _record(self, r: tuple) -> dict:
        compute = {"action": "compute", "start": r[_START], "stop": r[_STOP]}
        phases = r[_PHASES]
        if phases is None:
            startstops: tuple = (compute,)
        else:
            startstops = tuple(sorted((*phases, compute), key=lambda p: p["start"]))
        record = {
            "key": r[_KEY],
            "worker": self.address,
            "thread": r[_THREAD],
            "nbytes": r[_NBYTES],
            "type": r[_TYPE],
            "typename": r[_TYPE],
            "status": "OK" if r[_ERROR] is None else "error",
            "startstops": startstops,
        }
        if r[_ERROR] is not None:
            record["exception_text"], record["traceback_text"] = r[_ERROR]
        return record


def _between(
    entries: deque[tuple],
    start: float | None,
    stop: float | None,
    count: int | None = None,
) -> list[tuple]:
    """The entries (each starting with the time it was appended: they are in order)
    appended in [``start``, ``stop``), selected by ``count`` as
    :meth:`TaskStreamRecorder.records` says."""
    if start is None:
        selected = [e for e in entries if stop is None or e[0] < stop]
    else:  # the newest first, up to the first one too old
        newest = []
        for e in reversed(entries):
            if e[0] < start:
                break
            if stop is None or e[0] < stop:
                newest.append(e)
        selected = newest[::-1]
    if count is not None and not (start is not None and stop is not None):
        count = max(int(count), 0)
        if start is not None:
            return selected[:count]
        return selected[len(selected) - count :] if count else []
    return selected
