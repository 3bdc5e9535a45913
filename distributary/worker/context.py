"""What a running task knows about where it runs: ``get_worker``, ``secede``, ``rejoin``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributary.worker.server import Worker

_task_context = threading.local()
_running: dict[int, tuple[Worker, Any]] = {}  # thread id -> the worker and key running there


def set_task_context(worker: Worker | None, key: Any = None) -> None:
    """Record (or clear, with None) the worker and key of the task in this thread."""
    _task_context.worker = worker
    _task_context.key = key
    _task_context.seceded = False
    if worker is None:
        _running.pop(threading.get_ident(), None)
    else:
        _running[threading.get_ident()] = (worker, key)


def running_tasks(worker: Worker) -> dict[int, Any]:
    """The keys of the tasks that ``worker`` runs now, by the id of their thread."""
    return {thread: key for thread, (w, key) in dict(_running).items() if w is worker}


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

    Use it in a long-running task that waits on other tasks, so that they can run; the
    scheduler no longer counts the task against the worker's occupancy.  ``rejoin()``
    takes a thread again.  Raises ValueError outside a task.
    """
    worker = get_worker()
    if not _task_context.seceded:
        _task_context.seceded = True
        worker.secede_current_task(current_task_key())


def rejoin() -> None:
    """Rejoin the worker's thread pool after ``secede()``, blocking until a thread is free.

    A task that has not seceded holds its thread already and goes on at once.  Raises
    ValueError outside a task.
    """
    worker = get_worker()
    if _task_context.seceded:
        worker.rejoin_current_task(current_task_key())
        _task_context.seceded = False


@contextmanager
def out_of_the_pool_while_blocked() -> Iterator[None]:
    """Around a call that blocks this thread on the cluster: a task running here
    secedes for the time of the call (so that the tasks it waits for can take its
    thread) and rejoins after it; elsewhere, and in a task that seceded, nothing."""
    if getattr(_task_context, "worker", None) is None or _task_context.seceded:
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()
