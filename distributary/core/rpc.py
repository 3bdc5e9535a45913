"""A pool of comms for request/reply calls to other servers.

``await pool.call(addr, request)`` borrows an idle comm to ``addr`` (or
opens one), writes the message, reads the reply and gives the comm back. At most
``limit`` comms are open at once; past that, idle comms to other addresses are
closed, or callers wait for a comm to be given back. A comm whose call was
interrupted (error, timeout, cancellation) is aborted rather than reused, since
a reply may still be on its way. A refused connection fails at once
(ConnectionRefusedError, an OSError) rather than being retried: the pool talks to
servers that were listening already, so a refusal means the peer is gone.
``connection_args`` (``ssl_context``, ``require_encryption``, ``extra_conn_args``: see
:meth:`distributary.Security.get_connection_args`) go to every ``connect``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from distributary.comm import Comm, CommClosedError, connect, normalize_address
from distributary.protocol.requests import Request, decode_reply, wants_reply

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Reusable comms to many addresses, at most ``limit`` open at once."""

    def __init__(
        self,
        limit: int = 512,
        timeout: float | None = None,
        *,
        connection_args: dict | None = None,
        **handshake_info: Any,
    ):
        self.limit = limit
        self.timeout = timeout
        self.connection_args = dict(connection_args or {})
        self.handshake_info = handshake_info
        self._idle: dict[str, list[Comm]] = {}
        self._busy: dict[Comm, str] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False
        # address -> the address to connect to instead (the same server, in memory)
        self.routes: dict[str, str] = {}

    @property
    def open(self) -> int:
        """Number of open comms (idle or in use)."""
        return self._open

    @property
    def active(self) -> int:
        """Number of comms in use."""
        return len(self._busy)

    async def connect(self, addr: str) -> Comm:
        """Borrow a comm to ``addr``; give it back with :meth:`reuse`."""
        addr = normalize_address(addr)
        while True:
            if self._closed:
                raise CommClosedError("ConnectionPool is closed")
            idle = self._idle.get(addr)
            while idle:
                comm = idle.pop()
                if not idle:
                    del self._idle[addr]
                if comm.closed():
                    self._open -= 1
                    continue
                self._busy[comm] = addr
                return comm
            if self._open < self.limit or self._evict_idle():
                break
            await self._wait_for_slot()
        self._open += 1
        try:
            comm = await connect(
                self.routes.get(addr, addr),
                timeout=self.timeout,
                retry_refused=False,
                **self.connection_args,
                **self.handshake_info,
            )
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        if self._closed:
            self._open -= 1
            comm.abort()
            raise CommClosedError("ConnectionPool is closed")
        self._busy[comm] = addr
        return comm

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # pass the wake-up on
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict_idle(self) -> bool:
        """Close the least recently used idle comm to make room; False if none."""
        for addr, idle in self._idle.items():
            comm = idle.pop(0)
            if not idle:
                del self._idle[addr]
            comm.abort()
            self._open -= 1
            return True
        return False

    def reuse(self, addr: str, comm: Comm) -> None:
        """Give back a comm borrowed with :meth:`connect`; closed comms are dropped."""
        key = self._busy.pop(comm, None)
        if key is None:
            return
        if comm.closed() or self._closed:
            comm.abort()
            self._open -= 1
        else:
            self._idle.setdefault(key, []).append(comm)
        self._wake_one()

    async def call(self, addr: str, msg: Request | dict, timeout: float | None = None) -> Any:
        """Send ``msg`` to ``addr`` and return the reply, raising remote errors.

        The reply to a request is checked against its ``reply_type`` (see
        :func:`~distributary.protocol.requests.decode_reply`); a plain dict (a message
        no class declares, as a test sends) gets its reply as it came.  With
        ``"reply": False`` in a dict nothing is read and None is returned.
        """
        cls = type(msg) if isinstance(msg, Request) else Request
        if timeout is None:
            reply = await self._call(addr, msg)
        else:
            reply = await asyncio.wait_for(self._call(addr, msg), timeout)
        return decode_reply(cls, reply)

    async def _call(self, addr: str, msg: Request | dict) -> Any:
        comm = await self.connect(addr)
        try:
            await comm.write(msg)  # (a request in memory travels as itself)
            reply = await comm.read() if wants_reply(msg) else None
        except BaseException:
            comm.abort()
            self.reuse(addr, comm)
            raise
        self.reuse(addr, comm)
        return reply

    def remove(self, addr: str) -> None:
        """Close all comms to ``addr``, idle or in use."""
        addr = normalize_address(addr)
        for comm in self._idle.pop(addr, ()):
            comm.abort()
            self._open -= 1
            self._wake_one()
        for comm, key in self._busy.items():
            if key == addr:
                comm.abort()

    async def close(self) -> None:
        """Close every comm; later calls raise CommClosedError."""
        self._closed = True
        for idle in self._idle.values():
            for comm in idle:
                comm.abort()
                self._open -= 1
        self._idle.clear()
        for comm in self._busy:
            comm.abort()
        while self._waiters:
            self._wake_one()

    def __repr__(self) -> str:
        return f"<ConnectionPool: open={self._open}, active={len(self._busy)}, limit={self.limit}>"
