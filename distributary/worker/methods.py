"""Worker methods of dask.distributed's API that live beside the worker's core: running
a function on an executor, the handle of the scheduler and where workers keep their
files."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

from distributary.comm.addressing import get_address_host_port
from distributary.core import ConnectionPool

logger = logging.getLogger("distributary.worker")


async def executor_submit(
    default: Any,
    key: Any,
    function: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    executor: Any = None,
) -> Any:
    """Run ``function(*args, **kwargs)`` on ``executor`` (else ``default``); its result."""
    executor = default if executor is None else executor
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            f"executor_submit({key!r}): executor must be an Executor (with submit), "
            f"got {executor!r}"
        )
    if not callable(function):
        raise TypeError(f"executor_submit({key!r}): {function!r} is not callable")
    logger.debug("Running %r on %r", key, executor)
    future = executor.submit(functools.partial(function, *args, **(kwargs or {})))
    return await asyncio.wrap_future(future)


class SchedulerHandle:
    """The scheduler as a worker reaches it: ``address``, ``ip`` and ``port``, and its
    operations as coroutines, ``await worker.scheduler.identity()`` (keywords are the
    operation's fields)."""

    def __init__(self, address: str, pool: ConnectionPool):
        self.address = address
        self._pool = pool

    @property
    def ip(self) -> str:
        """The scheduler's host."""
        return get_address_host_port(self.address)[0]

    @property
    def port(self) -> int:
        """The scheduler's port."""
        return get_address_host_port(self.address)[1]

    def __getattr__(self, op: str) -> Callable:
        if op.startswith("_"):
            raise AttributeError(op)

        async def call(**fields: Any) -> Any:
            return await self._pool.call(self.address, {"op": op, **fields})

        call.__name__ = op
        return call

    def __repr__(self) -> str:
        return f"<SchedulerHandle {self.address}>"


def scratch_directory(base: str | None) -> str:
    """Where workers make their own directories: ``distributary-scratch-space`` under
    ``base`` (default: the temporary directory)."""
    return os.path.join(base or tempfile.gettempdir(), "distributary-scratch-space")
