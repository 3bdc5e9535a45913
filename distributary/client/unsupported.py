"""Client methods of dask.distributed's API that distributary does not support yet.

Each exists with its documented parameters, so that code naming it fails with an error
that says what is missing, not with an AttributeError.
"""

from __future__ import annotations

from typing import Any


def _not_yet(method: str, why: str) -> NotImplementedError:
    return NotImplementedError(f"Client.{method} is not supported by distributary yet: {why}")


def get_task_stream(
    self: Any,
    start: Any = None,
    stop: Any = None,
    count: Any = None,
    plot: Any = False,
    filename: str = "task-stream.html",
) -> Any:
    """Not supported yet: the task stream is part of the diagnostics to come."""
    raise _not_yet("get_task_stream", "the task stream is part of the diagnostics to come")


def profile(
    self: Any,
    key: Any = None,
    start: Any = None,
    stop: Any = None,
    workers: Any = None,
    merge_workers: bool = True,
    plot: Any = False,
    filename: Any = None,
    server: bool = False,
    scheduler: bool = False,
) -> Any:
    """Not supported yet: statistical profiles are part of the diagnostics to come."""
    raise _not_yet("profile", "statistical profiles are part of the diagnostics to come")
