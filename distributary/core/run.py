"""Running a user's function inside a server (``Client.run``, ``run_on_scheduler``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from distributary.protocol import requests as rq
from distributary.protocol.errors import RemoteError
from distributary.protocol.serialize import Serialize, deserialize

logger = logging.getLogger("distributary.core")


async def run_function(request: rq.RunFunction, server: Any, name: str) -> rq.Ran:
    """Run the request's function in this event loop, with ``server`` passed as ``name``
    (``dask_worker``, ``dask_scheduler``) if the function takes that parameter.

    What it raises (unpickling included) comes back as the reply's error: the server
    goes on serving.
    """
    try:
        function = deserialize(request.function)
        args = tuple(deserialize(request.args))
        kwargs = dict(deserialize(request.kwargs))
        if takes(function, name):
            kwargs[name] = server
        if inspect.iscoroutinefunction(function):
            if not request.wait:
                task = asyncio.get_running_loop().create_task(function(*args, **kwargs))
                task.add_done_callback(_log_failure)
                return rq.Ran()
            result = await function(*args, **kwargs)
        else:
            result = function(*args, **kwargs)
    except Exception as exc:
        return rq.Ran(error=RemoteError.of(exc).reply())
    return rq.Ran(result=Serialize(result))


def takes(function: Any, name: str) -> bool:
    """Whether ``function`` has a parameter ``name``."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):  # (a builtin without a signature)
        return False


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("A function run without waiting failed", exc_info=task.exception())
