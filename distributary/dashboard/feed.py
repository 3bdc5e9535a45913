"""Live updates of the dashboard's pages: frames pushed by server-sent events.

Theory of operation
-------------------
While at least one page is connected (``GET /events``), a ticker builds one *frame*
every ``distributed.dashboard.update-interval``: what changed, as JSON, encoded once
whatever the number of pages.  The ticker stops when the last page leaves, so that the
dashboard costs nothing while nobody looks.

The last few frames are kept, numbered, in a :class:`FrameRing` shared by all the
connections.  Each connection only remembers the number of the last frame it sent; when
woken it sends the frames it has not sent yet, at most the ring's length: a page that
falls behind skips frames (each frame carries the whole state of the workers and the
progress, so only task-stream rectangles are lost), and a connection never holds more
than the ring plus what its socket holds (its kernel buffer is made small too).  A
write that does not finish within ``distributed.dashboard.send-timeout`` (a browser
that stopped reading) drops the connection.  So a slow or stalled browser never
blocks the scheduler nor grows its memory; at most
``distributed.dashboard.max-connections`` pages are served at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger("distributary.dashboard")

# Frames kept for the connections that fell behind.
RING_LENGTH = 8
# Milliseconds a browser waits before connecting again after losing the stream.
RETRY_MS = 2000
# Bytes the kernel may hold for a page's socket (Linux doubles it): a page that stops
# reading fills it soon, and is then dropped after the send timeout.
SOCKET_BUFFER = 128 * 1024

_encoder = msgspec.json.Encoder()


def encode(data: Any) -> bytes:
    """``data`` (plain values) as JSON."""
    return _encoder.encode(data)


def event(data: Any) -> bytes:
    """``data`` as one server-sent event (JSON)."""
    return b"data: " + _encoder.encode(data) + b"\n\n"


class FrameRing:
    """The last ``length`` frames (encoded events), numbered from 1."""

    def __init__(self, length: int = RING_LENGTH):
        self._frames: deque[tuple[int, bytes]] = deque(maxlen=length)
        self.last = 0  # the number of the newest frame (0: none yet)

    def add(self, frame: bytes) -> int:
        """Keep ``frame`` (the oldest one kept goes); its number."""
        self.last += 1
        self._frames.append((self.last, frame))
        return self.last

    def since(self, seen: int) -> list[bytes]:
        """The frames kept that are newer than frame number ``seen``, oldest first."""
        if seen >= self.last:
            return []
        return [frame for number, frame in self._frames if number > seen]


def _bound_socket_buffer(transport: Any) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        except OSError:
            pass


class _Connection:
    __slots__ = ("seen", "woken", "transport")

    def __init__(self, seen: int, transport: Any):
        self.seen = seen  # the number of the last frame sent
        self.woken = asyncio.Event()
        self.transport = transport


class LiveFeed:
    """Pushes frames to the pages connected.

    ``make_frame(first)`` builds a frame (a JSON-able dict): the first one of a
    connection (``first=True``) holds what a page shows on opening, the others what
    changed since the previous frame.  ``started()`` is called before the first frame is
    made, when a page connects and none was; ``stopped()`` after the last frame, when the
    last page left.
    """

    def __init__(
        self,
        make_frame: Callable[[bool], Awaitable[dict]],
        interval: float,
        max_connections: int,
        send_timeout: float,
        started: Callable[[], None] = lambda: None,
        stopped: Callable[[], None] = lambda: None,
    ):
        self.make_frame = make_frame
        self.started = started
        self.stopped = stopped
        self.interval = interval
        self.max_connections = max_connections
        self.send_timeout = send_timeout
        self.frames = FrameRing()
        self._connections: set[_Connection] = set()
        self._ticker: asyncio.Task | None = None
        self._closing = False

    @property
    def connections(self) -> int:
        """The pages connected now."""
        return len(self._connections)

    @property
    def ticking(self) -> bool:
        """Whether frames are being made (while pages are connected)."""
        return self._ticker is not None and not self._ticker.done()

    def buffered(self) -> list[int]:
        """For each connection, the bytes it holds: the frames it has still to send
        and what its socket's buffer holds."""
        sizes = []
        for connection in self._connections:
            pending = sum(map(len, self.frames.since(connection.seen)))
            transport = connection.transport
            held = transport.get_write_buffer_size() if transport is not None else 0
            sizes.append(pending + held)
        return sizes

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Stream frames to one page until it goes away (``GET /events``)."""
        from aiohttp import web

        if self._closing:
            raise web.HTTPServiceUnavailable(text="the scheduler is closing")
        if len(self._connections) >= self.max_connections:
            raise web.HTTPServiceUnavailable(
                text=f"{self.max_connections} dashboard pages are open already "
                "(distributed.dashboard.max-connections)"
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        _bound_socket_buffer(request.transport)
        connection = _Connection(self.frames.last, request.transport)
        self._connections.add(connection)
        if not self.ticking:
            self.started()
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            first = await self.make_frame(True)
            await self._send(connection, response, b"retry: %d\n" % RETRY_MS + event(first))
            while not self._closing:
                await connection.woken.wait()
                connection.woken.clear()
                frames = self.frames.since(connection.seen)
                connection.seen = self.frames.last
                if frames and not self._closing:
                    await self._send(connection, response, b"".join(frames))
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the page went away, or stopped reading
        finally:
            self._connections.discard(connection)
        return response

    async def _send(self, connection: _Connection, response: web.StreamResponse, data: bytes):
        try:
            await asyncio.wait_for(response.write(data), self.send_timeout)
        except asyncio.TimeoutError:
            if connection.transport is not None:
                connection.transport.abort()
            raise

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._connections and not self._closing:
                began = loop.time()
                try:
                    frame = await self.make_frame(False)
                except Exception:
                    logger.exception("Could not make a frame of the dashboard")
                else:
                    self.frames.add(event(frame))
                    for connection in self._connections:
                        connection.woken.set()
                elapsed = loop.time() - began
                await asyncio.sleep(max(self.interval - elapsed, self.interval / 2))
        finally:
            self.stopped()

    async def close(self) -> None:
        """End every stream, and the ticker."""
        self._closing = True
        for connection in self._connections:
            connection.woken.set()
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
