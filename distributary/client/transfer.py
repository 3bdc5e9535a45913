"""Data to and from the workers: a client's ``gather`` and ``scatter``.

Results are fetched from the workers that hold them (asking the scheduler who has a
key when the client does not know); scattered data goes straight to the workers, and
the scheduler learns of it on the client's ordered stream.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from dask.base import tokenize
from dask.utils import parse_timedelta

from distributary.client.future import Future
from distributary.client.interface import FutureOwner
from distributary.client.introspection import scheduler_info
from distributary.client.outbox import Outbox
from distributary.client.state import FutureState
from distributary.client.structures import collect_futures, substitute_results
from distributary.comm.addressing import normalize_address
from distributary.core import ConnectionPool
from distributary.exceptions import FutureLostError
from distributary.protocol import requests as rq
from distributary.protocol.serialize import Serialize, deserialize


class DataTransfer:
    """Gathering results from, and scattering data to, the workers for one client.

    ``owner`` owns the futures made; ``outbox`` is its state and stream; ``pool``
    reaches the workers and ``call_scheduler`` makes an rpc call to the scheduler;
    ``timeout`` bounds the wait for workers to scatter to.
    """

    def __init__(
        self,
        owner: FutureOwner,
        outbox: Outbox,
        pool: ConnectionPool,
        call_scheduler: Callable[..., Awaitable[Any]],
        timeout: float,
    ):
        self._owner = owner
        self._outbox = outbox
        self._pool = pool
        self._call_scheduler = call_scheduler
        self._timeout = timeout

    async def gather(self, futures: Any, errors: str = "raise") -> Any:
        """The results of the futures in ``futures``, in the same nesting."""
        found = collect_futures(futures)
        for future in found:
            await future._wait()
        bad = set()
        for future in found:
            if future.status == "finished":
                continue
            if errors == "raise":
                await future._result()
            bad.add(future.key)
        records = {f.key: f._state for f in found if f.key not in bad}
        data = await self._fetch(records)
        return substitute_results(futures, data, bad)

    async def gather_one(self, future: Future) -> Any:
        """The result of one finished future."""
        return (await self._fetch({future.key: future._state}))[future.key]

    async def _fetch(self, records: dict[Any, FutureState]) -> dict:
        """Get the data of finished keys (``{key: record}``) from the workers holding it."""
        results: dict = {}
        missing = list(records)
        for attempt in range(10):
            by_worker: dict[str, list] = {}
            unknown = []
            for key in missing:
                workers = records[key].workers
                if workers:
                    by_worker.setdefault(workers[0], []).append(key)
                else:
                    unknown.append(key)
            if unknown:
                who_has = await self._call_scheduler(rq.WhoHas(tuple(unknown)))
                for key, holders in who_has.items():
                    if holders:
                        by_worker.setdefault(holders[0], []).append(key)
            replies = await asyncio.gather(
                *(self._get_data(worker, wanted) for worker, wanted in by_worker.items())
            )
            for reply in replies:
                results.update(reply)
            missing = [key for key in missing if key not in results]
            if not missing:
                return results
            for key in missing:
                records[key].workers = ()
            await asyncio.sleep(0.01 * 2**attempt)
            for key in missing:
                await self._outbox.wait_for(records[key])
                if records[key].status in ("error", "cancelled"):
                    raise FutureLostError(key)
        raise FutureLostError(missing[0])

    async def _get_data(self, worker: str, keys: list) -> dict:
        try:
            reply = await self._pool.call(worker, rq.GetData(tuple(keys)))
        except OSError:
            return {}
        return {key: deserialize(value) for key, value in reply.data.items()}

    async def scatter(
        self, data: Any, workers: Any, broadcast: bool | int, hash: bool, timeout: Any
    ) -> Any:
        """Move ``data`` to ``workers`` (addresses, names or ``(host, port)``; all when
        None): each item to the next worker in turn, or with ``broadcast`` to every one
        (to that many, given a number); futures of it, shaped like it."""
        self._outbox.check_open()
        if isinstance(data, dict):
            items = dict(data)
        else:
            single = not isinstance(data, list | tuple | set | frozenset | Iterator)
            values = [data] if single else list(data)
            names = [
                f"{type(v).__name__}-{tokenize(v) if hash else uuid.uuid4().hex}" for v in values
            ]
            items = dict(zip(names, values))
        targets = await self._scatter_targets(workers, timeout)
        copies = len(targets) if broadcast is True else min(max(int(broadcast), 1), len(targets))
        placement: dict[str, dict] = {}
        for i, (key, value) in enumerate(items.items()):
            for worker in (targets[(i + j) % len(targets)] for j in range(copies)):
                placement.setdefault(worker, {})[key] = value
        who_has: dict = {}
        nbytes: dict = {}
        types: dict = {}
        for worker, chunk in placement.items():
            reply = await self._pool.call(
                worker,
                rq.UpdateData({k: Serialize(v) for k, v in chunk.items()}),
            )
            for key in chunk:
                who_has.setdefault(key, []).append(worker)
            nbytes.update(reply.nbytes)
            types.update(reply.types)
        self._outbox.check_open()
        with self._outbox.lock:
            self._outbox.count_dropped()
            done = self._outbox.core.scattered(who_has, nbytes, types)
            records, _ = self._outbox.core.claim(items)
        self._outbox.schedule_flush()
        self._outbox.wake(done)
        futures = {key: Future(key, self._owner, record) for key, record in zip(items, records)}
        if isinstance(data, dict):
            return futures
        result = list(futures.values())
        return result[0] if single else result

    async def _scatter_targets(self, workers: Any, timeout: Any) -> list[str]:
        deadline = asyncio.get_running_loop().time() + (
            parse_timedelta(timeout) if timeout is not None else self._timeout
        )
        while True:
            info = await scheduler_info(self._call_scheduler)
            available = info["workers"]
            if workers is not None:
                wanted = [workers] if isinstance(workers, str) else list(workers)
                by_name = {w["name"]: a for a, w in available.items()}
                targets = [by_name.get(w) or _address(w) for w in wanted]
                targets = [t for t in targets if t in available]
            else:
                targets = sorted(available)
            if targets:
                return targets
            if asyncio.get_running_loop().time() > deadline:
                among = "" if workers is None else f" among {workers!r}"
                raise TimeoutError(f"No workers to scatter data to{among}")
            await asyncio.sleep(0.05)


def _address(worker: Any) -> Any:
    """A worker's address from an address or ``(host, port)`` (as given when it is not)."""
    try:
        return normalize_address(worker)
    except (TypeError, ValueError):
        return worker
