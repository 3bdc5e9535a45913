"""Lock and MultiLock: locks shared by every client and task of a cluster.

Their state is kept on the scheduler (:mod:`distributary.scheduler.locks`); each
acquire is one request that the scheduler answers once the lock is taken or the
timeout passed.  Each object is its own holder: two Lock objects of one name exclude
each other, even in one client, and a Lock pickled (into a task, say) arrives as a new
Lock of the same name.  An object talks to the scheduler through its client: the one
given, or else the one ``get_client()`` gives where the object is first used (inside a
task: the worker's).  What it holds is freed when that client leaves the scheduler.
"""

from __future__ import annotations

import uuid
from typing import Any

from distributary.client.client import Client
from distributary.client.shared import ClientBound, ask, wait_seconds
from distributary.protocol import locks as lk

__all__ = ["Lock", "MultiLock"]


def _blocking_wait(blocking: bool, timeout: Any) -> float | None:
    if blocking:
        return wait_seconds(timeout)
    if timeout is not None:
        raise ValueError("can't specify a timeout for a non-blocking call")
    return 0.0


class SharedPrimitive(ClientBound):
    """Base of Lock, MultiLock and Semaphore: each object is its own holder (``id``),
    with ``with`` and ``async with`` blocks (acquire, then release)."""

    def __init__(self, client: Client | None):
        super().__init__(client)
        self.id = uuid.uuid4().hex

    def _check_client(self, asynchronous: bool, use: str) -> None:
        if self._bound_client().asynchronous != asynchronous:
            kind = "a blocking" if asynchronous else "an asynchronous"
            raise TypeError(f"Can't use {use} on {self!r}: its client is {kind} client")

    def __enter__(self) -> Any:
        self._check_client(False, "'with'")
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> Any:
        self._check_client(True, "'async with'")
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class Lock(SharedPrimitive):
    """A lock shared by every client and task of the cluster, by name.

    ``name``: the same name is the same lock, everywhere (a new, unique name if not
    given).  ``client``: the client to talk to the scheduler through (by default the
    one ``get_client()`` gives).  Use ``with lock:`` (``async with`` with an
    asynchronous client), or ``acquire`` and ``release``.
    """

    def __init__(self, name: Any = None, client: Client | None = None):
        super().__init__(client)
        self.name = name if name is not None else f"lock-{uuid.uuid4().hex}"
        self._held = False

    def acquire(self, blocking: bool = True, timeout: Any = None) -> Any:
        """Take the lock: True once taken, False if ``timeout`` (seconds, or text such
        as "200ms") passed first; ``blocking=False``: only if it is free now."""
        return self._sync(self._acquire, _blocking_wait(blocking, timeout))

    async def _acquire(self, client: Client, timeout: float | None) -> bool:
        request = lk.LockAcquire(self.name, self.id, client.id, timeout)
        acquired = await ask(client, request)
        self._held = self._held or acquired
        return acquired

    def release(self) -> Any:
        """Free the lock this object took; RuntimeError if it did not take it."""
        if not self._held:
            raise RuntimeError(f"{self!r} is released but was not acquired")
        self._held = False
        return self._sync(ask, lk.LockRelease(self.name, self.id))

    def locked(self) -> Any:
        """Whether anyone (this object or another) has the lock now."""
        return self._sync(ask, lk.LockLocked(self.name))

    def __reduce__(self) -> tuple:
        return type(self), (self.name,)

    def __repr__(self) -> str:
        return f"<Lock: {self.name!r}>"


class MultiLock(SharedPrimitive):
    """Several locks shared by the cluster, taken together, by name.

    ``acquire`` takes all of ``names`` (or ``num_locks`` of them) at once, or waits:
    never some of them, so MultiLocks asking for the same names in different orders do
    not deadlock.  Their names are apart from Lock's.  ``client`` as for :class:`Lock`.
    """

    def __init__(self, names: list | None = None, client: Client | None = None):
        super().__init__(client)
        self.names = list(names or ())
        self._locked = False

    def acquire(
        self, blocking: bool = True, timeout: Any = None, num_locks: int | None = None
    ) -> Any:
        """Take the locks: True once taken, False if ``timeout`` (seconds, or text such
        as "200ms") passed first; ``blocking=False``: only if they are free now.
        ``num_locks``: how many of the names to take (any of them; by default all)."""
        timeout = _blocking_wait(blocking, timeout)
        return self._sync(self._acquire, num_locks or None, timeout)

    async def _acquire(self, client: Client, num_locks: int | None, timeout: float | None) -> bool:
        request = lk.MultiLockAcquire(
            tuple(self.names), self.id, client.id, num_locks=num_locks, timeout=timeout
        )
        acquired = await ask(client, request)
        self._locked = self._locked or acquired
        return acquired

    def release(self) -> Any:
        """Free the locks this object took; ValueError if it did not take them."""
        if not self._locked:
            raise ValueError(f"{self!r} is not yet acquired")
        self._locked = False
        return self._sync(ask, lk.MultiLockRelease(self.id))

    def locked(self) -> bool:
        """Whether this object has its locks."""
        return self._locked

    def __reduce__(self) -> tuple:
        return type(self), (self.names,)

    def __repr__(self) -> str:
        return f"<MultiLock: {self.names!r}>"
