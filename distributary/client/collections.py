"""Running dask graphs and collections on the cluster: ``get``, ``compute``, ``persist``.

A :class:`GraphRunner` does the work of these ``Client`` methods: it materialises and
orders the graph with dask's own functions (see :mod:`distributary.client.graphs`) and
sends it in parts, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask import delayed
from dask.base import collections_to_expr, is_dask_collection, unpack_collections
from dask.core import flatten

from distributary.client.future import Future
from distributary.client.graphs import (
    GraphError,
    graph_parts,
    materialize,
    needed_nodes,
    part_size,
    task_options,
)
from distributary.client.state import PendingGraph
from distributary.protocol.errors import RemoteError
from distributary.utils.gc_pause import gc_paused

if TYPE_CHECKING:
    from distributary.client.interface import FutureOwner
    from distributary.client.outbox import Outbox

# Graphs with at least this many tasks are ordered and pickled in a thread, so that
# ``compute`` returns as soon as the graph is checked; smaller ones are pickled at once.
BACKGROUND_NODES = 10_000


class GraphRunner:
    """Sends dask graphs and collections for one client: ``get``, ``compute``, ``persist``.

    ``owner`` owns the futures made; ``outbox`` is its state and stream; ``gather``
    is the client's ``gather``, for ``sync=True``.
    """

    def __init__(self, owner: FutureOwner, outbox: Outbox, gather: Callable[..., Any]):
        self._owner = owner
        self._outbox = outbox
        self._gather = gather

    def graph_to_futures(
        self,
        graph: Any,
        keys: list,
        priority: tuple = (0,),
        workers: Any = None,
        allow_other_workers: bool | None = None,
        resources: dict | None = None,
        retries: int | None = None,
        per_key: dict | None = None,
    ) -> dict[Any, Future]:
        """Send what ``keys`` need of ``graph``; return a future for each key.

        ``workers`` restricts every task; ``per_key`` maps keys to options of their own.
        """
        self._outbox.check_open()
        options = task_options(workers, resources, retries, bool(allow_other_workers))
        # Checked here, so that a bad graph raises before anything is sent.
        with gc_paused():
            nodes = needed_nodes(materialize(graph), keys, self._known)
        background = len(nodes) >= BACKGROUND_NODES
        with self._outbox.lock:  # held while deciding what to send, and queueing it
            self._outbox.count_dropped()
            records, new = self._outbox.core.claim(keys)
            to_want = set(new)
            pending = PendingGraph(to_want, {k: r for k, r in zip(keys, records) if k in to_want})
            lost = [key for key in new if key not in nodes]  # (released since the check)
            if lost:
                error = GraphError(f"Key {lost[0]!r} is not in the graph")
                self._outbox.core.abandon(keys, pending, RemoteError.of(error))
                raise error
            # the rest of the graph: sent unless this client holds it
            send = [key for key in nodes if key in to_want or not self._outbox.core.holds(key)]
            if send:
                self._outbox.core.outbox.append(pending)
        if send:
            size = part_size()
            parts: Any = graph_parts(nodes, send, to_want, priority, options, per_key, size)
            if not background:
                with gc_paused():  # (an unpicklable task raises here, with nothing sent)
                    try:
                        parts = list(parts)
                    except BaseException as exc:
                        with self._outbox.lock:
                            done = self._outbox.core.abandon(keys, pending, RemoteError.of(exc))
                        pending.done = True
                        self._outbox.wake_soon(done)
                        self._outbox.schedule_flush()
                        raise
            self._outbox.send_graph(pending, parts, keys, background)
        return {key: Future(key, self._owner, record) for key, record in zip(keys, records)}

    def _known(self, key: Any) -> bool:
        """Whether ``key``, named by a graph but not in it, is on the cluster for us."""
        return self._outbox.core.holds(key) or key in self._outbox.core.refcount

    def get(
        self,
        dsk: Any,
        keys: Any,
        *,
        sync: bool,
        asynchronous: bool | None,
        workers: Any,
        allow_other_workers: bool | None,
        per_key: dict | None,
        resources: dict | None,
        retries: int | None,
        priority: tuple,
    ) -> Any:
        """``Client.get``: the results (or futures) of ``keys``, shaped like ``keys``."""
        wanted = list(flatten([keys]))  # [keys]: a lone tuple key is one key, not a list
        futures = self.graph_to_futures(
            dsk, wanted, priority, workers, allow_other_workers, resources, retries, per_key
        )
        packed = _pack(keys, futures)
        return self._gather(packed, asynchronous=asynchronous) if sync else packed

    def compute(
        self,
        collections: Any,
        *,
        sync: bool,
        optimize_graph: bool,
        workers: Any,
        allow_other_workers: Any,
        resources: dict | None,
        retries: int | None,
        priority: tuple,
        traverse: bool,
    ) -> Any:
        """``Client.compute``: a future (or result) per collection."""
        single = not isinstance(collections, list | tuple | set | frozenset)
        items = [collections] if single else list(collections)
        if traverse:  # dask objects inside lists, tuples, sets, dicts: compute those too
            items = [_delayed_if_holding_dask(item) for item in items]
        dask_items = [item for item in items if is_dask_collection(item)]
        futures: dict = {}
        if dask_items:
            from dask._expr import FinalizeCompute

            expr = FinalizeCompute(collections_to_expr(dask_items, optimize_graph)).optimize()
            keys = _keys_per_collection(expr, len(dask_items))
            final_keys = [list(flatten(k))[0] for k in keys]
            # (a collection's own keys, if the optimized graph kept them, and its result)
            outputs = {
                id(item): [*flatten(item.__dask_keys__()), key]
                for item, key in zip(dask_items, final_keys)
            }
            per_key = _restrictions(dask_items, outputs, workers, allow_other_workers)
            by_key = self.graph_to_futures(
                expr, final_keys, priority, None, None, resources, retries, per_key
            )
            futures = {id(item): by_key[key] for item, key in zip(dask_items, final_keys)}
        results = [futures.get(id(item), item) for item in items]
        if sync:
            results = self._gather(results)
        return results[0] if single else results

    def persist(
        self,
        collections: Any,
        *,
        optimize_graph: bool,
        workers: Any,
        allow_other_workers: Any,
        resources: dict | None,
        retries: int | None,
        priority: tuple,
    ) -> Any:
        """``Client.persist``: the collections, backed by futures on the cluster."""
        single = not isinstance(collections, list | tuple)
        items = [collections] if single else list(collections)
        dask_items = [item for item in items if is_dask_collection(item)]
        rebuilt: dict = {}
        if dask_items:
            expr = collections_to_expr(dask_items, optimize_graph).optimize()
            keys = [list(flatten(k)) for k in _keys_per_collection(expr, len(dask_items))]
            outputs = {id(item): item_keys for item, item_keys in zip(dask_items, keys)}
            per_key = _restrictions(dask_items, outputs, workers, allow_other_workers)
            futures = self.graph_to_futures(
                expr,
                [key for ks in keys for key in ks],
                priority,
                None,
                None,
                resources,
                retries,
                per_key,
            )
            for item, item_keys in zip(dask_items, keys):
                rebuild, state = item.__dask_postpersist__()
                rebuilt[id(item)] = rebuild({key: futures[key] for key in item_keys}, *state)
        results = [rebuilt.get(id(item), item) for item in items]
        return results[0] if single else results


def _restrictions(
    items: list, outputs: dict[int, list], workers: Any, allow_other_workers: Any
) -> dict:
    """``{key: {"workers": (...), "allow_other_workers": bool}}`` for the output keys of
    the collections that ``workers`` names.

    ``workers`` is an address (or name, or host), a list of them (for every collection),
    or a dict from a collection (or a tuple of collections) to addresses.  Only the
    collections' own output keys are restricted; what they are computed from may run
    anywhere.  ``allow_other_workers`` is True (every restriction is loose) or a list of
    the collections whose restrictions are loose.
    """
    if workers is None:
        return {}
    # (collections are keys of a dict only if they are hashable, which arrays are not)
    pairs = workers.items() if isinstance(workers, dict) else [(tuple(items), workers)]
    restricted: dict[Any, tuple] = {}
    for collections, addresses in pairs:
        addresses = (addresses,) if isinstance(addresses, str) else tuple(addresses)
        for key in _output_keys(collections, outputs):
            restricted[key] = addresses
    if allow_other_workers is True:
        loose = set(restricted)
    elif allow_other_workers:
        loose = set(_output_keys(tuple(allow_other_workers), outputs))
    else:
        loose = set()
    return {
        key: {"workers": addresses, "allow_other_workers": key in loose}
        for key, addresses in restricted.items()
    }


def _output_keys(collections: Any, outputs: dict[int, list]) -> list:
    """The output keys of a collection, or of a tuple of collections, in this graph."""
    if not isinstance(collections, tuple):
        collections = (collections,)
    keys = []
    for collection in collections:
        if id(collection) not in outputs:
            raise ValueError(f"workers= names {collection!r}, which is not being computed")
        keys.extend(outputs[id(collection)])
    return keys


def _delayed_if_holding_dask(item: Any) -> Any:
    if type(item) in (list, tuple, set, frozenset, dict) and unpack_collections(item)[0]:
        return delayed(item)
    return item


def _keys_per_collection(expr: Any, count: int) -> list:
    keys = expr.__dask_keys__()
    return [keys] if count == 1 else list(keys)


def _pack(keys: Any, futures: dict) -> Any:
    if isinstance(keys, list):
        return [_pack(k, futures) for k in keys]
    return futures[keys]
