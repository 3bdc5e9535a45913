"""``Client.get_executor``: a :class:`concurrent.futures.Executor` over a client.

Its ``submit`` and ``map`` go through the client with the options the executor was
made with.  ``submit`` returns a :class:`concurrent.futures.Future` that follows the
client's future (its result, its exception, its cancellation, both ways), so
``concurrent.futures.wait`` and ``as_completed`` work on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta

from distributary.client import waiting
from distributary.client.future import Future
from distributary.exceptions import TimeoutError
from distributary.utils.loop import sync

if TYPE_CHECKING:
    from distributary.client.client import Client

# The options of Client.submit and Client.map that an executor may be made with.
OPTIONS = frozenset(
    {"pure", "workers", "resources", "allow_other_workers", "retries", "priority", "fifo_timeout"}
)


class ClientExecutor(cf.Executor):
    """A concurrent.futures Executor that runs calls on the cluster of ``client``, with
    ``kwargs`` (options of ``Client.submit``: ``workers``, ``retries``, ...) for each."""

    def __init__(self, client: Client, **kwargs: Any):
        unknown = sorted(set(kwargs) - OPTIONS)
        if unknown:
            raise TypeError(
                f"get_executor() got unsupported argument(s): {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(OPTIONS))})"
            )
        self._client = client
        self._kwargs = kwargs
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; a concurrent.futures Future of it
        (keywords that are options of ``Client.submit`` are taken as those)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = self._client.submit(fn, *args, **{**self._kwargs, **kwargs})
        self._futures.add(future)
        return _follow(future)

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | str | None = None,
        chunksize: int = 1,
    ) -> Iterator:
        """The results of ``fn`` over the iterables, in order; every call is submitted at
        once (``chunksize`` is accepted and not needed: calls go in batches anyway).
        ``timeout`` bounds the whole iteration (concurrent.futures.TimeoutError); the
        calls not yet iterated over are cancelled when the iteration stops early."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + parse_timedelta(timeout)
        futures = self._client.map(fn, *iterables, **self._kwargs)
        self._futures.update(futures)

        def results() -> Iterator:
            remaining = iter(futures)
            try:
                for future in remaining:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0)
                    try:
                        yield future.result(timeout=left)
                    except TimeoutError:
                        raise cf.TimeoutError from None
            finally:
                rest = list(remaining)
                if rest:
                    self._client.cancel(rest)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; with ``wait`` return once those submitted are done, else (or
        with ``cancel_futures``) cancel them.  Calling it again does nothing."""
        if self._shutdown:
            return
        self._shutdown = True
        futures = list(self._futures)
        if not futures:
            return
        if wait and not cancel_futures:
            waiting.wait(futures)
        else:
            self._client.cancel(futures)


def _follow(future: Future) -> cf.Future:
    """A concurrent.futures Future with the outcome of ``future``; cancelling it cancels
    ``future``."""
    followed: cf.Future = cf.Future()

    def cancelled(done: cf.Future) -> None:
        if done.cancelled() and future.status != "cancelled":
            future.cancel()

    followed.add_done_callback(cancelled)
    future.add_done_callback(lambda _: _settle(followed, future))
    return followed


def _settle(followed: cf.Future, future: Future) -> None:
    """Give ``followed`` the outcome of the done ``future`` (in a thread of its own)."""
    error: BaseException | None = None
    value: Any = None
    if future.status != "cancelled":
        try:
            value = sync(future.client.loop, future._result(raiseit=False))
        except BaseException as exc:  # (its data could not be fetched)
            error = exc
        if future.status == "error":
            error = value
    if future.status != "cancelled" and not followed.cancelled():
        with suppress(cf.InvalidStateError):
            if error is not None:
                followed.set_exception(error)
            else:
                followed.set_result(value)
            return
    followed.cancel()
    with suppress(RuntimeError):  # (told already)
        followed.set_running_or_notify_cancel()
