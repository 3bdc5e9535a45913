"""Published datasets, client side: ``Client.publish_dataset``, ``get_dataset`` and friends.

A published value is pickled here, with every :class:`Future` in it pickled as a
persistent reference to its key (:class:`_DatasetPickler`): the bytes name keys only,
and the pickler reports exactly which keys they name.  The scheduler stores the bytes
and makes a pseudo-client want those keys (see :mod:`distributary.scheduler.datasets`).

``get_dataset`` unpickles with :class:`_DatasetUnpickler`, which turns each reference
back into a Future of *this* client (not of the default client), and then tells the
scheduler on the client's ordered stream that this client wants those keys; they stay
alive while its futures do, even once the dataset is unpublished.

Ordering: publish and unpublish first send a flush marker on the stream and then make
their request over rpc carrying the same ``uid``; the scheduler acts on the
request only once that message has arrived, so the futures created just before (a
``map`` or a ``scatter`` whose messages are still on the stream) are known to it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import cloudpickle

from distributary.client.future import Future
from distributary.protocol import requests as rq
from distributary.protocol.serialize import OUT_OF_BAND_THRESHOLD, Serialized

if TYPE_CHECKING:
    from distributary.client.client import Client
    from distributary.client.interface import FutureOwner
    from distributary.client.outbox import Outbox

__all__ = ["NO_DEFAULT", "DatasetRequests", "Datasets"]

NO_DEFAULT = "__no_default__"  # get_dataset without a default raises KeyError
_FUTURE_TAG = "distributary-future"
_MAIN_MARKER = b"__main__"


# ---------------------------------------------------------------------- pickling


def _make_pickler(base: type) -> type:
    class Pickler(base):  # type: ignore[misc, valid-type]
        """Pickle futures as persistent references to their keys, and collect those."""

        def __init__(self, file: Any, buffers: list) -> None:
            def buffer_callback(buf: pickle.PickleBuffer) -> bool:
                raw = buf.raw()
                if raw.nbytes < OUT_OF_BAND_THRESHOLD:
                    return True  # small: in band
                buffers.append(raw)
                return False

            super().__init__(file, protocol=5, buffer_callback=buffer_callback)
            self.keys: dict = {}

        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Future):
                self.keys[obj.key] = None
                return (_FUTURE_TAG, obj.key)
            return None

    return Pickler


_DatasetPickler = _make_pickler(pickle.Pickler)
_DatasetCloudPickler = _make_pickler(cloudpickle.Pickler)
_DatasetPickler.__name__ = _DatasetPickler.__qualname__ = "_DatasetPickler"
_DatasetCloudPickler.__name__ = _DatasetCloudPickler.__qualname__ = "_DatasetCloudPickler"


def dumps_dataset(value: Any) -> tuple[Serialized, list]:
    """Pickle ``value`` into frames; return them and the keys of the futures inside.

    The standard pickler first (fast), cloudpickle when it fails or when the value
    refers to ``__main__`` (which another process cannot import).
    """
    error: Exception | None = None
    for pickler in (_DatasetPickler, _DatasetCloudPickler):
        file = io.BytesIO()
        buffers: list = []
        try:
            p = pickler(file, buffers)
            p.dump(value)
        except Exception as exc:
            error = exc
            continue
        frames = [file.getvalue(), *buffers]
        if pickler is _DatasetPickler and _MAIN_MARKER in frames[0]:
            continue
        return Serialized(frames), list(p.keys)
    raise TypeError(
        f"Could not serialize dataset of type {type(value).__name__}: {error}"
    ) from error


class _DatasetUnpickler(pickle.Unpickler):
    """Unpickle a dataset, making its futures futures of ``client``."""

    def __init__(self, frames: list, client: FutureOwner) -> None:
        super().__init__(io.BytesIO(frames[0]), buffers=frames[1:])
        self.client = client
        self.futures: dict[Any, Future] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _FUTURE_TAG):
            raise pickle.UnpicklingError(f"Unknown persistent reference {pid!r:.100}")
        key = pid[1]
        future = self.futures.get(key)
        if future is None:  # one Future per key: shared references stay shared
            future = self.futures[key] = Future(key, self.client)
        return future


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
            frames, value_keys = dumps_dataset(value)
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
            unpickler = _DatasetUnpickler(reply.data.frames, self._owner)
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
