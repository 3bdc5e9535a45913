"""Published datasets, client side: ``Client.publish_dataset``, ``get_dataset`` and friends.

A published value is pickled here with every :class:`Future` in it as a reference to
its key (:mod:`distributary.client.values`): the bytes name keys only, and the
pickler reports exactly which keys they name.  The scheduler stores the bytes
and makes a pseudo-client want those keys (see :mod:`distributary.scheduler.datasets`).

``get_dataset`` unpickles with ``FutureUnpickler``, which turns each reference
back into a Future of *this* client (not of the default client), and then tells the
scheduler on the client's ordered stream that this client wants those keys; they stay
alive while its futures do, even once the dataset is unpublished.

Ordering: publish and unpublish first send a flush marker on the stream and then make
their request over rpc carrying the same ``uid``; the scheduler acts on the
request only once that message has arrived, so the futures created just before (a
``map`` or a ``scatter`` whose messages are still on the stream) are known to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from distributary.client.values import FutureUnpickler, dumps_with_futures
from distributary.protocol import requests as rq

if TYPE_CHECKING:
    from distributary.client.client import Client
    from distributary.client.interface import FutureOwner
    from distributary.client.outbox import Outbox

__all__ = ["NO_DEFAULT", "DatasetRequests", "Datasets"]

NO_DEFAULT = "__no_default__"  # get_dataset without a default raises KeyError


# ---------------------------------------------------------------------- requests


class DatasetRequests:
    """A client's requests about datasets to the scheduler (``Client.publish_dataset``...).

    ``call`` makes an rpc call to the client's scheduler; ``owner`` owns the futures
    that ``get`` makes; ``outbox`` is its ordered stream.
    """

    def __init__(
        self,
        client_id: str,
        owner: FutureOwner,
        outbox: Outbox,
        call: Callable[[dict], Awaitable[Any]],
    ):
        self._client_id = client_id
        self._owner = owner
        self._outbox = outbox
        self._call = call

    async def publish(self, args: tuple, name: Any, override: bool, kwargs: dict) -> None:
        """Publish ``kwargs``' values by name, or ``args`` as ``name`` (see ``Client``)."""
        names = list(kwargs)
        values = list(kwargs.values())
        if name is not None:
            if not args:
                raise ValueError(
                    "If name is provided, expecting call signature like "
                    "publish_dataset(df, name='ds')"
                )
            names.append(name)
            values.append(args[0] if len(args) == 1 else args)
        elif args:
            if len(args) != 1 or not isinstance(args[0], Mapping):
                raise ValueError(
                    "If name is omitted, the positional argument must be a {name: value} dict"
                )
            names.extend(args[0])
            values.extend(args[0].values())
        if not names:
            return
        if len(set(names)) != len(names):
            raise ValueError(f"Dataset names given more than once: {names!r}")
        data = []
        keys = []
        for value in values:
            frames, value_keys = dumps_with_futures(value)
            data.append(frames)
            keys.append(value_keys)
        uid = self._outbox.flush_marker()
        put = rq.PublishPut(
            tuple(names),
            tuple(data),
            tuple(tuple(k) for k in keys),
            override=bool(override),
            client=self._client_id,
            uid=uid,
        )
        await self._call(put)

    async def get(self, name: Any, default: Any = NO_DEFAULT) -> Any:
        """The dataset(s) published as ``name``, with futures of the owner."""
        names = list(name) if isinstance(name, list) else [name]
        self._outbox.check_open()
        replies = await self._call(rq.PublishGet(tuple(names), client=self._client_id))
        # The scheduler made this client want every key of the datasets returned: from
        # here on this client's futures, or the releases below, account for that want.
        outs = []
        wanted: dict = {}
        made: dict = {}
        error: BaseException | None = None
        for each, reply in zip(names, replies):
            if reply is None:
                if default is NO_DEFAULT and error is None:
                    error = KeyError(f"Dataset {each!r} not found")
                outs.append(default)
                continue
            wanted.update(dict.fromkeys(reply.keys))
            if error is not None:
                continue
            unpickler = FutureUnpickler(reply.data.frames, self._owner)
            try:
                outs.append(unpickler.load())
            except Exception as exc:
                error = exc
            made.update(unpickler.futures)
            del unpickler
        if error is not None:
            outs.clear()
            made.clear()  # the futures made so far go, and release their keys
        # No future made here holds these: release them, unless another future does.
        with self._outbox.lock:
            self._outbox.core.release_unheld(key for key in wanted if key not in made)
        self._outbox.schedule_flush()
        if error is not None:
            raise error
        return outs if isinstance(name, list) else outs[0]

    async def names(self) -> list:
        """The names of the published datasets."""
        self._outbox.check_open()
        return list(await self._call(rq.PublishList()))

    async def unpublish(self, name: Any) -> None:
        """Remove the dataset ``name``."""
        uid = self._outbox.flush_marker()
        await self._call(rq.PublishDelete((name,), client=self._client_id, uid=uid))


class Datasets(MutableMapping):
    """The published datasets, as a mapping over a client's dataset methods.

    With an asynchronous client only ``await datasets[name]`` and ``async for`` work.
    """

    __slots__ = ("_client",)

    def __init__(self, client: Client):
        self._client = client

    def __getitem__(self, name: Any) -> Any:
        return self._client.get_dataset(name)

    def __setitem__(self, name: Any, value: Any) -> None:
        self._check_blocking("client.datasets[name] = value", "publish_dataset(value, name=name)")
        self._client.publish_dataset(value, name=name)

    def __delitem__(self, name: Any) -> None:
        self._check_blocking("del client.datasets[name]", "unpublish_dataset(name)")
        if name not in self._client.list_datasets():
            raise KeyError(name)
        self._client.unpublish_dataset(name)

    def __contains__(self, name: object) -> bool:
        self._check_blocking("name in client.datasets", "list_datasets()")
        return name in self._client.list_datasets()

    def __iter__(self) -> Iterator:
        self._check_blocking("iter(client.datasets)", "list_datasets()")
        return iter(self._client.list_datasets())

    def __aiter__(self) -> AsyncIterator:
        if not self._client.asynchronous:
            raise TypeError("Use 'for' rather than 'async for' with a blocking client")

        async def names() -> AsyncIterator:
            for name in await self._client.list_datasets():
                yield name

        return names()

    def __len__(self) -> int:
        self._check_blocking("len(client.datasets)", "list_datasets()")
        return len(self._client.list_datasets())

    def _check_blocking(self, operation: str, instead: str) -> None:
        if self._client.asynchronous:
            raise TypeError(
                f"Can't use '{operation}' with an asynchronous client; "
                f"await client.{instead} instead"
            )

    def __repr__(self) -> str:
        return f"<Datasets of {self._client!r}>"
