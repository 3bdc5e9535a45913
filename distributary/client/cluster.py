"""The cluster as a client sees it: its workers, and restarting or retiring them.

Each function makes one kind of request to the scheduler through ``call`` (an rpc
call to the client's scheduler: ``await call(msg)``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from dask.utils import parse_timedelta

from distributary.client.structures import collect_futures
from distributary.protocol import requests as rq

SchedulerCall = Callable[..., Awaitable[Any]]


async def scheduler_info(call: SchedulerCall) -> dict:
    """The scheduler's identity and its workers."""
    return await call(rq.Identity())


async def nthreads(call: SchedulerCall) -> dict:
    """Threads of each worker, by address."""
    info = await scheduler_info(call)
    return {addr: w["nthreads"] for addr, w in info["workers"].items()}


async def who_has(call: SchedulerCall, futures: Any, held: Iterable) -> dict:
    """The workers holding the data of each future in ``futures`` (of each key ``held``
    by the client, if ``futures`` is None)."""
    keys = [f.key for f in collect_futures(futures)] if futures is not None else list(held)
    return await call(rq.WhoHas(tuple(keys)))


async def restart(
    call: SchedulerCall,
    timeout: Any,
    wait_for_workers: bool,
    waiters: set[asyncio.Event],
    cancel_everything: Callable[[str], None],
) -> None:
    """Restart the cluster; return once the client's stream reported it.

    The client sets every event in ``waiters`` when its stream reports a restart;
    without that report 5 s after the reply, ``cancel_everything`` is called.
    """
    seconds = parse_timedelta(timeout)
    msg = rq.Restart(seconds, wait_for_workers)
    # The scheduler's stream says which futures the restart cancelled (those asked
    # for before it); that report may come after the reply.
    reported = asyncio.Event()
    waiters.add(reported)
    try:
        await call(msg, timeout=seconds + 5)
        try:
            await asyncio.wait_for(reported.wait(), 5)
        except asyncio.TimeoutError:
            cancel_everything("scheduler-restart")
    finally:
        waiters.discard(reported)


async def retire_workers(
    call: SchedulerCall, workers: list[str] | None, close_workers: bool, **kwargs: Any
) -> dict:
    """Retire workers gracefully; ``{address: info}`` of those retired.  ``kwargs`` are
    those of :class:`~distributary.protocol.requests.RetireWorkers` (TypeError for
    another)."""
    named = None if workers is None else tuple(workers)
    return await call(rq.RetireWorkers(workers=named, close_workers=close_workers, **kwargs))


async def wait_for_workers(call: SchedulerCall, n_workers: int, timeout: Any = None) -> None:
    """Until at least ``n_workers`` workers have joined (the scheduler answers then);
    TimeoutError after ``timeout``."""
    await call(rq.WaitForWorkers(n_workers, timeout))


def write_scheduler_file(path: str, address: str | None, info: dict) -> None:
    """Write the scheduler's address and id (from ``info``) to a JSON file."""
    with open(path, "w") as f:
        json.dump({"address": address, "id": info["id"], "type": "Scheduler"}, f)
