"""Semaphore: at most ``max_leases`` holders at a time, shared by the whole cluster.

Its state is kept on the scheduler (:mod:`distributary.scheduler.semaphores`).  Each
acquire takes one lease, named by a fresh id, and each release frees the oldest lease
this object took.  While it holds leases, the object refreshes them every fifth of
``distributed.scheduler.locks.lease-timeout`` (from the client's event loop): a lease
not refreshed for that long is freed by the scheduler ("inf": never), and so is every
lease of a client that leaves the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from distributary.client.client import Client
from distributary.client.locks import SharedPrimitive
from distributary.client.shared import ask, wait_seconds
from distributary.protocol import locks as lk

__all__ = ["Semaphore"]

logger = logging.getLogger("distributary.client")


def _lease_timeout() -> float | None:
    """The configured lease timeout in seconds; None for "inf"."""
    value = dask.config.get("distributed.scheduler.locks.lease-timeout")
    return None if value in (None, "inf") else parse_timedelta(value, default="s")


class Semaphore(SharedPrimitive):
    """A semaphore of the cluster: at most ``max_leases`` leases held at once, by name.

    ``name``: the same name is the same semaphore, everywhere (a new, unique name if
    not given); every Semaphore of one name must have the same ``max_leases``.
    ``client``: the client to talk to the scheduler through (by default the one
    ``get_client()`` gives).  ``scheduler_rpc`` and ``loop`` are not supported yet.
    Set ``refresh_leases`` to False and the leases held expire after the lease timeout.
    """

    def __init__(
        self,
        max_leases: int = 1,
        name: Any = None,
        scheduler_rpc: Any = None,
        loop: Any = None,
        client: Client | None = None,
    ):
        for keyword, value in (("scheduler_rpc", scheduler_rpc), ("loop", loop)):
            if value is not None:
                raise NotImplementedError(
                    f"Semaphore({keyword}=...) is not supported yet; pass client= instead"
                )
        if isinstance(max_leases, bool) or not isinstance(max_leases, int):
            raise TypeError(f"max_leases must be an int, not {type(max_leases).__name__}")
        if max_leases < 1:
            raise ValueError(f"max_leases must be 1 or more, not {max_leases}")
        super().__init__(client)
        self.max_leases = max_leases
        self.name = name if name is not None else f"semaphore-{uuid.uuid4().hex}"
        self.refresh_leases = True
        self._leases: deque[str] = deque()  # the lease ids held, oldest first
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._refreshing: asyncio.Task | None = None

    def acquire(self, timeout: Any = None) -> Any:
        """Take a lease: True once taken, False if ``timeout`` (seconds, or text such as
        "200ms") passed first."""
        return self._sync(self._acquire, wait_seconds(timeout))

    async def _acquire(self, client: Client, timeout: float | None) -> bool:
        lease_id = uuid.uuid4().hex
        lease_timeout = _lease_timeout()
        request = lk.SemaphoreAcquire(
            self.name,
            self.max_leases,
            lease_id,
            client.id,
            timeout=timeout,
            lease_timeout=lease_timeout,
        )
        acquired = await ask(client, request)
        if acquired:
            self._leases.append(lease_id)
            if lease_timeout is not None:
                self._refresh_later(lease_timeout / 5)
        return acquired

    def release(self) -> Any:
        """Free the oldest lease this object took: True, or False if it had timed out
        already; RuntimeError if this object holds none."""
        if not self._leases:
            raise RuntimeError(f"{self!r} is released more often than acquired")
        return self._sync(ask, lk.SemaphoreRelease(self.name, self._leases.popleft()))

    def get_value(self) -> Any:
        """The number of leases held now (by anyone)."""
        return self._sync(ask, lk.SemaphoreValue(self.name))

    def register(self) -> Any:
        """Make the semaphore on the scheduler now (acquire does it otherwise);
        ValueError if it exists with another ``max_leases``."""
        return self._sync(ask, lk.SemaphoreRegister(self.name, self.max_leases))

    def close(self) -> Any:
        """Forget the semaphore on the scheduler, with every lease held (by anyone);
        acquires waiting for it return False."""
        self._leases.clear()
        return self._sync(ask, lk.SemaphoreClose(self.name))

    def __await__(self) -> Any:
        self._check_client(True, "'await'")

        async def registered() -> Semaphore:
            await self.register()
            return self

        return registered().__await__()

    # ------------------------------------------------------------------ keeping leases

    def _refresh_later(self, interval: float) -> None:
        if self._refresh_timer is None:
            self._refresh_timer = asyncio.get_running_loop().call_later(
                interval, self._refresh, interval
            )

    def _refresh(self, interval: float) -> None:
        """Refresh the leases held (unless told not to), and again after ``interval``."""
        self._refresh_timer = None
        if not self._leases or self.client.status != "running":
            return
        if self.refresh_leases and (self._refreshing is None or self._refreshing.done()):
            request = lk.SemaphoreRefresh(self.name, tuple(self._leases))
            self._refreshing = asyncio.ensure_future(self._send_refresh(request))
        self._refresh_later(interval)

    async def _send_refresh(self, request: lk.SemaphoreRefresh) -> None:
        try:
            await ask(self.client, request)
        except Exception as exc:  # (the client closing): the next refresh tries again
            logger.debug("Could not refresh the leases of %r: %r", self, exc)

    def __reduce__(self) -> tuple:
        return type(self), (self.max_leases, self.name)

    def __repr__(self) -> str:
        return f"<Semaphore: {self.name!r}, max_leases={self.max_leases}>"
