"""Client methods that are one request (or a few) to the scheduler.

A *scheduler call* is an async function whose first parameter is the client's rpc call
to its scheduler (``await call(request)``) and whose other parameters and docstring are
those of a Client method.  :func:`scheduler_method` makes that method:
``client.name(*args, **kwargs)`` runs ``fn(call, *args, **kwargs)``, blocking, or
awaitable with an asynchronous client.  So each such method is written once, where its
request is made (``client/introspection.py``, ``client/plugins.py``, ...).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

SchedulerCall = Callable[..., Awaitable[Any]]


def named_workers(workers: Any) -> tuple | None:
    """The ``workers=`` of a call as a tuple of addresses, names or hosts (one of them
    alone too); None for all."""
    if workers is None:
        return None
    if isinstance(workers, str | int):
        return (workers,)
    return tuple(workers)


def scheduler_method(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """The Client method running the scheduler call ``fn`` (see the module's docstring)."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        # (bound here: a parameter such as ``timeout`` is the call's, not ``sync``'s)
        return self.sync(functools.partial(fn, self._call_scheduler, *args, **kwargs))

    params = list(inspect.signature(fn).parameters.values())[1:]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
    method.__qualname__ = f"Client.{fn.__name__}"
    del method.__wrapped__  # (its signature is not the method's)
    return method
