"""Stimuli the scheduler's state machine reacts to.

Every event is a small frozen value: the messages of workers and clients (declared in
:mod:`distributary.protocol`, named here too) and the server's own events below.  The
server hands them to :meth:`SchedulerState.handle`; tests build them directly.
``stimulus_id`` names the cause so that :meth:`SchedulerState.story` can tell why a
key moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributary.protocol.client_messages import (
    CancelKeys,
    ClientDesiresKeys,
    ClientReleasesKeys,
    FireAndForget,
    Flush,
    FromClient,
    RetryKeys,
    ScatterData,
    TaskSpec,
    UpdateGraph,
)
from distributary.protocol.worker_messages import (
    AddKeys,
    FromWorker,
    LongRunning,
    MissingData,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskRescheduled,
    WorkerHeartbeat,
    WorkerStatusChange,
)

__all__ = [
    "AddClient",
    "AddKeys",
    "AddWorker",
    "CancelKeys",
    "CancelRetirement",
    "AnyEvent",
    "ClientDesiresKeys",
    "ClientReleasesKeys",
    "FireAndForget",
    "FromClient",
    "FromWorker",
    "LongRunning",
    "MissingData",
    "Flush",
    "RemoveClient",
    "RemoveWorker",
    "Restart",
    "RetireWorkers",
    "RetryKeys",
    "ScatterData",
    "StealResponse",
    "SchedulerEvent",
    "TaskErred",
    "TaskFinished",
    "TaskRescheduled",
    "TaskSpec",
    "Tick",
    "Transitions",
    "UpdateGraph",
    "WorkerHeartbeat",
    "WorkerStatusChange",
]


@dataclass(frozen=True, slots=True)
class SchedulerEvent:
    """Base of all scheduler events."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class AddClient(SchedulerEvent):
    client: str


@dataclass(frozen=True, slots=True)
class RemoveClient(SchedulerEvent):
    client: str


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
    pid: int = 0
    local_directory: str = ""
    services: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoveWorker(SchedulerEvent):
    """A worker is gone.  ``safe`` when it left on purpose (its tasks did not kill it)."""

    address: str
    safe: bool = False
    reason: str = ""


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
class Transitions(SchedulerEvent):
    """Move these tasks (``{key: state}``), and on until no recommendation is left."""

    recommendations: dict


AnyEvent = SchedulerEvent | FromWorker | FromClient
