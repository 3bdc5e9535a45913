"""The client's I/O around :class:`~distributary.client.state.ClientState`.

Futures are made and dropped, and messages sent, from any thread; the client's event
loop flushes the outbox and reads the scheduler's reports.  Every call into the state
takes one lock, so each decision (is this key held? send it or not) and its effect
are one step.  A graph goes out as ``update-graph`` messages of a bounded number of
tasks each, so that its first tasks can start while the rest is still being pickled
(in a thread, for a big graph); whatever is queued after a graph waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributary.client.state import FutureState, PendingGraph
from distributary.protocol.errors import error_message
from distributary.utils.gc_pause import gc_paused
from distributary.utils.loop import in_loop


class OutboxMixin:
    """The ordered outbox of a ``Client``, and waking the waiters of its futures."""

    def _send(self: Any, msg: dict) -> None:
        """Send a message on the scheduler stream, from any thread, in order."""
        self._check_open()
        with self._lock:
            self._core.outbox.append(msg)
        self._schedule_flush()

    def _drop(self: Any, key: Any) -> None:
        """A Future of ``key`` is gone (from any thread, the garbage collector's too).

        Noted without the lock, which the collector may interrupt: the next step
        under the lock counts it.
        """
        self._dropped.append(key)
        if self.status == "running":
            self._schedule_flush()

    def _count_dropped(self: Any) -> None:
        # (under the lock)
        dropped = self._dropped
        while dropped:
            self._core.release(dropped.popleft())

    def _acquire(self: Any, key: Any) -> FutureState:
        """The record of ``key`` for a new Future, asking the scheduler for it if need be."""
        with self._lock:
            self._count_dropped()
            record = self._core.acquire(key)
        self._schedule_flush()
        return record

    def _schedule_flush(self: Any) -> None:
        with self._lock:
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        if in_loop(self.loop):
            self.loop.call_soon(self._flush_outbox)
            return
        try:
            self.loop.call_soon_threadsafe(self._flush_outbox)
        except (RuntimeError, AttributeError):
            pass  # the loop is closed: the scheduler drops this client's keys anyway

    def _flush_outbox(self: Any) -> None:
        with self._lock:
            self._flush_scheduled = False
            self._count_dropped()
            msgs, done = self._core.flush()
        self._wake(done)
        if msgs and self._batched is not None and not self._batched.closed():
            self._batched.send(*msgs)

    # ------------------------------------------------------------------ graphs

    def _send_graph(
        self: Any,
        pending: PendingGraph,
        parts: Iterable[tuple[list[dict], list]],
        claimed: list,
        background: bool = False,
    ) -> None:
        """Build and send the parts of a graph queued as ``pending``, one message each.

        ``parts`` yields ``(tasks, keys to keep)``.  Without ``background`` the parts are
        built here, and an error raises and drops the caller's ``claimed`` keys: what
        was sent of them is released.  With it they are built in a thread, and an error
        errs the wanted keys not yet sent.
        """
        if not background:
            try:
                self._build_parts(pending, parts, background)
            except BaseException as exc:
                with self._lock:
                    done = self._core.abandon(claimed, pending, error_message(exc))
                self._wake_soon(done)
                self._schedule_flush()
                raise
            return
        if self._graph_builder is None:
            self._graph_builder = ThreadPoolExecutor(1, thread_name_prefix="distributary-graph")
        self._graph_builder.submit(self._build_parts, pending, parts, background)

    def _build_parts(self: Any, pending: PendingGraph, parts: Iterable, background: bool) -> None:
        try:
            with gc_paused():  # (many objects made, no garbage)
                for tasks, want in parts:
                    with self._lock:
                        self._core.add_part(pending, tasks, want)
                    self._schedule_flush()
        except BaseException as exc:
            if not (background and isinstance(exc, Exception)):
                raise
            pending.error = error_message(exc)
        finally:
            pending.done = True
            self._schedule_flush()

    # ------------------------------------------------------------------ waiting

    async def _wait_for(self: Any, record: FutureState) -> None:
        """Until the record is done (on the client's loop)."""
        while not record.done():
            if record.waiter is None:
                record.waiter = asyncio.Event()
            await record.waiter.wait()

    def _wake(self: Any, records: Iterable[FutureState]) -> None:
        """Wake whoever waits on these records (on the client's loop)."""
        for record in records:
            waiter, record.waiter = record.waiter, None
            if waiter is not None:
                waiter.set()
            callbacks, record.callbacks = record.callbacks, []
            for callback in callbacks:
                callback()

    def _wake_soon(self: Any, records: list[FutureState]) -> None:
        if not records:
            return
        if in_loop(self.loop):
            self._wake(records)
        else:
            self.loop.call_soon_threadsafe(self._wake, records)
