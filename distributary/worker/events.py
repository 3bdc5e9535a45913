"""Stimuli the worker's state machine reacts to: the scheduler's messages (declared in
:mod:`distributary.protocol`, named here too) and the worker's own events below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distributary.protocol.errors import RemoteError
from distributary.protocol.worker_messages import (
    AcquireReplicas,
    ComputeTask,
    FreeKeys,
    StealRequest,
    ToWorker,
)

__all__ = [
    "AcquireReplicas",
    "ComputeTask",
    "AnyEvent",
    "ExecuteFailure",
    "ExecuteSuccess",
    "FreeKeys",
    "StealRequest",
    "GatherDepError",
    "GatherDepFailure",
    "GatherDepSuccess",
    "PauseChange",
    "RescheduleTask",
    "Secede",
    "UpdateData",
    "WorkerEvent",
]

Key = Any


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """Base of all worker events."""

    stimulus_id: str


@dataclass(frozen=True, slots=True)
class ExecuteSuccess(WorkerEvent):
    key: Key
    run_id: int
    value: Any
    nbytes: int
    type: str
    duration: float


@dataclass(frozen=True, slots=True)
class ExecuteFailure(WorkerEvent):
    key: Key
    run_id: int
    exception: Any
    traceback: Any
    exception_text: str
    traceback_text: str


@dataclass(frozen=True, slots=True)
class RescheduleTask(WorkerEvent):
    """The task raised ``Reschedule``."""

    key: Key
    run_id: int


@dataclass(frozen=True, slots=True)
class Secede(WorkerEvent):
    """The task left the thread pool (``secede()``): its thread no longer counts."""

    key: Key


@dataclass(frozen=True, slots=True)
class Rejoin(WorkerEvent):
    """A seceded task asks for a thread again (``rejoin()``): it waits for a free slot."""

    key: Key


@dataclass(frozen=True, slots=True)
class GatherDepSuccess(WorkerEvent):
    """A peer sent data.  Keys asked for but not in ``data`` were missing there."""

    worker: str
    keys: tuple
    data: dict
    nbytes: dict


@dataclass(frozen=True, slots=True)
class GatherDepFailure(WorkerEvent):
    """A peer could not be reached for these keys."""

    worker: str
    keys: tuple


@dataclass(frozen=True, slots=True)
class GatherDepError(WorkerEvent):
    """A peer answered, but its data for these keys cannot be had: it could not be
    serialized there, or deserialized here.  The tasks waiting for them fail with
    ``error``."""

    worker: str
    keys: tuple
    error: RemoteError


@dataclass(frozen=True, slots=True)
class UpdateData(WorkerEvent):
    """Data put here directly (scatter, or a replica pushed by a peer)."""

    data: dict
    nbytes: dict
    types: dict


@dataclass(frozen=True, slots=True)
class PauseChange(WorkerEvent):
    """Memory pressure paused (True) or unpaused (False) the worker."""

    paused: bool


AnyEvent = WorkerEvent | ToWorker
