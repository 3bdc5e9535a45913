"""TCP transport: length-prefixed frames over asyncio transports.

Theory of operation
-------------------
A message is sent as: the frame count (u64, little-endian), the length of each
frame (u64 each), then the frames. The receiver checks the count against
``MAX_FRAMES`` and the total length against ``distributed.comm.max-message-size``
before it allocates anything for the frames.  The first message, the peer's
handshake, may only be one frame of ``HANDSHAKE_MAX_BYTES``; once it has arrived
nothing more is parsed (and reading pauses) until the handshake is accepted, so that a
peer not yet accepted costs a small buffer and no more.

Reading uses :class:`asyncio.BufferedProtocol`. Headers and small frames are
received into a scratch buffer and parsed from there (many small messages per
``recv``); a frame of ``BIG_FRAME`` bytes or more gets its own buffer and the
socket is read straight into it, so a large array costs no extra copy and
arrives writable (a memoryview of an uninitialised numpy buffer when numpy is
installed, else a ``bytearray``). Complete messages wait in a queue for
:meth:`TCP.read`; when too much is queued, reading from the socket pauses.

Writing hands small messages to the transport in one piece. Large frames are
never joined or copied up front: they are handed over in chunks, each only once
the transport's buffer is empty, so the transport sends straight from the
frame's memory and buffers at most the unsent tail of one chunk. Such a write
returns only when the transport holds none of the frame's bytes, so the caller
may reuse that memory at once.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import dask.config
from dask.utils import parse_bytes, parse_timedelta

from distributary.comm.addressing import get_address_host_port, unparse_host_port
from distributary.comm.core import (
    MAX_FRAMES,
    Backend,
    Comm,
    CommClosedError,
    HandleComm,
    HandshakeError,
    Listener,
    backends,
)
from distributary.protocol.wire import (
    HANDSHAKE_MAX_BYTES,
    ProtocolError,
    dumps_message,
    loads_handshake,
    loads_message,
)
from distributary.utils.gc_pause import gc_paused

__all__ = ["TCP", "TCPBackend", "TCPListener", "frame_message"]

logger = logging.getLogger("distributary.comm")

# Frames at least this big are received into (and sent from) their own buffer.
BIG_FRAME = 64 * 1024
_SCRATCH_SIZE = 16 * 1024
_HANDSHAKE_SCRATCH = 512  # (a connection that has not sent its handshake yet)
# Large frames are handed to the transport in slices of this size.
_WRITE_CHUNK = 1024 * 1024
# Writers of small messages wait (drain) while more than this is buffered.
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# Stop reading from the socket while this much has arrived but not been read.
_MAX_QUEUED_BYTES = 64 * 1024 * 1024
_MAX_QUEUED_MESSAGES = 10_000
# Messages at least this big are decoded with the cycle collector paused.
_BIG_MESSAGE = 1024 * 1024

_U64 = struct.Struct("<Q")
_ONE_FRAME_HEADER = struct.Struct("<QQ")


def _max_message_size() -> int:
    return parse_bytes(dask.config.get("distributed.comm.max-message-size"))


@functools.cache
def _numpy_empty() -> Callable | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.empty


def _allocate(nbytes: int) -> bytearray | memoryview:
    """A writable buffer for a big frame.

    ``numpy.empty`` is preferred when numpy is installed: unlike ``bytearray`` it
    does not zero the memory first, which matters for frames of many megabytes.
    """
    empty = _numpy_empty()
    if empty is None:
        return bytearray(nbytes)
    return memoryview(empty(nbytes, dtype="u1"))


def frame_message(msg: object) -> bytes:
    """The bytes of a small message of one frame on the wire (for raw sockets)."""
    (frame,) = dumps_message(msg)
    return _ONE_FRAME_HEADER.pack(1, len(frame)) + frame


def _nbytes(frame: bytes | bytearray | memoryview) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


class _FrameProtocol(asyncio.BufferedProtocol):
    """Parses the frame stream of one connection into a queue of messages."""

    def __init__(self, max_size: int, on_connection: Callable | None = None, scheme: str = "tcp"):
        # the handshake's limits, until it is accepted
        self.max_size = HANDSHAKE_MAX_BYTES
        self.max_frames = 1
        self.handshaking = True
        self._message_max_size = max_size
        self._held = False  # the handshake has arrived: nothing more is parsed yet
        self._on_connection = on_connection
        self.scheme = scheme
        self.transport: Any = None
        self.peer = "unknown peer"
        # complete messages: (frames, nbytes)
        self.messages: deque[tuple[list, int]] = deque()
        self.queued_bytes = 0
        self.reader: asyncio.Future | None = None
        self.lost = False
        self.lost_waiter: asyncio.Future | None = None
        self.error: str | None = None
        self.paused_writing = False
        self.paused_reading = False
        self._drain_waiter: asyncio.Future | None = None
        # parser state
        self._buf = bytearray(_HANDSHAKE_SCRATCH)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._nframes = 0  # 0 while the frame count is awaited
        self._lengths: tuple[int, ...] | None = None
        self._total = 0
        self._frames: list = []
        self._big: bytearray | memoryview | None = None
        self._big_view: memoryview | None = None
        self._big_pos = 0

    # --- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports do not derive from asyncio.Transport
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=0)
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer = f"{self.scheme}://" + unparse_host_port(peername[0], peername[1])
        if self._on_connection is not None:
            self._on_connection(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = str(exc)
        self._big = self._big_view = None
        self.wake_reader()
        for waiter in (self._drain_waiter, self.lost_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # let the transport close itself

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_pos :]
        if self._end == len(self._buf):
            self._make_room(len(self._buf) - self._start + 1)
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.error is not None:
            return
        if self._held:  # (bytes the transport had already read when reading paused)
            self._end += nbytes
            return
        if self._big is not None:
            self._big_pos += nbytes
            if self._big_pos < len(self._big):
                return
            self._frames.append(self._big)
            self._big = self._big_view = None
        else:
            self._end += nbytes
        self._parse()

    # --- parsing ---------------------------------------------------------------

    def _parse(self) -> None:
        view = self._view
        while True:
            start = self._start
            avail = self._end - start
            if self._nframes == 0:
                if avail < 8:
                    need = 8
                    break
                nframes = _U64.unpack_from(view, start)[0]
                if not 0 < nframes <= self.max_frames:
                    self._fail(self._too_many_frames(nframes, view[start : start + 2]))
                    return
                self._nframes = nframes
                self._start += 8
            elif self._lengths is None:
                need = 8 * self._nframes
                if avail < need:
                    break
                lengths = struct.unpack_from(f"<{self._nframes}Q", view, start)
                total = sum(lengths)
                if total > self.max_size:
                    self._fail(self._too_big(total))
                    return
                self._lengths = lengths
                self._total = total
                self._start += need
            elif len(self._frames) == self._nframes:
                self._deliver()
                if self.handshaking:
                    self._held = True  # until accept_handshake()
                    self.transport.pause_reading()
                    return
            else:
                need = self._lengths[len(self._frames)]
                if avail >= need:
                    chunk = view[start : start + need]
                    self._frames.append(bytes(chunk) if need < BIG_FRAME else bytearray(chunk))
                    self._start += need
                elif need < BIG_FRAME:
                    break
                else:
                    big = _allocate(need)
                    big[:avail] = view[start : self._end]
                    self._start = self._end = 0
                    self._big = big
                    self._big_view = memoryview(big)
                    self._big_pos = avail
                    return
        # wait for `need` bytes from self._start
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) != _SCRATCH_SIZE and not self.handshaking:
                self._buf = bytearray(_SCRATCH_SIZE)
                self._view = memoryview(self._buf)
        elif self._start + need > len(self._buf):
            self._make_room(need)

    def _make_room(self, need: int) -> None:
        """Move the unparsed bytes to the front of a scratch buffer of at least ``need``."""
        pending = self._end - self._start
        if need > len(self._buf):
            buf = bytearray(max(need, 2 * len(self._buf)))
            buf[:pending] = self._view[self._start : self._end]
            self._buf = buf
            self._view = memoryview(buf)
        else:
            self._view[:pending] = self._view[self._start : self._end]
        self._start = 0
        self._end = pending

    def _deliver(self) -> None:
        self.messages.append((self._frames, self._total))
        self.queued_bytes += self._total
        self._frames = []
        self._nframes = 0
        self._lengths = None
        self.wake_reader()
        if (
            self.queued_bytes > _MAX_QUEUED_BYTES or len(self.messages) > _MAX_QUEUED_MESSAGES
        ) and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

    def _too_many_frames(self, nframes: int, first: memoryview) -> str:
        if not self.handshaking:
            return f"message announces {nframes} frames (at most {MAX_FRAMES})"
        if self.scheme == "tcp" and bytes(first) == b"\x16\x03":  # a TLS ClientHello
            return (
                "the peer speaks TLS, but this address is plain tcp:// (the peer should "
                "connect with tcp://, or this server listen on tls://)"
            )
        return f"handshake announces {nframes} frames (a handshake is one frame)"

    def _too_big(self, total: int) -> str:
        if self.handshaking:
            return (
                f"handshake announces {total} bytes, more than the {self.max_size} a handshake "
                "may have (distributed.comm.max-message-size applies after it)"
            )
        return (
            f"message announces {total} bytes, more than "
            f"distributed.comm.max-message-size ({self.max_size})"
        )

    def accept_handshake(self) -> None:
        """The peer's handshake is accepted: take its messages, within the usual limits."""
        if not self.handshaking:
            return
        self.handshaking = self._held = False
        self.max_size = self._message_max_size
        self.max_frames = MAX_FRAMES
        if self.lost or self.error is not None:
            return
        if not self.paused_reading:
            self.transport.resume_reading()
        self._parse()

    def _fail(self, reason: str) -> None:
        logger.warning("Closing the connection with %s: %s", self.peer, reason)
        self.error = reason
        self._big = self._big_view = None
        self.transport.abort()

    # --- used by TCP -----------------------------------------------------------

    def wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    def message_taken(self, nbytes: int) -> None:
        self.queued_bytes -= nbytes
        if (
            self.paused_reading
            and self.queued_bytes <= _MAX_QUEUED_BYTES // 2
            and len(self.messages) <= _MAX_QUEUED_MESSAGES // 2
            and not self.lost
        ):
            self.paused_reading = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        while self.paused_writing and not self.lost:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None


class TCP(Comm):
    """A comm over a TCP connection (or a TLS one: see :mod:`distributary.comm.tls`)."""

    def __init__(self, protocol: _FrameProtocol):
        transport = protocol.transport
        sockname = transport.get_extra_info("sockname")
        local = f"{protocol.scheme}://" + unparse_host_port(sockname[0], sockname[1])
        super().__init__(local, protocol.peer)
        self._protocol = protocol
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._write_lock = asyncio.Lock()

    def _closed_error(self) -> CommClosedError:
        if self._closed:
            return CommClosedError(f"{self!r}: closed locally")
        reason = self._protocol.error or "closed by the peer"
        return CommClosedError(f"Connection {self.local_address} -> {self.peer_address}: {reason}")

    async def _next_frames(self) -> tuple[list, int]:
        """The frames of the next message and their size, once it has arrived."""
        protocol = self._protocol
        while not protocol.messages or self._closed:
            if self._closed or protocol.lost:
                raise self._closed_error()
            if protocol.reader is not None:
                raise RuntimeError(f"{self!r}: another coroutine is already reading")
            protocol.reader = self._loop.create_future()
            try:
                await protocol.reader
            finally:
                protocol.reader = None
        frames, nbytes = protocol.messages.popleft()
        protocol.message_taken(nbytes)
        return frames, nbytes

    async def read_handshake(self) -> dict:
        """Return the peer's handshake: plain data, or HandshakeError."""
        frames, _ = await self._next_frames()
        try:
            return loads_handshake(frames)
        except ProtocolError as err:
            self.abort()
            raise HandshakeError(f"Malformed handshake from {self.peer_address}: {err}") from None

    def handshake_accepted(self) -> None:
        """Read the peer's messages from now on."""
        self._protocol.accept_handshake()

    async def read(self) -> object:
        """Return the next message; raise CommClosedError once the comm is closed."""
        frames, nbytes = await self._next_frames()
        try:
            if nbytes < _BIG_MESSAGE:
                return loads_message(frames)
            with gc_paused():  # (a graph: many objects, no garbage)
                return loads_message(frames)
        except ProtocolError as err:
            logger.warning("Malformed message from %s: %s", self.peer_address, err)
            self.abort()
            raise CommClosedError(f"Malformed message from {self.peer_address}: {err}") from err

    async def write(self, msg: object) -> int:
        """Send one message; return the number of bytes written."""
        if self._closed or self._protocol.lost:
            raise self._closed_error()
        frames = dumps_message(msg)
        if len(frames) == 1 and len(frames[0]) < BIG_FRAME:
            data = _ONE_FRAME_HEADER.pack(1, len(frames[0])) + frames[0]
            async with self._write_lock:
                if self._closed or self._protocol.lost:
                    raise self._closed_error()
                self._transport.write(data)
                if self._protocol.paused_writing:
                    await self._protocol.drain()
            return len(data)
        return await self._write_frames(frames)

    async def _write_frames(self, frames: list) -> int:
        lengths = [_nbytes(f) for f in frames]
        header = struct.pack(f"<{len(frames) + 1}Q", len(frames), *lengths)
        protocol = self._protocol
        transport = self._transport
        async with self._write_lock:
            if self._closed or protocol.lost:
                raise self._closed_error()
            complete = streaming = False
            try:
                pending = [header]
                for frame, size in zip(frames, lengths):
                    if size < BIG_FRAME:
                        pending.append(frame)
                        continue
                    if not streaming:
                        # Hand big frames over only when the transport's buffer is
                        # empty, so that it sends them from our memory, not a copy.
                        transport.set_write_buffer_limits(high=0, low=0)
                        streaming = True
                    transport.write(b"".join(pending))
                    pending = []
                    view = memoryview(frame)
                    if view.ndim != 1 or view.format != "B":
                        view = view.cast("B")
                    for offset in range(0, size, _WRITE_CHUNK):
                        if protocol.paused_writing:
                            await protocol.drain()
                        if self._closed or protocol.lost:
                            raise self._closed_error()
                        transport.write(view[offset : offset + _WRITE_CHUNK])
                if pending:
                    transport.write(b"".join(pending))
                complete = True
                if protocol.paused_writing:
                    # with big frames: until the transport holds none of their bytes
                    await protocol.drain()
            except BaseException:
                if not complete:  # half a message is on the wire: the stream is unusable
                    self.abort()
                raise
            finally:
                if streaming and not self.closed():
                    transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=0)
        return len(header) + sum(lengths)

    async def close(self) -> None:
        """Flush what was written and close (aborting if that takes too long)."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        protocol.wake_reader()
        if protocol.lost:
            return
        protocol.lost_waiter = self._loop.create_future()
        self._transport.close()
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.tcp"), default="s")
        try:
            await asyncio.wait_for(asyncio.shield(protocol.lost_waiter), timeout)
        except asyncio.TimeoutError:
            self._transport.abort()
        except BaseException:
            self._transport.abort()
            raise

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        if not self._closed:
            self._closed = True
            self._protocol.wake_reader()
        if not self._protocol.lost:
            self._transport.abort()

    def closed(self) -> bool:
        """Whether the comm is closed."""
        return self._closed or self._protocol.lost


def _contact_host(bound_host: str, family: int) -> str:
    """An address peers can reach when bound to a wildcard address."""
    if family == socket.AF_INET6:
        return "::1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("8.8.8.8", 80))  # UDP: no packet is sent
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class TCPListener(Listener):
    """Accepts TCP connections."""

    scheme = "tcp"

    def __init__(self, handle_comm: HandleComm, handshake_info: dict):
        super().__init__(handle_comm, handshake_info)
        self._server: asyncio.Server | None = None
        self._accepting = False
        self._max_size = _max_message_size()

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting; sets :attr:`address`."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        bind_host = sockaddr[0]
        self._accepting = True
        self._server = await loop.create_server(
            self._make_protocol, bind_host, port, family=family, backlog=2048
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        contact = _contact_host(bind_host, family) if bind_host in ("0.0.0.0", "::") else bind_host
        self.address = f"{self.scheme}://" + unparse_host_port(contact, bound_port)
        if self.scheme == "tcp" and not ipaddress.ip_address(bind_host).is_loopback:
            logger.warning(
                "Listening on %s without TLS, on an address other machines can reach: "
                "anyone who can connect to it can run any code here and on every worker "
                "of this cluster, and read its data. Use tls:// with security=Security(...) "
                "(--tls-ca-file, --tls-cert and --tls-key on the command line), or listen "
                "on 127.0.0.1.",
                f"tcp://{unparse_host_port(bind_host, bound_port)}",
            )

    def _make_protocol(self) -> _FrameProtocol:
        return _FrameProtocol(self._max_size, self._on_connection)

    def _on_connection(self, protocol: _FrameProtocol) -> None:
        if not self._accepting:
            protocol.transport.abort()
            return
        self._accept(TCP(protocol))

    def stop(self) -> None:
        """Stop accepting connections (idempotent)."""
        self._accepting = False
        if self._server is not None:
            self._server.close()
            self._server = None


class TCPBackend(Backend):
    """The ``tcp://`` transport (not encrypted: the TLS arguments are not used)."""

    async def connect(
        self, loc: str, ssl_context: Any = None, extra_conn_args: dict | None = None
    ) -> Comm:
        """Open a TCP connection to ``host:port``."""
        host, port = get_address_host_port("tcp://" + loc)
        max_size = _max_message_size()
        _, protocol = await asyncio.get_running_loop().create_connection(
            lambda: _FrameProtocol(max_size), host, port, **(extra_conn_args or {})
        )
        return TCP(protocol)

    async def listen(
        self, loc: str, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any = None
    ) -> Listener:
        """Listen on ``host:port`` (port 0 picks a free port)."""
        host, port = get_address_host_port("tcp://" + loc)
        listener = TCPListener(handle_comm, handshake_info)
        await listener.start(host, port)
        return listener


backends["tcp"] = TCPBackend()
