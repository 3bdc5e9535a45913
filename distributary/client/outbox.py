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
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from distributary.client.state import ClientState, Draft, FutureState, PendingGraph
from distributary.protocol.client_messages import Flush, FromClient, TaskSpec
from distributary.protocol.errors import RemoteError
from distributary.utils.gc_pause import gc_paused
from distributary.utils.loop import in_loop

if TYPE_CHECKING:
    from distributary.client.future import Future
    from distributary.core import BatchedSend


class ConnectionStatus(Protocol):
    """What the outbox needs to know of its client: whether it runs, and on which loop."""

    status: str
    loop: asyncio.AbstractEventLoop | None


class Outbox:
    """The ordered outbox of a client, and waking the waiters of its futures.

    ``core`` is the client's state and ``lock`` the lock around every call into it;
    ``stream`` is the scheduler stream, once connected.
    """

    def __init__(self, core: ClientState, client: ConnectionStatus):
        self.core = core
        self.lock = threading.RLock()
        self.stream: BatchedSend | None = None
        self._client = client
        self._dropped: deque = deque()  # keys of Futures gone, not yet counted
        self._flush_scheduled = False
        self._graph_builder: ThreadPoolExecutor | None = None

    def check_open(self) -> None:
        """Raise RuntimeError if the client is closing or closed."""
        if self._client.status in ("closing", "closed"):
            raise RuntimeError(f"{self._client!r} is closed; start a new Client to submit work")

    async def close(self) -> None:
        """Flush and close the stream; stop building graphs."""
        if self.stream is not None:
            await self.stream.close(timeout=2)
        if self._graph_builder is not None:
            self._graph_builder.shutdown(wait=False, cancel_futures=True)

    def send(self, cls: type[FromClient], **fields: Any) -> None:
        """Send a message on the scheduler stream, from any thread, in order."""
        self.check_open()
        with self.lock:
            self.core.outbox.append(Draft(cls, **fields))
        self.schedule_flush()

    def flush_marker(self) -> str:
        """Send a flush marker on the stream and return its uid: a request carrying it
        is handled by the scheduler after everything sent before it."""
        uid = uuid.uuid4().hex
        self.send(Flush, uid=uid)
        return uid

    def drop(self, key: Any) -> None:
        """A Future of ``key`` is gone (from any thread, the garbage collector's too).

        Noted without the lock, which the collector may interrupt: the next step
        under the lock counts it.
        """
        self._dropped.append(key)
        if self._client.status == "running":
            self.schedule_flush()

    def count_dropped(self) -> None:
        """Release the keys of the Futures dropped since the last step (under the lock)."""
        dropped = self._dropped
        while dropped:
            self.core.release(dropped.popleft())

    def acquire(self, key: Any) -> FutureState:
        """The record of ``key`` for a new Future, asking the scheduler for it if need be."""
        with self.lock:
            self.count_dropped()
            record = self.core.acquire(key)
        self.schedule_flush()
        return record

    def schedule_flush(self) -> None:
        """Have the client's loop flush the outbox soon (once, however often asked)."""
        with self.lock:
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        if in_loop(self._client.loop):
            self._client.loop.call_soon(self.flush)
            return
        try:
            self._client.loop.call_soon_threadsafe(self.flush)
        except (RuntimeError, AttributeError):
            pass  # the loop is closed: the scheduler drops this client's keys anyway

    def flush(self) -> None:
        """Send what the state has queued, on the client's loop."""
        with self.lock:
            self._flush_scheduled = False
            self.count_dropped()
            msgs, done = self.core.flush()
        self.wake(done)
        if msgs and self.stream is not None and not self.stream.closed():
            self.stream.send(*msgs)

    # ------------------------------------------------------------------ graphs

    def send_graph(
        self,
        pending: PendingGraph,
        parts: Iterable[tuple[list[TaskSpec], list]],
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
                with self.lock:
                    done = self.core.abandon(claimed, pending, RemoteError.of(exc))
                self.wake_soon(done)
                self.schedule_flush()
                raise
            return
        if self._graph_builder is None:
            self._graph_builder = ThreadPoolExecutor(1, thread_name_prefix="distributary-graph")
        self._graph_builder.submit(self._build_parts, pending, parts, background)

    def _build_parts(self, pending: PendingGraph, parts: Iterable, background: bool) -> None:
        try:
            with gc_paused():  # (many objects made, no garbage)
                for tasks, want in parts:
                    with self.lock:
                        self.core.add_part(pending, tasks, want)
                    self.schedule_flush()
        except BaseException as exc:
            if not (background and isinstance(exc, Exception)):
                raise
            pending.error = RemoteError.of(exc)
        finally:
            pending.done = True
            self.schedule_flush()

    # ------------------------------------------------------------------ waiting

    async def wait_for(self, record: FutureState) -> None:
        """Until the record is done (on the client's loop)."""
        while not record.done():
            if record.waiter is None:
                record.waiter = asyncio.Event()
            await record.waiter.wait()

    def wake(self, records: Iterable[FutureState]) -> None:
        """Wake whoever waits on these records (on the client's loop)."""
        for record in records:
            waiter, record.waiter = record.waiter, None
            if waiter is not None:
                waiter.set()
            callbacks, record.callbacks = record.callbacks, []
            for callback in callbacks:
                callback()

    def wake_soon(self, records: list[FutureState]) -> None:
        """Wake the waiters of these records, from any thread."""
        if not records:
            return
        if in_loop(self._client.loop):
            self.wake(records)
        else:
            self._client.loop.call_soon_threadsafe(self.wake, records)

    def cancel_everything(self, reason: str) -> None:
        """Cancel every future of the client (on the client's loop)."""
        with self.lock:
            done = self.core.cancel_all(reason)
        self.wake(done)

    def add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` in a thread once the future is done."""
        loop = self._client.loop

        def run() -> None:
            loop.run_in_executor(None, fn, future)

        def register() -> None:
            if future._state.done():
                run()
            else:
                future._state.callbacks.append(run)

        if in_loop(loop):
            register()
        else:
            loop.call_soon_threadsafe(register)
