"""The cluster as a client sees it: its workers, and restarting or retiring them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from dask.utils import parse_timedelta

from distributary.client.state import FutureState
from distributary.client.structures import collect_futures


class ClusterMixin:
    """The cluster methods of :class:`~distributary.client.client.Client`."""

    # provided by Client
    scheduler_address: str | None
    scheduler_file: str | None
    futures: dict[Any, FutureState]
    pool: Any
    sync: Callable[..., Any]

    def scheduler_info(self, **kwargs: Any) -> Any:
        """The scheduler's identity and its workers."""
        return self.sync(self._scheduler_info)

    async def _scheduler_info(self) -> dict:
        return await self.pool.call(self.scheduler_address, {"op": "identity"})

    def nthreads(self, workers: Any = None, **kwargs: Any) -> Any:
        """Threads of each worker, by address."""
        return self.sync(self._nthreads)

    async def _nthreads(self) -> dict:
        info = await self._scheduler_info()
        return {addr: w["nthreads"] for addr, w in info["workers"].items()}

    ncores = nthreads

    def who_has(self, futures: Any = None, **kwargs: Any) -> Any:
        """The workers holding each future's data."""
        return self.sync(self._who_has, futures)

    async def _who_has(self, futures: Any) -> dict:
        keys = (
            [f.key for f in collect_futures(futures)] if futures is not None else list(self.futures)
        )
        return await self.pool.call(self.scheduler_address, {"op": "who-has", "keys": keys})

    def restart(self, timeout: Any = 30, wait_for_workers: bool = True, **kwargs: Any) -> Any:
        """Restart the cluster: kill all work, delete all data, start new worker processes.

        Every future of this client is cancelled; the client stays usable.  Workers
        without a nanny are closed.  With ``wait_for_workers``, return once as many
        workers as had nannies are back (TimeoutError after ``timeout``).
        """
        return self.sync(self._restart, timeout, wait_for_workers)

    async def _restart(self, timeout: Any, wait_for_workers: bool) -> None:
        seconds = parse_timedelta(timeout)
        msg = {"op": "restart", "timeout": seconds, "wait_for_workers": wait_for_workers}
        # The scheduler's stream says which futures the restart cancelled (those asked
        # for before it); that report may come after the reply.
        reported = asyncio.Event()
        self._restart_waiters.add(reported)
        try:
            await self.pool.call(self.scheduler_address, msg, timeout=seconds + 5)
            try:
                await asyncio.wait_for(reported.wait(), 5)
            except asyncio.TimeoutError:
                self._cancel_everything("scheduler-restart")
        finally:
            self._restart_waiters.discard(reported)

    def retire_workers(
        self, workers: list[str] | None = None, close_workers: bool = True, **kwargs: Any
    ) -> Any:
        """Retire workers gracefully: their data moves to the others first, then they close.

        ``workers`` are addresses (or use ``names=[...]``); with neither, the scheduler
        picks workers that can go at little cost.  Returns ``{address: info}`` of the
        workers retired.
        """
        return self.sync(self._retire_workers, workers, close_workers, **kwargs)

    async def _retire_workers(
        self, workers: list[str] | None, close_workers: bool, **kwargs: Any
    ) -> dict:
        msg = {"op": "retire_workers", "workers": workers, "close_workers": close_workers}
        return await self.pool.call(self.scheduler_address, {**msg, **kwargs})

    def write_scheduler_file(self, scheduler_file: str) -> None:
        """Write the scheduler's address to a JSON file that ``Client(scheduler_file=...)``,
        workers and nannies can read."""
        if self.scheduler_file is not None and self.scheduler_file == scheduler_file:
            return
        info = self.sync(self._scheduler_info)
        with open(scheduler_file, "w") as f:
            json.dump({"address": self.scheduler_address, "id": info["id"], "type": "Scheduler"}, f)
        self.scheduler_file = scheduler_file

    def wait_for_workers(self, n_workers: int, timeout: Any = None) -> Any:
        """Block until at least ``n_workers`` workers have joined."""
        return self.sync(self._wait_for_workers, n_workers, timeout=timeout)

    async def _wait_for_workers(self, n_workers: int) -> None:
        delay = 0.01
        while len((await self._scheduler_info())["workers"]) < n_workers:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
