"""Exceptions that users of distributary see and catch."""

from __future__ import annotations

import builtins
from concurrent.futures import CancelledError

__all__ = [
    "CancelledError",
    "FutureCancelledError",
    "FutureLostError",
    "KilledWorker",
    "Reschedule",
    "TimeoutError",
]

# The builtin; asyncio.TimeoutError is the same class from Python 3.11 on.
TimeoutError = builtins.TimeoutError


class FutureCancelledError(CancelledError):
    """Raised when the result of a cancelled future is asked for."""

    def __init__(self, key: object, reason: str | None = None, msg: str | None = None):
        self.key = key
        self.reason = reason or "unknown"
        super().__init__(msg or f"{key} cancelled for reason: {self.reason}.")


class KilledWorker(Exception):
    """A task was running on too many workers that died while running it.

    ``allowed_failures`` (``distributed.scheduler.allowed-failures``) workers may
    die while running a task; the next death gives up on the task with this error.
    ``reason`` says why the last worker died, when that is known (for example, its
    nanny killed it for using too much memory).
    """

    def __init__(self, task: object, last_worker: str, allowed_failures: int, reason: str = ""):
        self.task = task
        self.last_worker = last_worker
        self.allowed_failures = allowed_failures
        self.reason = reason
        super().__init__(task, last_worker, allowed_failures, reason)

    def __str__(self) -> str:
        text = (
            f"Attempted to run task {self.task!r} on {self.allowed_failures + 1} different "
            f"workers, but all those workers died while running it. The last worker that "
            f"attempted to run the task was {self.last_worker}."
        )
        if self.reason:
            text += f" Why it died: {self.reason}."
        return text


class Reschedule(Exception):
    """Raise from inside a task to have the scheduler run it again, perhaps elsewhere."""


class FutureLostError(Exception):
    """Data placed on the cluster with ``scatter`` was lost with the worker that held it."""

    def __init__(self, key: object):
        super().__init__(f"The data of {key!r} was lost and cannot be computed again")
        self.key = key
