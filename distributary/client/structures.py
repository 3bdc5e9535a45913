"""Finding futures inside nested lists, tuples, sets and dicts, and putting results back."""

from __future__ import annotations

from typing import Any

from distributary.client.future import Future
from distributary.exceptions import FutureCancelledError


def collect_futures(obj: Any) -> list[Future]:
    """The futures in ``obj`` (nested lists, tuples, sets, dicts), in order, once each."""
    found: dict[int, Future] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Future):
            found.setdefault(id(item), item)
        elif type(item) in (list, tuple, set, frozenset):
            stack.extend(reversed(list(item)))
        elif type(item) is dict:
            stack.extend(reversed(list(item.values())))
        elif hasattr(item, "__dask_graph__"):
            stack.extend(_futures_of_collection(item))
    return list(found.values())


def _futures_of_collection(collection: Any) -> list[Future]:
    graph = collection.__dask_graph__()
    return [v for v in graph.values() if isinstance(v, Future)]


def futures_of(obj: Any, client: Any = None) -> list[Future]:
    """The futures inside ``obj``: nested containers or a persisted dask collection.

    Given a ``client``, a cancelled future among them raises FutureCancelledError.
    """
    futures = collect_futures(obj)
    if client is not None:
        for future in futures:
            if future.cancelled():
                raise FutureCancelledError(future.key, future._state.cancel_reason)
    return futures


def substitute_results(obj: Any, data: dict, skip: set) -> Any:
    """``obj`` with each future replaced by its result; futures in ``skip`` left out."""
    if isinstance(obj, Future):
        return data[obj.key]
    kind = type(obj)
    if kind in (list, tuple, set, frozenset):
        items = [
            substitute_results(item, data, skip)
            for item in obj
            if not (isinstance(item, Future) and item.key in skip)
        ]
        return kind(items)
    if kind is dict:
        return {
            k: substitute_results(v, data, skip)
            for k, v in obj.items()
            if not (isinstance(v, Future) and v.key in skip)
        }
    return obj
