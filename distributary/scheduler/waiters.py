"""Requests that wait on the scheduler, in turn, for something to become theirs.

A lock's acquire, a queue's get or put, a variable's get, an event's wait: each is one
request that the scheduler answers when what it asks for happens, or when its timeout
passes, never by polling.  A :class:`WaitQueue` holds such requests first come, first
served: :meth:`WaitQueue.wait` parks one (for at most ``timeout`` seconds), and the
extension hands the first of them what it waited for with :meth:`WaitQueue.serve`.
The requests of a client that leaves are dropped (:meth:`WaitQueue.drop_client`), so
nothing is handed to a client that is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributary.scheduler.extension import SchedulerContext

TIMED_OUT = object()  # what wait() returns when the timeout passed first


class Waiter:
    """One waiting request: whose it is, and the future that answers it."""

    __slots__ = ("client", "future", "detail")

    def __init__(self, client: str, detail: Any = None):
        self.client = client
        self.detail = detail  # what the request asks for, for the extension
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()


class WaitQueue:
    """Waiting requests, first come, first served."""

    def __init__(self) -> None:
        self._waiters: deque[Waiter] = deque()

    async def wait(self, client: str, timeout: float | None, detail: Any = None) -> Any:
        """Wait until served (returning what was handed over) or until ``timeout``
        seconds passed (returning ``TIMED_OUT``); RuntimeError if the client left."""
        waiter = Waiter(client, detail)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except asyncio.TimeoutError:
            if waiter.future.done():  # served just as the time ran out
                return waiter.future.result()
            return TIMED_OUT
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            self._remove(waiter)

    def serve(self, value: Any = True) -> Waiter | None:
        """Hand ``value`` to the first request still waiting; that request (or None)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(value)
                return waiter
        return None

    def serve_waiter(self, waiter: Waiter, value: Any = True) -> None:
        """Hand ``value`` to this request (still waiting), wherever it is in the queue."""
        waiter.future.set_result(value)
        self._remove(waiter)

    def serve_all(self, value: Any = True) -> None:
        """Hand ``value`` to every request waiting."""
        while self.serve(value) is not None:
            pass

    def drop_client(self, client: str) -> None:
        """Fail the requests of ``client``, which left."""
        for waiter in list(self._waiters):
            if waiter.client == client and not waiter.future.done():
                waiter.future.set_exception(
                    RuntimeError(f"Client {client!r} left the scheduler while waiting")
                )
                self._remove(waiter)

    def first(self) -> Waiter | None:
        """The first request still waiting, left waiting."""
        for waiter in self._waiters:
            if not waiter.future.done():
                return waiter
        return None

    def __iter__(self) -> Iterator[Waiter]:
        return (waiter for waiter in list(self._waiters) if not waiter.future.done())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return self.first() is not None

    def _remove(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


def check_connected(scheduler: SchedulerContext, client: str | None) -> None:
    """RuntimeError if ``client`` (the sender of a request that may wait) is not
    connected: its requests would wait for nobody, as a leaving client's are dropped."""
    if client is not None and not scheduler.is_connected(client):
        raise RuntimeError(f"Client {client!r} is not connected to the scheduler")


def caller_gone(scheduler: SchedulerContext, comm: Any, client: str | None) -> bool:
    """Whether the answer to a request can no longer reach its caller: its connection
    closed (an asynchronous caller gave up), or its client left."""
    return comm.closed() or (client is not None and not scheduler.is_connected(client))
