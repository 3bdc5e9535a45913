"""ProcessInterface: the shape of a worker or scheduler that a SpecCluster starts and
closes without it being a Worker, Nanny or Scheduler object of this process (say a
process on another host, as with SSHCluster).

A subclass fills in :meth:`start` (setting ``address``) and :meth:`close`; the base
keeps the status and lets anyone wait for the end (:meth:`finished`), which a subclass
reports with :meth:`_mark_closed` when the thing it runs ends by itself.
"""

from __future__ import annotations

import asyncio
from typing import Any


class ProcessInterface:
    """A worker or scheduler that a SpecCluster starts with ``await obj`` and stops with
    ``await obj.close()``; ``address`` is where it listens once started."""

    def __init__(self, scheduler: str | None = None, name: Any = None):
        self.scheduler = scheduler
        self.name = name
        self.address: str | None = None
        self.external_address: str | None = None
        self.status = "created"
        self._finished: asyncio.Event | None = None

    async def start(self) -> None:
        """Start it; a subclass sets ``address`` and then calls this."""
        self.status = "running"

    async def close(self) -> None:
        """Stop it; a subclass stops what it runs and then calls this."""
        self._mark_closed()

    def _mark_closed(self) -> None:
        self.status = "closed"
        self._event().set()

    async def finished(self) -> None:
        """Wait until it has closed (or what it runs has ended by itself)."""
        await self._event().wait()

    def _event(self) -> asyncio.Event:
        if self._finished is None:
            self._finished = asyncio.Event()
        return self._finished

    def __await__(self):
        async def start() -> ProcessInterface:
            if self.status == "created":
                self.status = "starting"
                try:
                    await self.start()
                except BaseException:
                    await self.close()
                    raise
            return self

        return start().__await__()

    async def __aenter__(self) -> ProcessInterface:
        return await self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: name={self.name!r}, address={self.address!r}, "
            f"status={self.status}>"
        )
