"""Running one task's payload in a worker thread, and describing its result."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from dask.sizeof import sizeof

from distributary.exceptions import Reschedule
from distributary.protocol.errors import RemoteError
from distributary.protocol.tasks import loads_node, loads_task


class TaskOutcome:
    """What happened when a task ran: its value and size, or its error; when it ran
    (``start``, ``stop``: wall-clock seconds) and in which thread."""

    __slots__ = (
        *("value", "nbytes", "type", "duration", "error", "reschedule"),
        *("start", "stop", "thread"),
    )

    def __init__(self) -> None:
        self.value: Any = None
        self.nbytes = 0
        self.type = ""
        self.duration = 0.0
        self.error: RemoteError | None = None
        self.reschedule = False
        self.start = self.stop = 0.0
        self.thread = 0


def run_task(payload: Mapping, dependencies: Mapping) -> TaskOutcome:
    """Unpack and call the task; never raises."""
    outcome = TaskOutcome()
    outcome.thread = threading.get_ident()
    outcome.start = time.time()
    start = time.perf_counter()
    try:
        if "node" in payload:  # a dask graph node: it takes its dependencies' values
            value = loads_node(payload)(dependencies)
        else:
            func, args, kwargs = loads_task(payload, dependencies)
            value = func(*args, **kwargs)
    except Reschedule:
        outcome.reschedule = True
        return outcome
    except BaseException as exc:
        outcome.error = RemoteError.of(exc)
        return outcome
    finally:
        outcome.duration = time.perf_counter() - start
        outcome.stop = outcome.start + outcome.duration
    outcome.value = value
    try:
        outcome.nbytes = sizeof(value)
    except Exception:
        outcome.nbytes = 0
    outcome.type = type(value).__qualname__
    return outcome
