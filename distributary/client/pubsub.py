"""Pub and Sub: publish messages on a topic, and receive them, from clients and tasks.

Messages go through the scheduler (:mod:`distributary.scheduler.pubsub`): a ``Pub``
sends each one on its client's ordered stream, and a ``Sub`` fetches what the
scheduler buffered for it, all at once, handing the messages out one by one.
"""

from __future__ import annotations

import uuid
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from distributary.client.in_task import get_client
from distributary.client.shared import check_name, seconds
from distributary.protocol import shared as sh
from distributary.protocol.serialize import serialize

if TYPE_CHECKING:
    from distributary.client.client import Client

__all__ = ["Pub", "Sub"]


def _client_for(kind: str, worker: Any, client: Client | None) -> Client:
    if worker is not None:
        raise NotImplementedError(
            f"{kind}(worker=...) is not supported yet: inside a task {kind} uses the "
            "worker's client (get_client()); pass client= to choose another"
        )
    return client if client is not None else get_client()


class Pub:
    """Publish messages on the topic ``name``, to every ``Sub`` of it.

    Each message (any picklable object) reaches the subscribers that exist when it
    arrives at the scheduler, in the order this ``Pub``'s client published them.
    Futures inside messages do not keep their data alive: use a ``Queue`` or a
    ``Variable`` for them.  ``client=None`` means ``get_client()`` (inside a task: the
    worker's client).

    >>> pub = Pub("topic")  # doctest: +SKIP
    >>> sub = Sub("topic")  # doctest: +SKIP
    >>> pub.put([1, 2, 3])  # doctest: +SKIP
    >>> sub.get()  # doctest: +SKIP
    [1, 2, 3]
    """

    def __init__(self, name: Any, worker: Any = None, client: Client | None = None):
        self.name = check_name(name)
        self.client = _client_for("Pub", worker, client)

    def put(self, msg: Any) -> None:
        """Publish ``msg`` to every subscriber of the topic (it does not wait)."""
        self.client._send(sh.PubSubPut, name=self.name, data=serialize(msg))

    def __reduce__(self) -> tuple:
        return (Pub, (self.name,))

    def __repr__(self) -> str:
        return f"<Pub: {self.name!r}>"


class Sub:
    """Receive the messages published on the topic ``name`` from now on.

    ``get(timeout=)`` returns the next message, or raises TimeoutError; ``for msg in
    sub`` (``async for`` with an asynchronous client) iterates over messages forever.
    The scheduler buffers up to 1,000 messages for a subscriber that does not keep up
    and then drops the oldest.  The subscription ends when this object is garbage
    collected or its client closes.  Pickled into a task, it subscribes there anew.
    """

    def __init__(self, name: Any, worker: Any = None, client: Client | None = None):
        self.name = check_name(name)
        self.client = _client_for("Sub", worker, client)
        self._id = uuid.uuid4().hex
        self._buffer: deque = deque()  # fetched from the scheduler, not yet handed out
        self.client._send(sh.PubSubSubscribe, name=self.name, subscriber=self._id)
        weakref.finalize(self, _unsubscribe, self.client, self._id)

    def get(self, timeout: Any = None) -> Any:
        """The next message; if there is none, wait for one, at most ``timeout``
        (seconds, or "200ms"), then raise TimeoutError."""
        self.client._check_open()
        return self.client.sync(self._get, seconds(timeout))

    async def _get(self, timeout: float | None) -> Any:
        while not self._buffer:
            get = sh.PubSubGet(self.name, self._id, timeout, client=self.client.id)
            self._buffer.extend(await self.client._call_scheduler(get))
        return self._buffer.popleft().deserialize()

    def __iter__(self) -> Sub:
        if self.client.asynchronous:
            raise TypeError("Use 'async for' rather than 'for' with an asynchronous client")
        return self

    def __next__(self) -> Any:
        return self.get()

    def __aiter__(self) -> Sub:
        if not self.client.asynchronous:
            raise TypeError("Use 'for' rather than 'async for' with a blocking client")
        return self

    async def __anext__(self) -> Any:
        self.client._check_open()
        return await self._get(None)

    def __reduce__(self) -> tuple:
        return (Sub, (self.name,))

    def __repr__(self) -> str:
        return f"<Sub: {self.name!r}>"


def _unsubscribe(client: Client, sub_id: str) -> None:
    """A Sub was garbage collected: tell the scheduler, from the client's loop (not
    here, where the collector may have interrupted the client in the middle of a step)."""
    if client.status == "running":
        try:
            client.loop.call_soon_threadsafe(_send_unsubscribe, client, sub_id)
        except RuntimeError:
            pass  # the loop is closed: the client, and its subscribers, are gone


def _send_unsubscribe(client: Client, sub_id: str) -> None:
    try:
        client._send(sh.PubSubUnsubscribe, subscriber=sub_id)
    except RuntimeError:
        pass  # the client closed meanwhile, and its subscribers went with it
