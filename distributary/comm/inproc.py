"""In-process transport: messages are passed by reference, never serialized.

Each end of a connection owns an inbox that lives on the event loop the end was
created on (the connecting coroutine's loop, or the listener's loop). Writing to
the peer appends to its inbox, through ``call_soon_threadsafe`` when the peer is
on another loop (another thread), so the two ends may run on different threads.

Because nothing is copied, a message must not be mutated after it is written,
and values arrive exactly as sent (lists stay lists, ``Serialize`` stays
``Serialize``). Listeners are found through a process-wide registry of addresses
``inproc://<host>/<pid>/<counter>``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from distributary.comm.core import (
    Backend,
    Comm,
    CommClosedError,
    HandleComm,
    Listener,
    backends,
)
from distributary.utils.loop import in_loop

__all__ = ["InProc", "InProcBackend", "InProcListener"]

_registry: dict[str, InProcListener] = {}
_registry_lock = threading.Lock()
_counter = itertools.count()


def _new_address() -> str:
    return f"inproc://127.0.0.1/{os.getpid()}/{next(_counter)}"


class _Inbox:
    """The messages waiting for one end; touched only on that end's loop."""

    __slots__ = ("closed", "loop", "messages", "reader")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.messages: deque = deque()
        self.reader: asyncio.Future | None = None
        self.closed = False

    def call(self, func: Callable, *args: Any) -> None:
        """Run ``func(*args)`` on this inbox's loop; RuntimeError if that loop is closed."""
        if in_loop(self.loop):
            func(*args)
        else:
            self.loop.call_soon_threadsafe(func, *args)

    def put(self, msg: object) -> None:
        self.messages.append(msg)
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)


class InProc(Comm):
    """One end of an in-process connection.

    ``read`` must be awaited on the loop this end was created on. ``write``
    returns 0: nothing is serialized.
    """

    encodes = False

    def __init__(self, local_address: str, peer_address: str, inbox: _Inbox, outbox: _Inbox):
        super().__init__(local_address, peer_address)
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    async def read(self) -> Any:
        """Return the next message; raise CommClosedError once the comm is closed."""
        inbox = self._inbox
        while not inbox.messages or self._closed:
            if self._closed or inbox.closed:
                raise CommClosedError(f"{self!r} is closed")
            if inbox.reader is not None:
                raise RuntimeError(f"{self!r}: another coroutine is already reading")
            inbox.reader = inbox.loop.create_future()
            try:
                await inbox.reader
            finally:
                inbox.reader = None
        return inbox.messages.popleft()

    async def write(self, msg: Any) -> int:
        """Hand ``msg`` to the peer by reference; return 0."""
        if self.closed():
            raise CommClosedError(f"{self!r} is closed")
        try:
            self._outbox.call(self._outbox.put, msg)
        except RuntimeError as err:  # the peer's event loop is gone
            self.abort()
            raise CommClosedError(f"{self!r}: the peer's event loop is closed") from err
        return 0

    async def close(self) -> None:
        """Close both directions; messages already written still reach the peer."""
        self.abort()

    def abort(self) -> None:
        """Close both directions."""
        if self._closed:
            return
        self._closed = True
        for inbox in (self._inbox, self._outbox):
            try:
                inbox.call(inbox.close)
            except RuntimeError:
                pass

    def closed(self) -> bool:
        """Whether this end or the peer closed the connection."""
        return self._closed or self._inbox.closed


class InProcListener(Listener):
    """Accepts in-process connections on its event loop."""

    def __init__(self, address: str, handle_comm: HandleComm, handshake_info: dict):
        super().__init__(handle_comm, handshake_info)
        self.address = address
        self.loop = asyncio.get_running_loop()
        self._stopped = False

    def accept_threadsafe(self, comm: InProc) -> None:
        """Accept ``comm`` on this listener's loop; RuntimeError if that loop is closed."""
        self.loop.call_soon_threadsafe(self._accept_if_listening, comm)

    def _accept_if_listening(self, comm: InProc) -> None:
        if self._stopped:
            comm.abort()
        else:
            self._accept(comm)

    def stop(self) -> None:
        """Stop accepting connections (idempotent)."""
        self._stopped = True
        with _registry_lock:
            if _registry.get(self.address) is self:
                del _registry[self.address]


class InProcBackend(Backend):
    """The ``inproc://`` transport.

    Connecting to an address nobody listens on raises ConnectionRefusedError,
    which :func:`distributary.comm.connect` retries until its timeout and then
    reports as TimeoutError, exactly as for TCP.  Nothing leaves the process, so
    nothing needs encrypting: the TLS arguments are not used.
    """

    encrypted = True

    async def connect(
        self, loc: str, ssl_context: Any = None, extra_conn_args: dict | None = None
    ) -> Comm:
        """Connect to the listener registered at ``inproc://loc``."""
        address = "inproc://" + loc
        with _registry_lock:
            listener = _registry.get(address)
        if listener is None:
            raise ConnectionRefusedError(f"No inproc listener at {address}")
        local_address = _new_address()
        inbox = _Inbox(asyncio.get_running_loop())
        peer_inbox = _Inbox(listener.loop)
        comm = InProc(local_address, address, inbox, peer_inbox)
        try:
            listener.accept_threadsafe(InProc(address, local_address, peer_inbox, inbox))
        except RuntimeError as err:
            raise ConnectionRefusedError(f"The listener at {address} has no event loop") from err
        return comm

    async def listen(
        self, loc: str, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any = None
    ) -> Listener:
        """Register a listener at ``inproc://loc`` (a fresh address if ``loc`` is empty)."""
        address = "inproc://" + loc if loc else _new_address()
        listener = InProcListener(address, handle_comm, handshake_info)
        with _registry_lock:
            if address in _registry:
                raise OSError(errno.EADDRINUSE, f"inproc address {address} is already in use")
            _registry[address] = listener
        return listener


backends["inproc"] = InProcBackend()
