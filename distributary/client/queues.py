"""Queue: a first-in first-out queue shared by every client and task of a cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributary.client.shared import (
    SharedObject,
    ask,
    awaited,
    dumps_value,
    flush_marker,
    loads_values,
    seconds,
)
from distributary.protocol import shared as sh
from distributary.utils.loop import in_loop

if TYPE_CHECKING:
    from distributary.client.client import Client

__all__ = ["Queue"]


class Queue(SharedObject):
    """A multi-producer, multi-consumer queue of values, kept by the scheduler.

    Every ``Queue`` of the same ``name`` (in any client or task) is the same queue;
    without a name one is made up.  Items are any picklable values; the futures inside
    them keep their data while they are in the queue, and come out as futures of the
    client that gets them.  Items travel through the scheduler: put big data in with
    ``client.scatter`` and queue the futures.  ``maxsize`` bounds the queue (0: no
    bound) when this ``Queue`` makes it: at once with a blocking client, on ``await
    Queue(...)`` with an asynchronous one, or else with its first use; a ``Queue`` of
    an existing queue uses that queue's bound.  With an asynchronous client the
    methods return awaitables.

    >>> queue = Queue("x")  # doctest: +SKIP
    >>> queue.put(client.submit(inc, 1))  # doctest: +SKIP
    >>> queue.get().result()  # doctest: +SKIP
    2
    """

    prefix = "queue"

    def __init__(self, name: Any = None, client: Client | None = None, maxsize: int = 0):
        super().__init__(name, client)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        self.maxsize = maxsize
        client = self.client if maxsize > 0 else None
        if client is not None and not client.asynchronous and not in_loop(client.loop):
            self._make()  # (with an asynchronous client: on await)

    def __await__(self):
        async def made() -> Queue:
            if self.maxsize > 0:
                await awaited(self._make())
            return self

        return made().__await__()

    def _make(self) -> Any:
        """Make the queue, with this bound, unless it exists."""
        return self._sync(ask, sh.QueueCreate(self.name, self.maxsize))

    def put(self, value: Any, timeout: Any = None) -> Any:
        """Put ``value`` at the end of the queue.

        In a full queue wait for room, at most ``timeout`` (seconds, or "200ms"), then
        raise TimeoutError.
        """
        return self._sync(self._put, value, seconds(timeout))

    async def _put(self, client: Client, value: Any, timeout: float | None) -> None:
        # (pickled here: ``value`` holds its futures until the scheduler holds their keys)
        data, keys = dumps_value(value)
        put = sh.QueuePut(
            self.name,
            data,
            keys,
            maxsize=self.maxsize,
            timeout=timeout,
            client=client.id,
            uid=flush_marker(client, keys),
        )
        await client._call_scheduler(put)

    def get(self, timeout: Any = None, batch: bool | int = False) -> Any:
        """The item at the front of the queue, taken out of it.

        An empty queue is waited on, at most ``timeout`` (seconds, or "200ms"), then
        TimeoutError.  ``batch=True`` returns a list of every item in the queue now (at
        once, maybe none); ``batch=n`` a list of the next ``n`` items, waiting until
        there are ``n`` (all or nothing: a timeout takes none).
        """
        if batch is True:
            count = None
        elif batch is False:
            count = 1
        elif isinstance(batch, int):
            if batch < 0:
                raise ValueError(f"batch must be True, False or a count >= 0, not {batch}")
            count = batch
        else:
            raise TypeError(f"batch must be a bool or an int, not {type(batch).__name__}")
        return self._sync(self._get, seconds(timeout), count, batch is not False)

    async def _get(
        self, client: Client, timeout: float | None, count: int | None, as_list: bool
    ) -> Any:
        get = sh.QueueGet(self.name, count, self.maxsize, timeout, client=client.id)
        values = loads_values(client, await client._call_scheduler(get))
        return values if as_list else values[0]

    def qsize(self) -> Any:
        """The number of items in the queue now."""
        return self._sync(ask, sh.QueueSize(self.name))

    def __reduce__(self) -> tuple:
        # (made with no bound, then given this one's: unpickling asks nothing of the
        # scheduler, which has the queue, or is told the bound by its first request)
        return (Queue, (self.name,), {"maxsize": self.maxsize})
