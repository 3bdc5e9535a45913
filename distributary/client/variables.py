"""Variable: a named value shared by every client and task of a cluster."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from distributary.client.shared import (
    SharedObject,
    ask,
    dumps_value,
    flush_marker,
    loads_values,
    seconds,
)
from distributary.protocol import shared as sh

if TYPE_CHECKING:
    from distributary.client.client import Client

__all__ = ["Variable"]


class Variable(SharedObject):
    """A mutable value kept by the scheduler, that any client or task can set and get.

    Every ``Variable`` of the same ``name`` is the same variable; without a name one is
    made up.  The value is any picklable object; the futures inside it keep their data
    until the variable is set to something else or deleted, and come out as futures
    of the client that gets them.  Values travel through the scheduler: share big data
    as the futures of ``client.scatter``.  ``maxsize`` is as dask.distributed documents
    it: 0 (a variable holds one value; another size is a ValueError).  With an
    asynchronous client the methods return awaitables.

    >>> x = Variable("x")  # doctest: +SKIP
    >>> x.set(123)  # doctest: +SKIP
    >>> x.get()  # doctest: +SKIP
    123
    """

    prefix = "variable"

    def __init__(self, name: Any = None, client: Client | None = None, maxsize: int = 0):
        if maxsize != 0:
            raise ValueError(f"A Variable holds one value: maxsize must be 0, not {maxsize!r}")
        super().__init__(name, client)

    def set(self, value: Any, timeout: Any = "30 s") -> Any:
        """Set the value (for every client and task).

        ``timeout``: how long the scheduler waits for this client's earlier messages
        (the tasks of the futures in ``value``) before giving up with TimeoutError.
        """
        return self._sync(self._set, value, seconds(timeout))

    async def _set(self, client: Client, value: Any, timeout: float | None) -> None:
        # (pickled here: ``value`` holds its futures until the scheduler holds their keys)
        data, keys = dumps_value(value)
        uid = flush_marker(client, keys)
        await client._call_scheduler(
            sh.VariableSet(self.name, data, keys, timeout, client=client.id, uid=uid)
        )

    def get(self, timeout: Any = None) -> Any:
        """The value; if none is set, wait for one, at most ``timeout`` (seconds, or
        "200ms"), then raise TimeoutError."""
        return self._sync(self._get, seconds(timeout))

    async def _get(self, client: Client, timeout: float | None) -> Any:
        reply = await client._call_scheduler(sh.VariableGet(self.name, timeout, client=client.id))
        return loads_values(client, [reply])[0]

    def delete(self) -> Any:
        """Delete the value (for every client and task); its futures' data goes unless
        somebody else holds them.  With an asynchronous client it is done even if the
        result is not awaited, as in dask.distributed."""
        result = self._sync(ask, sh.VariableDelete(self.name))
        return asyncio.ensure_future(result) if asyncio.iscoroutine(result) else result
