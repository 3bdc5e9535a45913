"""The data on the cluster as a client sees it: where copies are held (``replicate``,
``rebalance``), the metadata kept beside it, and collections that reuse it
(``normalize_collection``, ``get_restrictions``).

Each request goes to the scheduler through ``call`` (an rpc call to the client's
scheduler: ``await call(msg)``); the data moves from worker to worker, never through
the client or the scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask.core import flatten

from distributary.client.calls import SchedulerCall, named_workers
from distributary.client.collections import _restrictions
from distributary.client.future import Future
from distributary.client.structures import collect_futures
from distributary.protocol.data import (
    NO_DEFAULT,
    GetMetadata,
    Placed,
    Rebalance,
    Replicate,
    SetMetadata,
)

if TYPE_CHECKING:
    from distributary.client.interface import FutureOwner
    from distributary.client.outbox import Outbox


def check_options(kwargs: dict, method: str) -> None:
    """TypeError naming the keywords that ``method`` does not take (``asynchronous``,
    which every method of dask.distributed's Client takes, is accepted)."""
    unknown = sorted(set(kwargs) - {"asynchronous"})
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s): {', '.join(unknown)}")


class PlacementRequests:
    """A client's ``replicate`` and ``rebalance``.  ``call`` makes an rpc call to its
    scheduler; each request carries a flush marker sent on the client's ordered stream
    (``outbox``) just before, so that the scheduler acts on it only after what the
    client sent before (data it scattered, say)."""

    def __init__(self, client_id: str, outbox: Outbox, call: SchedulerCall):
        self._client_id = client_id
        self._outbox = outbox
        self._call = call

    async def replicate(
        self, futures: Any, n: int | None, workers: Any, branching_factor: int, **kwargs: Any
    ) -> None:
        """Once the futures are done, have ``n`` copies of their data on ``workers``."""
        check_options(kwargs, "replicate")
        keys = await _finished_keys(futures)
        request = Replicate(
            keys, n, named_workers(workers), branching_factor, **self._after_stream()
        )
        _check(await self._call(request), "replicate")

    async def rebalance(self, futures: Any, workers: Any, **kwargs: Any) -> None:
        """Once the futures are done, even out the bytes held among ``workers``."""
        check_options(kwargs, "rebalance")
        keys = None if futures is None else await _finished_keys(futures)
        request = Rebalance(keys, named_workers(workers), **self._after_stream())
        _check(await self._call(request), "rebalance")

    def _after_stream(self) -> dict:
        return {"client": self._client_id, "uid": self._outbox.flush_marker()}


async def _finished_keys(futures: Any) -> tuple:
    found = collect_futures(futures)
    for future in found:
        await future._wait()
    return tuple(dict.fromkeys(future.key for future in found))


def _check(placed: Placed, operation: str) -> None:
    if placed.status != "OK":
        raise KeyError(
            f"Could not {operation} keys without data (erred, cancelled or lost): "
            f"{list(placed.keys)}"
        )


def _path(keys: Any) -> tuple:
    """A metadata path: a list of keys, or one key (a tuple is one key, as in dask)."""
    return tuple(keys) if isinstance(keys, list) else (keys,)


async def set_metadata(call: SchedulerCall, key: Any, value: Any) -> None:
    """Set the metadata at ``key`` (a list of keys: a path into nested dicts)."""
    await call(SetMetadata(_path(key), value))


async def get_metadata(call: SchedulerCall, keys: Any, default: Any = NO_DEFAULT) -> Any:
    """The metadata at ``keys``; ``default``, or KeyError without one, if there is none.
    (Its sequences, tuples on the wire, come back as the lists they were set as.)"""
    return _lists(await call(GetMetadata(_path(keys), default)))


def _lists(value: Any) -> Any:
    if type(value) is tuple:
        return [_lists(item) for item in value]
    if type(value) is dict:
        return {key: _lists(item) for key, item in value.items()}
    return value


def normalize_collection(owner: FutureOwner, held: Any, collection: Any) -> Any:
    """``collection`` with the tasks of the keys in ``held`` (the keys the client holds
    futures of) replaced by futures of them: computing it reuses their data."""
    graph = dict(collection.__dask_graph__())
    reused = [key for key in graph if key in held and not isinstance(graph[key], Future)]
    if not reused:
        return collection
    graph.update({key: Future(key, owner) for key in reused})
    rebuild, state = collection.__dask_postpersist__()
    return rebuild(graph, *state)


def get_restrictions(collections: Any, workers: Any, allow_other_workers: Any) -> tuple:
    """``({key: workers}, [loose keys])``: the worker restrictions that ``workers`` and
    ``allow_other_workers`` (as ``compute`` and ``persist`` take them) put on the keys
    of ``collections``."""
    items = list(collections)
    outputs = {id(item): list(flatten(item.__dask_keys__())) for item in items}
    per_key = _restrictions(items, outputs, workers, allow_other_workers)
    restrictions = {key: list(options["workers"]) for key, options in per_key.items()}
    loose = [key for key, options in per_key.items() if options["allow_other_workers"]]
    return restrictions, loose
