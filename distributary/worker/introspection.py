"""What a worker tells about itself: the stacks of its running tasks, and the events
its tasks log."""

from __future__ import annotations

import sys
import traceback
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distributary.protocol.introspection import WorkerLogEvent, check_topic, plain
from distributary.worker.context import running_tasks

if TYPE_CHECKING:
    from distributary.worker.server import Worker


def call_stacks(worker: Worker, keys: Iterable | None = None) -> dict[Any, tuple[str, ...]]:
    """The Python stack of each task ``worker`` runs now (of ``keys`` only, unless
    None), by key, as the lines of :func:`traceback.format_stack`, innermost last."""
    wanted = None if keys is None else set(keys)
    frames = sys._current_frames()
    stacks = {}
    for thread, key in running_tasks(worker).items():
        frame = frames.get(thread)
        if frame is not None and (wanted is None or key in wanted):
            stacks[key] = tuple(traceback.format_stack(frame))
    return stacks


def log_event_message(topic: Any, msg: Any) -> WorkerLogEvent:
    """The stream message logging ``msg`` (plain data) under ``topic`` (a string or a
    list of them); TypeError if either is not what it should be."""
    return WorkerLogEvent(
        f"log-event-{uuid.uuid4().hex[:8]}", topic=check_topic(topic), msg=plain(msg, "msg")
    )
