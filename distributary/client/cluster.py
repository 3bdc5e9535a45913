"""The cluster as a client changes it: restarting or retiring its workers, running
functions on them.

Each function makes one kind of request to the scheduler through ``call`` (an rpc
call to the client's scheduler: ``await call(msg)``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from dask.utils import funcname, parse_timedelta

from distributary.client.calls import SchedulerCall, named_workers
from distributary.protocol import requests as rq
from distributary.protocol.errors import RemoteError
from distributary.protocol.serialize import deserialize, serialize


async def restart(
    call: SchedulerCall,
    timeout: Any,
    wait_for_workers: bool,
    waiters: set[asyncio.Event],
    cancel_everything: Callable[[str], None],
    cluster: Any = None,
) -> None:
    """Restart the cluster; return once the client's stream reported it, and the client's
    ``cluster`` object (if any) has started workers in place of those the restart
    closed (its in-process workers, which have no nanny to restart them).

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
    if cluster is not None and hasattr(cluster, "worker_spec"):
        await asyncio.wait_for(
            _call_cluster(cluster, cluster.scale, len(cluster.worker_spec)), seconds
        )


async def shutdown(
    call: SchedulerCall, cluster: Any, close_client: Callable[[], Awaitable]
) -> None:
    """Close the scheduler and its workers, and the client (``close_client``): through
    the ``cluster`` object if there is one, else by asking the scheduler to close."""
    if cluster is None:
        await call(rq.Terminate())
        await close_client()
        return
    await close_client()  # (first: losing the scheduler then is no surprise)
    await _call_cluster(cluster, cluster.close)


async def _call_cluster(cluster: Any, method: Callable, *args: Any) -> None:
    """Call a method of a cluster object: awaited if it is asynchronous, else in a thread
    (a blocking cluster waits for its work on this very event loop)."""
    if cluster.asynchronous:
        await method(*args)
    else:
        await asyncio.get_running_loop().run_in_executor(None, method, *args)


async def retire_workers(
    call: SchedulerCall,
    workers: list[str] | None = None,
    close_workers: bool = True,
    **kwargs: Any,
) -> dict:
    """Retire workers gracefully: their data moves to the others first, then they close.

    ``workers`` are addresses (or use ``names=[...]``); with neither, the scheduler
    picks workers that can go at little cost.  Returns ``{address: info}`` of the
    workers retired.  The other keywords are those of
    :class:`~distributary.protocol.requests.RetireWorkers` (TypeError for another).
    """
    named = None if workers is None else tuple(workers)
    return await call(rq.RetireWorkers(workers=named, close_workers=close_workers, **kwargs))


async def wait_for_workers(call: SchedulerCall, n_workers: int = 0, timeout: Any = None) -> None:
    """Block until at least ``n_workers`` workers have joined (the scheduler answers
    then); TimeoutError after ``timeout``."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0:
        raise ValueError(f"n_workers must be a whole number of workers, not {n_workers!r}")
    await call(rq.WaitForWorkers(n_workers, timeout))


_ON_ERROR = ("raise", "return", "ignore")


def run_request(function: Any, args: tuple, kwargs: dict, **options: Any) -> rq.Request:
    """The request to run ``function`` remotely: ``RunOnWorkers`` given ``options``
    (workers, nanny, wait), else ``RunFunction`` (on the scheduler); each part pickled
    here, so that what cannot be pickled is a TypeError naming it at once."""
    if not callable(function):
        raise TypeError(f"run needs a callable, not {type(function).__name__}")
    parts = {}
    for name, value in (("function", function), ("args", args), ("kwargs", kwargs)):
        try:
            parts[name] = serialize(value)
        except Exception as exc:
            raise TypeError(f"Could not pickle the {name} of {funcname(function)}: {exc}") from exc
    if options:
        return rq.RunOnWorkers(**parts, **options)
    return rq.RunFunction(**parts)


async def run(
    call: SchedulerCall,
    function: Any,
    *args: Any,
    workers: Any = None,
    wait: bool = True,
    nanny: bool = False,
    on_error: str = "raise",
    **kwargs: Any,
) -> dict[str, Any] | None:
    """Run ``function(*args, **kwargs)`` on every worker (or those in ``workers``:
    addresses, names or hosts), in its event loop; ``{address: result}``.

    A function taking ``dask_worker`` gets the worker (the nanny with ``nanny=True``).
    A coroutine function is awaited there, or only started with ``wait=False`` (None
    is returned).  What a worker raises is raised here (``on_error="raise"``), returned
    in place of its result ("return"), or that worker left out ("ignore").
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")
    named = named_workers(workers)
    request = run_request(function, args, kwargs, workers=named, nanny=nanny, wait=wait)
    results = {}
    for address, ran in (await call(request)).items():
        if ran.error is None:
            results[address] = deserialize(ran.result)
        elif on_error == "raise":
            raise RemoteError.from_reply(ran.error).rebuild()
        elif on_error == "return":
            results[address] = RemoteError.from_reply(ran.error).rebuild()
    return results if request.wait else None


async def run_on_scheduler(call: SchedulerCall, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` in the scheduler's event loop and return what it
    gives (what it raises is raised here); a function taking ``dask_scheduler`` gets the
    scheduler."""
    ran = await call(run_request(function, args, kwargs))
    if ran.error is not None:
        raise RemoteError.from_reply(ran.error).rebuild()
    return deserialize(ran.result)


def write_scheduler_file(path: str, address: str | None, info: dict) -> None:
    """Write the scheduler's address and id (from ``info``) to a JSON file."""
    with open(path, "w") as f:
        json.dump({"address": address, "id": info["id"], "type": "Scheduler"}, f)
