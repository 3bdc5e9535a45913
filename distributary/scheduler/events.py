"""Stimuli the scheduler's state machine reacts to.

Every event is a small frozen value.  The server turns each incoming message into
one event and hands it to :meth:`SchedulerState.handle`; tests build them directly.
``stimulus_id`` names the cause so that :meth:`SchedulerState.story` can tell why a
key moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = Any  # str, bytes, int or a (nested) tuple of these


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a graph as a client describes it.

    ``payload`` is opaque: the scheduler forwards it to a worker and never looks inside.
    ``priority`` sorts ascending: smaller runs first.
    """

    key: Key
    payload: Any
    dependencies: tuple = ()
    priority: tuple = (0,)
    retries: int = 0
    workers: tuple | None = None
    allow_other_workers: bool = False
    resources: dict | None = None


@dataclass(frozen=True, slots=True)
class SchedulerEvent:
    """Base of all scheduler events."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class ClientEvent(SchedulerEvent):
    """Base of the events a client's message causes.

    ``seq`` numbers the client's messages in the order it sent them (0: not numbered);
    the reports sent back to that client carry the last one handled as their ``ack``.
    """

    client: str
    seq: int = field(default=0, kw_only=True)


@dataclass(frozen=True, slots=True)
class AddClient(SchedulerEvent):
    client: str


@dataclass(frozen=True, slots=True)
class RemoveClient(SchedulerEvent):
    client: str


@dataclass(frozen=True, slots=True)
class UpdateGraph(ClientEvent):
    """A client submits tasks and wants the keys in ``wanted``.

    ``continues``: these tasks are the next part of the client's previous graph, sent in
    parts so that its first tasks can start early; they share its place in the order.
    """

    tasks: tuple[TaskSpec, ...]
    wanted: tuple = ()
    continues: bool = False


@dataclass(frozen=True, slots=True)
class ClientDesiresKeys(ClientEvent):
    keys: tuple


@dataclass(frozen=True, slots=True)
class ClientReleasesKeys(ClientEvent):
    keys: tuple


@dataclass(frozen=True, slots=True)
class CancelKeys(ClientEvent):
    """A client cancels keys; with ``force`` even if other clients want them."""

    keys: tuple
    force: bool = False


@dataclass(frozen=True, slots=True)
class RetryKeys(ClientEvent):
    """A client asks to run erred keys (and their erred dependencies) again."""

    keys: tuple


@dataclass(frozen=True, slots=True)
class ScatterData(ClientEvent):
    """A client placed data on workers itself: ``who_has`` maps key to worker addresses.

    ``client`` is empty when no client wants the data (a worker's own scatter).
    """

    who_has: dict
    nbytes: dict
    types: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AddWorker(SchedulerEvent):
    address: str
    nthreads: int
    name: Any = None
    memory_limit: int = 0
    resources: dict = field(default_factory=dict)
    nanny: str | None = None
    host: str = ""
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class RemoveWorker(SchedulerEvent):
    """A worker is gone.  ``safe`` when it left on purpose (its tasks did not kill it)."""

    address: str
    safe: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat(SchedulerEvent):
    """A worker is alive; ``memory`` holds its ``process``, ``managed`` and ``spilled`` bytes."""

    address: str
    time: float
    memory: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetireWorkers(SchedulerEvent):
    """Stop giving these workers tasks and copy the data only they hold elsewhere.

    With ``replan`` the keys asked of other workers earlier, whose copies have still
    not arrived, are asked again.  ``time`` is now; a retirement not done by
    ``deadline`` is given up (:class:`Tick` tells).
    """

    addresses: tuple
    replan: bool = False
    time: float = 0.0
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Tick(SchedulerEvent):
    """Time passes: ``now`` on the clock that the other events' times come from."""

    now: float


@dataclass(frozen=True, slots=True)
class CancelRetirement(SchedulerEvent):
    """These workers stay after all (their data could not be moved): they run tasks again."""

    addresses: tuple


@dataclass(frozen=True, slots=True)
class Restart(SchedulerEvent):
    """Forget every task and every client's wants; the current workers get no more work.

    The server restarts or closes those workers itself.
    """


@dataclass(frozen=True, slots=True)
class WorkerStatusChange(SchedulerEvent):
    """A worker paused (memory pressure) or resumed ("running")."""

    address: str
    status: str


@dataclass(frozen=True, slots=True)
class TaskFinished(SchedulerEvent):
    worker: str
    key: Key
    run_id: int
    nbytes: int
    type: str = ""
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskErred(SchedulerEvent):
    worker: str
    key: Key
    run_id: int
    exception: Any
    traceback: Any
    exception_text: str = ""
    traceback_text: str = ""


@dataclass(frozen=True, slots=True)
class TaskRescheduled(SchedulerEvent):
    """The task raised ``Reschedule`` or the worker gave it back."""

    worker: str
    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class LongRunning(SchedulerEvent):
    """A task seceded from its worker's thread pool: it no longer occupies a slot."""

    worker: str
    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class AddKeys(SchedulerEvent):
    """A worker holds replicas of these keys (after fetching them as dependencies)."""

    worker: str
    keys: tuple


@dataclass(frozen=True, slots=True)
class MissingData(SchedulerEvent):
    """``worker`` could not get ``key`` from ``errant_worker``, which was said to hold it."""

    worker: str
    key: Key
    errant_worker: str
