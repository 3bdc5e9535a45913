"""Replaying a failure here: ``get_futures_error`` and ``recreate_error_locally``.

The scheduler says which task the failure of a future is blamed on (the future's own,
or the first that failed among what it depends on) and hands back that task's payload
as its client sent it, with the keys of its inputs.  The payload is unpacked here; to
run it again the inputs are fetched as futures of this client (the scheduler computes
them again if their data was released), and the call is made in the caller's thread,
so the exception is raised where a debugger can step into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from dask._task_spec import Task

from distributary.client.calls import SchedulerCall
from distributary.client.future import Future
from distributary.client.structures import collect_futures
from distributary.protocol.data import ErredTask, GetErredTask
from distributary.protocol.tasks import loads_node, loads_task

if TYPE_CHECKING:
    from distributary.client.interface import FutureOwner

Gather = Callable[[Any], Awaitable[Any]]


async def get_futures_error(call: SchedulerCall, future: Any) -> tuple:
    """``(function, args, kwargs, deps)`` of the task blamed for the failure of the
    first erred future in ``futures``; the inputs appear as their keys."""
    erred = await _erred_task(call, future, wait=False)
    if "node" in erred.payload:
        node = loads_node(erred.payload)
        if isinstance(node, Task):
            return node.func, node.args, dict(node.kwargs), list(erred.dependencies)
        return node, (), {}, list(erred.dependencies)
    function, args, kwargs = loads_task(erred.payload, _KeysOf())
    return function, args, kwargs, list(erred.dependencies)


async def erred_call(
    call: SchedulerCall, owner: FutureOwner, gather: Gather, futures: Any
) -> Callable[[], Any]:
    """Once the futures are done, the call of the task blamed for the failure of the
    first erred one, with its inputs fetched: calling it raises the error again."""
    erred = await _erred_task(call, futures, wait=True)
    inputs = {key: Future(key, owner) for key in erred.dependencies}
    data = await gather(inputs)
    if "node" in erred.payload:
        return partial(loads_node(erred.payload), data)
    function, args, kwargs = loads_task(erred.payload, data)
    return partial(function, *args, **kwargs)


async def recreate_error_locally(
    call: SchedulerCall, owner: FutureOwner, gather: Gather, futures: Any
) -> Any:
    """:func:`erred_call`, called (on the event loop of an asynchronous client)."""
    return (await erred_call(call, owner, gather, futures))()


async def _erred_task(call: SchedulerCall, futures: Any, wait: bool) -> ErredTask:
    found = collect_futures(futures)
    if wait:
        for future in found:
            await future._wait()
    keys = tuple(future.key for future in found if future.status == "error")
    if not keys:
        raise ValueError("No erred futures given: none of them failed")
    erred = await call(GetErredTask(keys))
    if erred is None:
        raise ValueError(f"The scheduler knows no failed task behind {list(keys)}")
    return erred


class _KeysOf(dict):
    """Stands for the inputs' data when unpacking a payload: each input is its key."""

    def __missing__(self, key: Any) -> Any:
        return key
