"""Instructions the scheduler's state machine emits for its server to carry out.

The messages for a worker or a client (declared in :mod:`distributary.protocol`,
named here too) go on the batched stream of their peer; the server carries out the
ones :class:`ForServer` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributary.protocol.client_messages import (
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    Restarted,
    ToClient,
)
from distributary.protocol.worker_messages import (
    AcquireReplicas,
    ComputeTask,
    FreeKeys,
    StealRequest,
    ToWorker,
)

if TYPE_CHECKING:
    from distributary.scheduler.records import TaskRecord

__all__ = [
    "AcquireReplicas",
    "ClientAdded",
    "ClientRemoved",
    "ClusterRestarted",
    "ComputeTask",
    "ForServer",
    "FreeKeys",
    "GraphUpdated",
    "KeyCancelled",
    "KeyErred",
    "KeyInMemory",
    "KeyLost",
    "Notice",
    "Restarted",
    "RetirementFailed",
    "SchedulerIdle",
    "SchedulerInstruction",
    "StealRequest",
    "ToClient",
    "ToWorker",
    "WorkerAdded",
    "WorkerRemoved",
    "WorkerRetired",
    "WorkerSilent",
]


@dataclass(frozen=True, slots=True)
class ForServer:
    """Base of the instructions the scheduler's server carries out itself."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class WorkerRetired(ForServer):
    """The worker's data is elsewhere and its tasks ran (or it is gone): it may leave."""

    address: str


@dataclass(frozen=True, slots=True)
class RetirementFailed(ForServer):
    """These workers could not be retired (``reason``): they run tasks again."""

    addresses: tuple
    reason: str


@dataclass(frozen=True, slots=True)
class Notice(ForServer):
    """Base of the instructions that only tell what happened (for the plugins): there is
    nothing to carry out."""


@dataclass(frozen=True, slots=True)
class WorkerAdded(Notice):
    """A worker joined (``nanny``: the address of its nanny, if it has one)."""

    address: str
    nanny: str | None


@dataclass(frozen=True, slots=True)
class WorkerRemoved(Notice):
    """A worker is gone."""

    address: str


@dataclass(frozen=True, slots=True)
class ClientAdded(Notice):
    """A client connected."""

    client: str


@dataclass(frozen=True, slots=True)
class GraphUpdated(Notice):
    """A client's graph (or one part of it) was taken in: its ``tasks`` (specs) and the
    keys it ``wanted``.  Told to the state's ``graph_observers`` at once, before any of
    the tasks moves, rather than returned."""

    client: str
    tasks: tuple
    wanted: tuple


@dataclass(frozen=True, slots=True)
class ClientRemoved(ForServer):
    """The client is gone, with everything it wanted."""

    client: str


@dataclass(frozen=True, slots=True)
class ClusterRestarted(ForServer):
    """Every task and every client's wants were forgotten (``Restart``)."""


@dataclass(frozen=True, slots=True)
class WorkerSilent(ForServer):
    """The worker sent nothing for ``silence`` seconds, more than ``worker_ttl``."""

    address: str
    silence: float


@dataclass(frozen=True, slots=True)
class SchedulerIdle(ForServer):
    """No client and no work for ``idle_for`` seconds, more than ``idle_timeout``."""

    idle_for: float


SchedulerInstruction = ToWorker | ToClient | ForServer


def compute_task(ts: TaskRecord, stimulus_id: str) -> ComputeTask:
    """The instruction to run ``ts`` (its current run) on the worker it is processing on."""
    who_has = {}
    nbytes = {}
    for dep in ts.dependencies:
        who_has[dep.key] = tuple(w.address for w in dep.who_has)
        nbytes[dep.key] = dep.nbytes
    return ComputeTask(
        stimulus_id,
        ts.key,
        ts.run_id,
        ts.payload,
        ts.priority,
        who_has,
        nbytes,
        ts.resource_restrictions,
        worker=ts.processing_on.address,
    )
