"""Locks and multi-locks: named, exclusive, each had by one holder at a time.

Theory of operation
-------------------
A holder is one ``Lock`` or ``MultiLock`` object (its id), talking through one
client.  A request asks for ``need`` of the names it gives (a Lock: its one name); it
gets them at once, or not at all, so a holder never waits while having some: two
requests for overlapping names in different orders cannot deadlock.

Turns: requests wait first come, first served (a :class:`~distributary.scheduler.
waiters.WaitQueue`).  A waiting request reserves its names against the requests after
it, so a request for many names is not starved by a stream of requests for one of
them, while a request for other names goes ahead.  Whenever names may have become
available (a release, a request leaving the queue), the waiting requests are looked at
in order and each that can have its names gets them.

Lock and MultiLock names are apart, as in dask.distributed: ``Lock("x")`` and
``MultiLock(["x"])`` do not exclude each other.  A lock does not time out: what a
holder has is freed when it releases it or when its client leaves the scheduler
(``ClientRemoved``), and a holder whose request was given up (its connection closed
before the answer) gives back what it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import locks as lk
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.waiters import WaitQueue, check_connected


@dataclass(slots=True)
class LockRequest:
    """What a holder asks for: ``need`` of ``names``; ``taken`` once it has them."""

    names: tuple
    need: int
    holder: str
    client: str
    taken: list | None = None


@dataclass(slots=True)
class Holding:
    """The names a holder has, and the client it talks through."""

    client: str
    names: set = field(default_factory=set)


class LockTable:
    """Named exclusive locks of one kind: who has each, and the requests waiting."""

    def __init__(self) -> None:
        self.owners: dict[Any, str] = {}  # lock name -> the holder that has it
        self.holdings: dict[str, Holding] = {}  # by holder
        self.waiting = WaitQueue()

    async def acquire(self, request: LockRequest, timeout: float | None) -> bool:
        """Give ``request`` its names now, or once they are available: True; False if
        ``timeout`` seconds passed first."""
        if self._take_free(request):
            return True
        if timeout == 0:
            return False
        try:
            await self.waiting.wait(request.client, timeout, request)
        finally:
            if request.taken is None:  # its place in the queue held others back
                self._serve(set(request.names))
        return request.taken is not None

    def release(self, holder: str, names: Any = None) -> bool:
        """Free ``names`` (all, if None) that ``holder`` has; False if it had none of
        them."""
        holding = self.holdings.get(holder)
        if holding is None:
            return False
        freed = set(holding.names) if names is None else holding.names & set(names)
        if not freed:
            return False
        holding.names -= freed
        if not holding.names:
            del self.holdings[holder]
        for name in freed:
            del self.owners[name]
        self._serve(freed)
        return True

    def drop_client(self, client: str) -> None:
        """``client`` left: its requests stop waiting and its holders' locks are freed."""
        self.waiting.drop_client(client)
        for holder, holding in list(self.holdings.items()):
            if holding.client == client:
                self.release(holder)

    def _take_free(self, request: LockRequest, reserved: set | None = None) -> bool:
        """Give ``request`` its names if enough of them are free and not ``reserved``
        (by default: by the requests waiting); whether it got them."""
        unowned = [name for name in request.names if name not in self.owners]
        if len(unowned) < request.need:
            return False
        if reserved is None:
            reserved = {name for waiter in self.waiting for name in waiter.detail.names}
        free = [name for name in unowned if name not in reserved]
        if len(free) < request.need:
            return False
        request.taken = free[: request.need]
        for name in request.taken:
            self.owners[name] = request.holder
        holding = self.holdings.setdefault(request.holder, Holding(request.client))
        holding.names.update(request.taken)
        return True

    def _serve(self, freed: set) -> None:
        """Give the waiting requests, in order, the names they can now have.

        ``freed``: the names that may have become available.  No waiting request could
        have its names before, so the look stops once none of those is left to give.
        """
        reserved: set = set()
        for waiter in self.waiting:
            if all(name in self.owners or name in reserved for name in freed):
                return
            request: LockRequest = waiter.detail
            if self._take_free(request, reserved):
                self.waiting.serve_waiter(waiter)
                freed.update(name for name in request.names if name not in request.taken)
            else:
                reserved.update(request.names)


class LockExtension(SchedulerExtension):
    """The scheduler's Lock and MultiLock locks, and the requests waiting for them."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.locks = LockTable()  # of Lock objects
        self.multi_locks = LockTable()  # of MultiLock objects
        self.handlers.update(
            {
                lk.LockAcquire: self.acquire,
                lk.LockRelease: self.release,
                lk.LockLocked: self.locked,
                lk.MultiLockAcquire: self.multi_acquire,
                lk.MultiLockRelease: self.multi_release,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self._client_removed

    async def acquire(self, comm: Any, msg: lk.LockAcquire) -> bool:
        """Take a Lock's lock (see :class:`~distributary.protocol.locks.LockAcquire`)."""
        request = LockRequest((msg.name,), 1, msg.holder, msg.client)
        return await self._acquire(comm, self.locks, request, msg.timeout)

    def release(self, comm: Any, msg: lk.LockRelease) -> bool:
        """Free a Lock's lock."""
        return self.locks.release(msg.holder, (msg.name,))

    def locked(self, comm: Any, msg: lk.LockLocked) -> bool:
        """Whether a Lock's lock is had by anyone."""
        return msg.name in self.locks.owners

    async def multi_acquire(self, comm: Any, msg: lk.MultiLockAcquire) -> bool:
        """Take a MultiLock's locks (see :class:`~distributary.protocol.locks.
        MultiLockAcquire`)."""
        names = tuple(dict.fromkeys(msg.names))
        need = len(names) if msg.num_locks is None else msg.num_locks
        if not 0 < need <= len(names):
            raise ValueError(
                f"Cannot acquire {need} of the {len(names)} locks of a MultiLock of {names!r}"
            )
        request = LockRequest(names, need, msg.holder, msg.client)
        return await self._acquire(comm, self.multi_locks, request, msg.timeout)

    def multi_release(self, comm: Any, msg: lk.MultiLockRelease) -> bool:
        """Free every lock a MultiLock has."""
        return self.multi_locks.release(msg.holder)

    async def _acquire(
        self, comm: Any, table: LockTable, request: LockRequest, timeout: float | None
    ) -> bool:
        check_connected(self.scheduler, request.client)
        acquired = await table.acquire(request, timeout)
        if acquired and comm.closed():  # nobody is left to hear that it has them
            table.release(request.holder, request.taken)
            return False
        return acquired

    def _client_removed(self, removed: ins.ClientRemoved) -> None:
        self.locks.drop_client(removed.client)
        self.multi_locks.drop_client(removed.client)
