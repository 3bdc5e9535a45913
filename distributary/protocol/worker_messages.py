"""The messages on the stream between the scheduler and each worker.

The scheduler's state machine emits the ones :class:`ToWorker` and the worker's takes
them; the worker's emits the ones :class:`FromWorker` and the scheduler's takes them.
``worker`` is the peer: the worker the message is for, or came from.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from distributary.protocol.message import Catalogue, Key, StreamMessage

# ---------------------------------------------------------------------- scheduler -> worker


class ToWorker(StreamMessage, kw_only=True):
    """Base of what the scheduler tells a worker."""

    peer_fields: ClassVar[tuple[str, ...]] = ("worker",)

    worker: str = ""


class ComputeTask(ToWorker):
    """Run ``key``: its dependencies are held by the workers in ``who_has``."""

    op: ClassVar[str] = "compute-task"

    key: Key
    run_id: int
    payload: Any
    priority: tuple[int | float, ...]
    who_has: dict[Key, tuple[str, ...]]
    nbytes: dict[Key, int]
    resources: dict[str, int | float] | None = None


class FreeKeys(ToWorker):
    """Forget these keys: stop running them and drop their data."""

    op: ClassVar[str] = "free-keys"

    keys: tuple[Key, ...]


class AcquireReplicas(ToWorker):
    """Fetch these keys from the workers in ``who_has`` and keep them until freed."""

    op: ClassVar[str] = "acquire-replicas"

    who_has: dict[Key, tuple[str, ...]]
    nbytes: dict[Key, int]


class StealRequest(ToWorker):
    """Give this task back if it has not started (work stealing); the worker answers
    with :class:`StealResponse`."""

    op: ClassVar[str] = "steal-request"

    key: Key
    run_id: int


# ---------------------------------------------------------------------- worker -> scheduler


class FromWorker(StreamMessage, kw_only=True):
    """Base of what a worker tells the scheduler."""

    peer_fields: ClassVar[tuple[str, ...]] = ("worker",)

    worker: str = ""


class TaskFinished(FromWorker):
    """``key`` ran (its run ``run_id``): its result, ``nbytes`` of ``type``, is here."""

    op: ClassVar[str] = "task-finished"

    key: Key
    run_id: int
    nbytes: int
    type: str = ""
    duration: float = 0.0


class TaskErred(FromWorker):
    """``key`` raised: the exception and traceback, pickled, and their texts."""

    op: ClassVar[str] = "task-erred"

    key: Key
    run_id: int
    exception: Any
    traceback: Any
    exception_text: str = ""
    traceback_text: str = ""


class TaskRescheduled(FromWorker):
    """The task raised ``Reschedule``, or the worker gave it back."""

    op: ClassVar[str] = "reschedule"

    key: Key
    run_id: int


class StealResponse(FromWorker):
    """The answer to a :class:`StealRequest`: ``accepted`` if the worker dropped the task
    before it started, so that another worker may run it."""

    op: ClassVar[str] = "steal-response"

    key: Key
    run_id: int
    accepted: bool


class LongRunning(FromWorker):
    """A task seceded from its worker's thread pool: it no longer occupies a slot."""

    op: ClassVar[str] = "long-running"

    key: Key
    run_id: int


class AddKeys(FromWorker):
    """The worker holds replicas of these keys (after fetching them as dependencies)."""

    op: ClassVar[str] = "add-keys"

    keys: tuple[Key, ...]


class MissingData(FromWorker):
    """The worker could not get ``key`` from ``errant_worker``, said to hold it."""

    op: ClassVar[str] = "missing-data"

    key: Key
    errant_worker: str


class WorkerStatusChange(FromWorker):
    """The worker paused (memory pressure) or resumed ("running")."""

    op: ClassVar[str] = "worker-status-change"

    status: str


class WorkerHeartbeat(FromWorker, kw_only=True):
    """The worker is alive; ``memory`` holds its ``process``, ``managed`` and
    ``spilled`` bytes; ``usage`` what it used since its previous heartbeat: ``cpu``
    (percent of one core taken by its process), ``read_bps`` and ``write_bps`` (bytes
    per second received and sent by its host).  ``time`` is when the scheduler heard it."""

    op: ClassVar[str] = "heartbeat"
    arrival_fields: ClassVar[tuple[str, ...]] = ("time",)

    memory: dict[str, int] = msgspec.field(default_factory=dict)
    usage: dict[str, float] = msgspec.field(default_factory=dict)
    time: float = 0.0


class Unregister(FromWorker):
    """The worker is leaving: nothing more will come on this stream."""

    op: ClassVar[str] = "unregister"


TO_WORKER = Catalogue.of(ToWorker)
FROM_WORKER = Catalogue.of(FromWorker)
