"""What the objects shared through the scheduler (``Queue``, ``Variable``, ``Event``,
``Pub``, ``Sub``) have in common on the client side.

Each is a handle on state the scheduler keeps under a name: many handles (in many
clients and tasks) of one name are the same object.  A handle pickles as its name, so
it can be passed to tasks, where it uses the worker's client (``get_client()``).

Values (queue items, variables' values) are pickled here with every Future inside as
a reference to its key, as published datasets are (:func:`dumps_value`), while the
caller still holds the value; a request storing a value that holds futures first sends
a flush marker on the client's stream (:func:`flush_marker`), so that the scheduler
knows their keys when it acts.  A value got back becomes a value with Futures of the
getting client (:func:`loads_values`), whose keys the scheduler holds for it until it
confirms on its stream, after asking for those keys itself.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from dask.utils import parse_timedelta

from distributary.client.in_task import get_client
from distributary.client.values import FutureUnpickler, dumps_with_futures
from distributary.protocol.requests import Request
from distributary.protocol.serialize import Serialized
from distributary.protocol.shared import SharedValue, SharedValuesReceived

if TYPE_CHECKING:
    from distributary.client.client import Client


class ClientBound:
    """Talks to the scheduler through a client: the one given, or else the one
    ``get_client()`` gives where the object is first used (in a task: the worker's)."""

    def __init__(self, client: Client | None = None):
        self._client = client

    @property
    def client(self) -> Client | None:
        """The client this object talks to the scheduler through (None if there is none)."""
        if self._client is None:
            try:
                self._client = get_client()
            except ValueError:
                pass
        return self._client

    def _sync(self, func: Callable, *args: Any) -> Any:
        """``func(client, *args)`` on the client's loop (awaitable with an asynchronous
        client); RuntimeError without a client, or with a closed one."""
        client = self._bound_client()
        client._check_open()
        return client.sync(func, client, *args)

    def _bound_client(self) -> Client:
        client = self.client
        if client is None:
            raise RuntimeError(
                f"{self!r} has no client: start a Client first, or pass client= "
                "(inside a task the worker's client is used)"
            )
        return client


class SharedObject(ClientBound):
    """Base of the handles on named objects whose state the scheduler keeps."""

    prefix: ClassVar[str] = "shared"  # of the names made up for unnamed objects

    def __init__(self, name: Any = None, client: Client | None = None):
        super().__init__(client)
        self.name = check_name(name) if name is not None else f"{self.prefix}-{uuid.uuid4().hex}"

    def __await__(self):
        async def itself() -> SharedObject:
            return self

        return itself().__await__()

    def __reduce__(self) -> tuple:
        return (type(self), (self.name,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name!r}>"


async def ask(client: Client, request: Request) -> Any:
    """The scheduler's reply to ``request``."""
    return await client._call_scheduler(request)


async def awaited(result: Any) -> Any:
    """``result``, awaited if it is awaitable (what ``_sync`` gives, either way)."""
    return await result if inspect.isawaitable(result) else result


def check_name(name: Any) -> Any:
    """The name of a shared object: a str, bytes, int, float or tuple of these (a list
    is taken as a tuple); TypeError otherwise."""
    if isinstance(name, list):
        name = tuple(name)
    if not _is_key(name):
        raise TypeError(
            "The name of a shared object must be a str, bytes, int, float or a tuple of "
            f"these, not {type(name).__name__}"
        )
    return name


def _is_key(name: Any) -> bool:
    if isinstance(name, tuple):
        return all(_is_key(part) for part in name)
    return isinstance(name, str | bytes | int | float)


def seconds(timeout: Any) -> float | None:
    """A timeout in seconds (from a number, a timedelta or dask's "200ms"), or None;
    ValueError for a negative one."""
    value = _parsed_seconds(timeout)
    if value is not None and value < 0:
        raise ValueError(f"timeout must not be negative, got {timeout!r}")
    return value


def wait_seconds(timeout: Any) -> float | None:
    """How long an acquire may wait: ``timeout`` as seconds, not below zero; None for
    no limit."""
    value = _parsed_seconds(timeout)
    return None if value is None else max(0.0, value)


def _parsed_seconds(timeout: Any) -> float | None:
    if timeout is None or isinstance(timeout, int | float):
        return timeout
    return parse_timedelta(timeout)


def dumps_value(value: Any) -> tuple[Serialized, tuple]:
    """``value`` pickled, and the keys of the futures inside it."""
    data, keys = dumps_with_futures(value)
    return data, tuple(keys)


def flush_marker(client: Client, keys: tuple) -> str | None:
    """Send a flush marker on the client's stream if ``keys`` (of futures in a value
    about to be stored) is not empty: the uid for the request storing the value."""
    return client._outbox.flush_marker() if keys else None


def loads_values(client: Client, replies: Iterable[SharedValue]) -> list:
    """The values of ``replies``, their futures futures of ``client``.

    Then the client tells the scheduler, on its stream after its desires of the keys
    it did not hold yet, that the pseudo-clients holding the keys for it may go
    (also when a value fails to unpickle, which raises here).
    """
    values = []
    receipts = []
    error: Exception | None = None
    for reply in replies:
        if reply.receipt is not None:
            receipts.append(reply.receipt)
        if error is not None:
            continue
        try:
            values.append(FutureUnpickler(reply.data.frames, client).load())
        except Exception as exc:
            error = exc
    if receipts:
        client._send(SharedValuesReceived, receipts=tuple(receipts))
    if error is not None:
        values.clear()
        raise error
    return values
