"""The requests of the diagnostics: the task stream, the transfers between workers and
the statistical profiles.

Each worker keeps what it did (:mod:`distributary.worker.task_stream`,
:mod:`distributary.worker.profiler`) and answers for itself; the scheduler asks all its
workers and merges their answers, so that nothing is recorded per task on the
scheduler.  Times are wall-clock seconds (``time.time()``); ``None`` leaves a bound open.

A task record is dask.distributed's: ``key``, ``worker``, ``thread`` (the ident of the
thread that ran it), ``nbytes``, ``type`` and ``typename`` (the name of the result's
type), ``status`` (``"OK"`` or ``"error"``, with ``exception_text`` and
``traceback_text``) and ``startstops``, the phases of its run:
``{"action": "transfer" | "disk-read" | "compute" | "disk-write", "start", "stop"}``,
a transfer with the ``source`` worker of the data fetched for it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.requests import Request

Record = dict[str, Any]
Profile = dict[str, Any]  # the nested dict of distributary.diagnostics.profile


# ---------------------------------------------------------------------- a worker


class GetTaskStream(Request):
    """The worker's records of the tasks that finished between ``start`` and ``stop``,
    oldest first: the last ``count`` of them (the first ``count`` after ``start`` if
    only ``start`` is given; all, if both bounds are)."""

    op: ClassVar[str] = "get-task-stream"
    reply_type: ClassVar[Any] = tuple[Record, ...]

    start: float | None = None
    stop: float | None = None
    count: int | None = None


class GetTransfers(Request):
    """The data the worker fetched from its peers between ``start`` and ``stop``:
    ``{"source", "destination", "start", "stop", "keys", "nbytes"}`` per request."""

    op: ClassVar[str] = "get-transfers"
    reply_type: ClassVar[Any] = tuple[Record, ...]

    start: float | None = None
    stop: float | None = None


class GetProfile(Request):
    """The worker's statistical profile between ``start`` and ``stop``: of the threads
    running its tasks (of the tasks of prefix ``key`` only, unless None), or of its
    event loop with ``server``."""

    op: ClassVar[str] = "profile"
    reply_type: ClassVar[Any] = Profile

    start: float | None = None
    stop: float | None = None
    key: str | None = None
    server: bool = False


# ---------------------------------------------------------------------- the scheduler


class TaskStream(Request):
    """The task records of every worker (as :class:`GetTaskStream` selects them),
    sorted by the start of their compute phase."""

    op: ClassVar[str] = "get_task_stream"
    reply_type: ClassVar[Any] = tuple[Record, ...]

    start: float | None = None
    stop: float | None = None
    count: int | None = None


class ClusterTransfers(Request):
    """The transfers of every worker between ``start`` and ``stop`` (as
    :class:`GetTransfers` says), sorted by start."""

    op: ClassVar[str] = "cluster-transfers"
    reply_type: ClassVar[Any] = tuple[Record, ...]

    start: float | None = None
    stop: float | None = None


class ClusterProfile(Request):
    """The statistical profile of the workers named (all when None) between ``start``
    and ``stop``, merged (or by worker address, unless ``merge_workers``): of their task
    threads (of the tasks of prefix ``key`` only, unless None), of their event loops
    with ``server``, or of the scheduler's own event loop with ``scheduler``."""

    op: ClassVar[str] = "profile"
    reply_type: ClassVar[Any] = dict[str, Any]

    key: str | None = None
    start: float | None = None
    stop: float | None = None
    workers: tuple[Any, ...] | None = None
    merge_workers: bool = True
    server: bool = False
    scheduler: bool = False
