"""Instructions the scheduler's state machine emits for its server to carry out.

The server turns each into a message on the batched stream of a worker or a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distributary.messages import Message

Key = Any


@dataclass(frozen=True, slots=True)
class SchedulerInstruction:
    """Base of all scheduler instructions."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class ToWorker(SchedulerInstruction):
    """Base of the instructions addressed to one worker."""

    worker: str


@dataclass(frozen=True, slots=True)
class ComputeTask(Message, ToWorker):
    """Run ``key``: its dependencies are held by the workers in ``who_has``."""

    op: ClassVar[str] = "compute-task"

    key: Key
    run_id: int
    payload: Any
    priority: tuple
    who_has: dict
    nbytes: dict
    resources: dict | None


@dataclass(frozen=True, slots=True)
class FreeKeys(Message, ToWorker):
    """Forget these keys: stop running them and drop their data."""

    op: ClassVar[str] = "free-keys"

    keys: tuple


@dataclass(frozen=True, slots=True)
class AcquireReplicas(Message, ToWorker):
    """Fetch these keys from the workers in ``who_has`` and keep them."""

    op: ClassVar[str] = "acquire-replicas"

    who_has: dict
    nbytes: dict


@dataclass(frozen=True, slots=True)
class ForServer(SchedulerInstruction):
    """Base of the instructions the scheduler's server carries out itself."""


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
class WorkerSilent(ForServer):
    """The worker sent nothing for ``silence`` seconds, more than ``worker_ttl``."""

    address: str
    silence: float


@dataclass(frozen=True, slots=True)
class SchedulerIdle(ForServer):
    """No client and no work for ``idle_for`` seconds, more than ``idle_timeout``."""

    idle_for: float


@dataclass(frozen=True, slots=True)
class ToClient(SchedulerInstruction):
    """Base of the instructions addressed to one client.

    ``ack``: the ``seq`` of the last message from that client handled when this was
    written, so that the client can tell a report about an earlier life of a key (one it
    released or cancelled since) from a report about the key it asks for now.
    """

    client: str
    ack: int = field(default=0, kw_only=True)


@dataclass(frozen=True, slots=True)
class KeyInMemory(Message, ToClient):
    op: ClassVar[str] = "key-in-memory"
    key: Key
    type: str
    workers: tuple


@dataclass(frozen=True, slots=True)
class KeyErred(Message, ToClient):
    op: ClassVar[str] = "task-erred"
    key: Key
    exception: Any
    traceback: Any
    exception_text: str


@dataclass(frozen=True, slots=True)
class KeyCancelled(Message, ToClient):
    op: ClassVar[str] = "cancelled-key"
    key: Key
    reason: str


@dataclass(frozen=True, slots=True)
class KeyLost(Message, ToClient):
    """The data of a finished key was lost; it is being computed again."""

    op: ClassVar[str] = "lost-data"

    key: Key


@dataclass(frozen=True, slots=True)
class Restarted(Message, ToClient):
    """The cluster restarted: every future of the client is cancelled."""

    op: ClassVar[str] = "restart"
