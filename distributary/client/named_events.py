"""Event: a named flag shared by every client and task of a cluster (dask's ``Event``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributary.client.shared import SharedObject, ask, seconds
from distributary.protocol import shared as sh

if TYPE_CHECKING:
    from distributary.client.client import Client

__all__ = ["Event"]


class Event(SharedObject):
    """A flag kept by the scheduler, like ``asyncio.Event`` across a cluster.

    The flag starts cleared; ``set()`` releases every ``wait()`` on the event, in any
    client or task, and ``clear()`` makes them wait again.  Every ``Event`` of the same
    ``name`` is the same event; without a name one is made up.  With an asynchronous
    client the methods return awaitables.

    >>> event = Event("ready")  # doctest: +SKIP
    >>> event.wait(timeout=1)  # doctest: +SKIP
    False
    """

    prefix = "event"

    def set(self) -> Any:
        """Set the flag: every waiter is released."""
        return self._sync(ask, sh.EventSet(self.name))

    def clear(self) -> Any:
        """Clear the flag: waiters wait from now on."""
        return self._sync(ask, sh.EventClear(self.name))

    def is_set(self) -> Any:
        """Whether the flag is set."""
        return self._sync(ask, sh.EventIsSet(self.name))

    def wait(self, timeout: Any = None) -> Any:
        """Wait until the flag is set (True), at most ``timeout`` (seconds, or "200ms":
        then False)."""
        return self._sync(self._wait, seconds(timeout))

    async def _wait(self, client: Client, timeout: float | None) -> bool:
        return await client._call_scheduler(sh.EventWait(self.name, timeout, client=client.id))
