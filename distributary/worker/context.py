"""What a running task knows about where it runs: ``get_worker``, ``secede``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributary.worker.server import Worker

_task_context = threading.local()


def set_task_context(worker: Worker | None, key: Any = None) -> None:
    """Record (or clear, with None) the worker and key of the task in this thread."""
    _task_context.worker = worker
    _task_context.key = key


def get_worker() -> Worker:
    """The worker running the current task.

    Raises ValueError when called outside a task.
    """
    worker = getattr(_task_context, "worker", None)
    if worker is None:
        raise ValueError("No worker found: get_worker() only works inside a task")
    return worker


def current_task_key() -> Any:
    """The key of the task running in this thread, or None."""
    return getattr(_task_context, "key", None)


def secede() -> None:
    """Leave the worker's thread pool: this task no longer takes up a thread.

    Use it in a long-running task that waits on other tasks, so that they can run.
    """
    worker = get_worker()
    worker.secede_current_task(current_task_key())
