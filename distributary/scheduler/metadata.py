"""What the scheduler keeps beside the tasks: metadata set by clients, and the task a
failure is blamed on.

Metadata is a nested dict of small plain values (anything msgpack carries): a path of
keys walks it, and setting a value makes the dicts on the way.  A failed task's
payload goes back to the client that asks as the opaque blob it came in, with the keys
of its inputs, so that the client can run it again locally (``recreate_error_locally``).
"""

from __future__ import annotations

from typing import Any

from distributary.protocol.data import NO_DEFAULT, ErredTask, GetErredTask, GetMetadata, SetMetadata
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension


class TaskMetadata(SchedulerExtension):
    """The scheduler's ``task_metadata`` and its answers about failed tasks."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.task_metadata: dict = {}
        self.handlers.update(
            {
                SetMetadata: self._handle_set,
                GetMetadata: self._handle_get,
                GetErredTask: self._handle_erred_task,
            }
        )

    def set_metadata(self, keys: tuple, value: Any) -> None:
        """Set the value at the path ``keys``; what is not a dict on the way becomes one."""
        if not keys:
            raise ValueError("set_metadata needs at least one key")
        metadata = self.task_metadata
        for key in keys[:-1]:
            if not isinstance(metadata.get(key), dict):
                metadata[key] = {}
            metadata = metadata[key]
        metadata[keys[-1]] = value

    def get_metadata(self, keys: tuple, default: Any = NO_DEFAULT) -> Any:
        """The value at the path ``keys``; ``default`` if there is none (KeyError naming
        the path without one)."""
        if not keys:
            raise ValueError("get_metadata needs at least one key")
        metadata: Any = self.task_metadata
        for key in keys:
            if not isinstance(metadata, dict) or key not in metadata:
                if isinstance(default, str) and default == NO_DEFAULT:
                    raise KeyError(keys[0] if len(keys) == 1 else list(keys))
                return default
            metadata = metadata[key]
        return metadata

    def erred_task(self, keys: tuple) -> ErredTask | None:
        """The task blamed for the failure of the first erred key of ``keys``."""
        tasks = self.scheduler.state.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and ts.state == "erred":
                blame = ts.exception_blame or ts
                deps = tuple(dep.key for dep in blame.dependencies)
                return ErredTask(blame.key, blame.payload, deps)
        return None

    # ------------------------------------------------------------------ handlers

    def _handle_set(self, comm: Any, msg: SetMetadata) -> None:
        self.set_metadata(msg.keys, msg.value)

    def _handle_get(self, comm: Any, msg: GetMetadata) -> Any:
        return self.get_metadata(msg.keys, msg.default)

    def _handle_erred_task(self, comm: Any, msg: GetErredTask) -> ErredTask | None:
        return self.erred_task(msg.keys)
