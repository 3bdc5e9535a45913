"""Instructions the scheduler's state machine emits for its server to carry out.

The messages for a worker or a client (declared in :mod:`distributary.protocol`,
named here too) go on the batched stream of their peer; the server carries out the
ones :class:`ForServer` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = [
    "AcquireReplicas",
    "ClientRemoved",
    "ClusterRestarted",
    "ComputeTask",
    "ForServer",
    "FreeKeys",
    "KeyCancelled",
    "KeyErred",
    "KeyInMemory",
    "KeyLost",
    "Restarted",
    "RetirementFailed",
    "SchedulerIdle",
    "SchedulerInstruction",
    "StealRequest",
    "ToClient",
    "ToWorker",
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
