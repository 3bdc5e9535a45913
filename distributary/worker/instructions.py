"""Instructions the worker's state machine emits for its server to carry out: the
messages for the scheduler (declared in :mod:`distributary.protocol`, named here too),
and the work the server does itself below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distributary.protocol.worker_messages import (
    AddKeys,
    FromWorker,
    LongRunning,
    MissingData,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskRescheduled,
    WorkerStatusChange,
)

__all__ = [
    "AddKeys",
    "Execute",
    "FromWorker",
    "GatherDep",
    "Instruction",
    "LongRunning",
    "MissingData",
    "StealResponse",
    "TaskErred",
    "TaskFinished",
    "TaskRescheduled",
    "WorkerInstruction",
    "WorkerStatusChange",
]

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
class Rejoined(WorkerInstruction):
    """The seceded task has a thread slot again: let it go on."""

    key: Key


@dataclass(frozen=True, slots=True)
class GatherDep(WorkerInstruction):
    """Fetch these keys from the peer ``worker`` in one request."""

    worker: str
    keys: tuple
    total_nbytes: int


Instruction = WorkerInstruction | FromWorker
