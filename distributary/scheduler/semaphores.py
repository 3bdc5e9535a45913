"""Semaphores: named, each granting at most ``max_leases`` leases at a time.

Theory of operation
-------------------
A lease is taken by one acquire (its ``lease_id``, made by the client) and held
through one client.  Acquires wait first come, first served (a :class:`~distributary.
scheduler.waiters.WaitQueue` per semaphore); a release hands the freed lease straight
to the first acquire waiting.

A lease is freed by its release, when its client leaves the scheduler
(``ClientRemoved``), or when it is not refreshed for its lease timeout (dask's
``distributed.scheduler.locks.lease-timeout``, as the acquiring client has it
configured; its client refreshes it while it is held): each lease has its own timer,
set again at each refresh, so nothing is checked on a schedule.  A semaphore is kept
(with its ``max_leases``, which every user must agree on) until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import locks as lk
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.waiters import WaitQueue, check_connected

logger = logging.getLogger("distributary.scheduler")


@dataclass(slots=True)
class Lease:
    """One lease: its client, its lease timeout and the timer that frees it then."""

    client: str
    timeout: float | None
    expiry: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class SemaphoreRecord:
    """One semaphore: its leases (by lease id) and the acquires waiting for one."""

    name: Any
    max_leases: int
    leases: dict[str, Lease] = field(default_factory=dict)
    waiting: WaitQueue = field(default_factory=WaitQueue)


class SemaphoreExtension(SchedulerExtension):
    """The scheduler's semaphores, their leases and the acquires waiting for them."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.semaphores: dict[Any, SemaphoreRecord] = {}
        self.handlers.update(
            {
                lk.SemaphoreRegister: self.register,
                lk.SemaphoreAcquire: self.acquire,
                lk.SemaphoreRelease: self.release,
                lk.SemaphoreRefresh: self.refresh,
                lk.SemaphoreValue: self.value,
                lk.SemaphoreClose: self.close,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self._client_removed

    def register(self, comm: Any, msg: lk.SemaphoreRegister) -> None:
        """Make the semaphore, or check that it has the same ``max_leases``."""
        self._semaphore(msg.name, msg.max_leases)

    async def acquire(self, comm: Any, msg: lk.SemaphoreAcquire) -> bool:
        """Take a lease (see :class:`~distributary.protocol.locks.SemaphoreAcquire`)."""
        check_connected(self.scheduler, msg.client)
        semaphore = self._semaphore(msg.name, msg.max_leases)
        lease = Lease(msg.client, msg.lease_timeout)
        if len(semaphore.leases) < semaphore.max_leases and not semaphore.waiting:
            self._grant(semaphore, msg.lease_id, lease)
        elif msg.timeout == 0:
            return False
        else:
            served = await semaphore.waiting.wait(msg.client, msg.timeout, (msg.lease_id, lease))
            if served is not True:  # timed out, or the semaphore was closed
                return False
        if comm.closed():  # nobody is left to hear that it has the lease
            self._free(semaphore, msg.lease_id)
            return False
        return True

    def release(self, comm: Any, msg: lk.SemaphoreRelease) -> bool:
        """Free a lease; False if it is not held."""
        semaphore = self.semaphores.get(msg.name)
        if semaphore is None or msg.lease_id not in semaphore.leases:
            logger.warning(
                "Lease %s of semaphore %r released but not held (timed out already?)",
                msg.lease_id,
                msg.name,
            )
            return False
        self._free(semaphore, msg.lease_id)
        return True

    def refresh(self, comm: Any, msg: lk.SemaphoreRefresh) -> None:
        """Start the lease timeouts of these leases again."""
        semaphore = self.semaphores.get(msg.name)
        leases = semaphore.leases if semaphore is not None else {}
        for lease_id in msg.lease_ids:
            lease = leases.get(lease_id)
            if lease is None:
                logger.warning(
                    "Lease %s of semaphore %r refreshed after it timed out: the semaphore "
                    "may have granted more than its max_leases",
                    lease_id,
                    msg.name,
                )
            else:
                self._set_expiry(semaphore, lease_id, lease)

    def value(self, comm: Any, msg: lk.SemaphoreValue) -> int:
        """The number of leases held."""
        semaphore = self.semaphores.get(msg.name)
        return 0 if semaphore is None else len(semaphore.leases)

    def close(self, comm: Any, msg: lk.SemaphoreClose) -> None:
        """Forget the semaphore: its leases go, and its waiting acquires get False."""
        semaphore = self.semaphores.pop(msg.name, None)
        if semaphore is None:
            return
        if semaphore.leases:
            logger.warning(
                "Semaphore %r closed while %d leases are held", msg.name, len(semaphore.leases)
            )
        for lease in semaphore.leases.values():
            _cancel(lease)
        semaphore.waiting.serve_all(False)

    def stop(self) -> None:
        """Stop every lease timer."""
        for semaphore in self.semaphores.values():
            for lease in semaphore.leases.values():
                _cancel(lease)

    # ------------------------------------------------------------------ leases

    def _semaphore(self, name: Any, max_leases: int) -> SemaphoreRecord:
        semaphore = self.semaphores.get(name)
        if semaphore is None:
            semaphore = self.semaphores[name] = SemaphoreRecord(name, max_leases)
        elif semaphore.max_leases != max_leases:
            raise ValueError(
                f"Inconsistent max leases for semaphore {name!r}: {max_leases}, "
                f"expected: {semaphore.max_leases}"
            )
        return semaphore

    def _grant(self, semaphore: SemaphoreRecord, lease_id: str, lease: Lease) -> None:
        semaphore.leases[lease_id] = lease
        self._set_expiry(semaphore, lease_id, lease)

    def _free(self, semaphore: SemaphoreRecord, lease_id: str) -> None:
        """Free a lease held, and hand it to the first acquire waiting."""
        _cancel(semaphore.leases.pop(lease_id))
        while len(semaphore.leases) < semaphore.max_leases:
            waiter = semaphore.waiting.serve(True)
            if waiter is None:
                return
            self._grant(semaphore, *waiter.detail)

    def _set_expiry(self, semaphore: SemaphoreRecord, lease_id: str, lease: Lease) -> None:
        _cancel(lease)
        if lease.timeout is not None:
            lease.expiry = asyncio.get_running_loop().call_later(
                lease.timeout, self._expire, semaphore, lease_id
            )

    def _expire(self, semaphore: SemaphoreRecord, lease_id: str) -> None:
        logger.warning(
            "Lease %s of semaphore %r timed out: not refreshed for %s s",
            lease_id,
            semaphore.name,
            semaphore.leases[lease_id].timeout,
        )
        self._free(semaphore, lease_id)

    def _client_removed(self, removed: ins.ClientRemoved) -> None:
        for semaphore in self.semaphores.values():
            semaphore.waiting.drop_client(removed.client)
            for lease_id, lease in list(semaphore.leases.items()):
                if lease.client == removed.client:
                    self._free(semaphore, lease_id)


def _cancel(lease: Lease) -> None:
    if lease.expiry is not None:
        lease.expiry.cancel()
        lease.expiry = None
