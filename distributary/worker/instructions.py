"""Instructions the worker's state machine emits for its server to carry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from distributary.messages import Message

Key = Any


@dataclass(frozen=True, slots=True)
class WorkerInstruction:
    """Base of all worker instructions."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class Execute(WorkerInstruction):
    """Run the task in the thread pool."""

    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class GatherDep(WorkerInstruction):
    """Fetch these keys from the peer ``worker`` in one request."""

    worker: str
    keys: tuple
    total_nbytes: int


@dataclass(frozen=True, slots=True)
class TaskFinishedMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "task-finished"
    key: Key
    run_id: int
    nbytes: int
    type: str
    duration: float


@dataclass(frozen=True, slots=True)
class TaskErredMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "task-erred"
    key: Key
    run_id: int
    exception: Any
    traceback: Any
    exception_text: str
    traceback_text: str


@dataclass(frozen=True, slots=True)
class RescheduleMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "reschedule"
    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class LongRunningMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "long-running"
    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class AddKeysMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "add-keys"
    keys: tuple


@dataclass(frozen=True, slots=True)
class MissingDataMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "missing-data"
    key: Key
    errant_worker: str


@dataclass(frozen=True, slots=True)
class PauseMsg(Message, WorkerInstruction):
    op: ClassVar[str] = "worker-status-change"
    status: str
