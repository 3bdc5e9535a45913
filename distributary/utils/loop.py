"""A background event-loop thread for the blocking API.

Blocking Clients and LocalClusters in one process share a single event loop running
in a daemon thread.  Each user acquires it and releases it when done; the thread
stops when the last user lets go, so nothing lingers after everything is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopRunner:
    """Runs one asyncio loop in a daemon thread for as long as somebody uses it."""

    _lock = threading.Lock()
    _shared: LoopRunner | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self._thread = threading.Thread(target=self._run, name="distributary-loop", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    @classmethod
    def acquire(cls) -> LoopRunner:
        """The shared runner, started if needed, with one more user counted."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = LoopRunner()
            cls._shared.users += 1
            return cls._shared

    def release(self) -> None:
        """One user fewer; the last one stops the loop and joins its thread."""
        with LoopRunner._lock:
            self.users -= 1
            if self.users > 0:
                return
            if LoopRunner._shared is self:
                LoopRunner._shared = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result from another thread."""
        return sync(self.loop, coro, timeout)


def sync(
    loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], timeout: float | None = None
) -> T:
    """Run ``awaitable`` on ``loop`` (in another thread) and block until it is done.

    On timeout the coroutine is cancelled and ``TimeoutError`` raised.
    """
    if in_loop(loop):
        raise RuntimeError("sync() called from the event loop it would block")
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():  # the awaitable itself raised TimeoutError (or just finished)
            return future.result()
        future.cancel()
        raise TimeoutError(f"Operation did not finish within {timeout} s") from None
    finally:
        # An exception raised here holds this frame, and ``future`` holds the exception:
        # without this, whatever the exception's frames hold (the caller's Futures, whose
        # keys stay on the cluster) would wait for the cycle collector.
        del future


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def in_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether this code runs on ``loop`` (rather than in another thread)."""
    return loop is not None and running_loop() is loop
