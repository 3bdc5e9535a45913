"""Waiting on many futures: ``wait``, ``as_completed`` and ``fire_and_forget``."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from dask.utils import parse_timedelta

from distributary.client.future import Future
from distributary.client.structures import collect_futures
from distributary.protocol.client_messages import FireAndForget
from distributary.utils.loop import in_loop

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


class DoneAndNotDoneFutures(NamedTuple):
    """The result of :func:`wait`."""

    done: set
    not_done: set


def wait(fs: Any, timeout: Any = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until futures are done (all, the first, or the first to fail).

    Returns ``(done, not_done)`` sets; raises TimeoutError if ``timeout`` passes first.
    """
    if isinstance(timeout, Future):
        raise TypeError(
            "wait() takes the futures as one argument (a list, a set, ...): "
            "wait([a, b]), not wait(a, b)"
        )
    futures = collect_futures(fs)
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"Unknown return_when {return_when!r}")
    if not futures:
        return DoneAndNotDoneFutures(set(), set())
    client = futures[0].client
    return client.sync(_wait, futures, return_when, timeout=timeout)


async def _wait(futures: list[Future], return_when: str) -> DoneAndNotDoneFutures:
    pending = [f for f in futures if not f.done()]
    if return_when == ALL_COMPLETED:
        for future in pending:
            await future._wait()
    elif pending and not (
        return_when == FIRST_EXCEPTION and any(f.status == "error" for f in futures)
    ):
        woken = asyncio.Event()
        remaining = [len(pending)]

        def on_done(future: Future) -> None:
            remaining[0] -= 1
            failed = future.status == "error"
            if return_when == FIRST_COMPLETED or failed or not remaining[0]:
                woken.set()

        for future in pending:
            future._state.callbacks.append(lambda future=future: on_done(future))
        await woken.wait()
    finished = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(finished, set(futures) - finished)


def fire_and_forget(obj: Any) -> None:
    """Run these futures' tasks to the end even after every Future of them is dropped."""
    futures = collect_futures(obj)
    for future in futures:
        future.client._send(FireAndForget, keys=(future.key,))


class as_completed:
    """Iterate over futures in the order they finish (``for`` or ``async for``).

    ``with_results=True`` yields ``(future, result)`` pairs.  Futures can be added
    while iterating with :meth:`add`.
    """

    def __init__(
        self,
        futures: Iterable[Future] | None = None,
        loop: Any = None,
        with_results: bool = False,
        raise_errors: bool = True,
        *,
        timeout: Any = None,
    ):
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = parse_timedelta(timeout) if timeout is not None else None
        self._pending: set[Future] = set()
        self._ready: deque = deque()
        self._condition = threading.Condition()
        self._events: set[asyncio.Event] = set()
        for future in futures or ():
            self.add(future)

    def add(self, future: Future) -> None:
        """Add a future to wait on."""
        with self._condition:
            self._pending.add(future)
        client = future.client

        def register() -> None:
            if future._state.done():
                self._on_done(future)
            else:
                future._state.callbacks.append(lambda: self._on_done(future))

        if in_loop(client.loop):
            register()
        else:
            client.loop.call_soon_threadsafe(register)

    def update(self, futures: Iterable[Future]) -> None:
        """Add several futures."""
        for future in futures:
            self.add(future)

    def _on_done(self, future: Future) -> None:
        if self.with_results:
            asyncio.ensure_future(self._fetch_result(future))
        else:
            self._push(future)

    async def _fetch_result(self, future: Future) -> None:
        try:
            result = await future._result()
        except BaseException as exc:
            result = exc
        self._push((future, result))

    def _push(self, item: Any) -> None:
        future = item[0] if isinstance(item, tuple) else item
        with self._condition:
            self._pending.discard(future)
            self._ready.append(item)
            self._condition.notify_all()
        for event in self._events:
            event.set()

    def count(self) -> int:
        """Futures not yet yielded."""
        with self._condition:
            return len(self._pending) + len(self._ready)

    def has_ready(self) -> bool:
        """Whether a finished future is waiting to be yielded."""
        with self._condition:
            return bool(self._ready)

    def is_empty(self) -> bool:
        """Whether nothing is left to yield."""
        return self.count() == 0

    def clear(self) -> None:
        """Forget every future."""
        with self._condition:
            self._pending.clear()
            self._ready.clear()

    def _pop(self) -> Any:
        item = self._ready.popleft()
        if self.with_results and self.raise_errors:
            future, result = item
            if future.status == "error" and isinstance(result, BaseException):
                raise result
        return item

    def __iter__(self) -> as_completed:
        return self

    def __next__(self) -> Any:
        with self._condition:
            if not self._condition.wait_for(
                lambda: self._ready or not self._pending, timeout=self.timeout
            ):
                raise TimeoutError(f"as_completed: nothing finished within {self.timeout} s")
            if not self._ready:
                raise StopIteration
            return self._pop()

    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        event = asyncio.Event()
        self._events.add(event)
        try:
            while True:
                with self._condition:
                    if self._ready:
                        return self._pop()
                    if not self._pending:
                        raise StopAsyncIteration
                    event.clear()
                await asyncio.wait_for(event.wait(), self.timeout)
        finally:
            self._events.discard(event)

    def next_batch(self, block: bool = True) -> list:
        """Everything finished so far (waiting for at least one if ``block``)."""
        batch = [next(self)] if block else []
        with self._condition:
            while self._ready:
                batch.append(self._pop())
        return batch

    def batches(self) -> Any:
        """Yield lists of whatever has finished, until nothing is left."""
        while True:
            try:
                yield self.next_batch(block=True)
            except StopIteration:
                return
