"""TLS transport: the TCP transport (:mod:`distributary.comm.tcp`: its framing, comms and
flow control) over the standard library's ``ssl``, with mutual authentication.

Theory of operation
-------------------
Connecting is TCP's ``create_connection`` with the SSL context of a
:class:`distributary.Security`: the server's certificate is checked against the CA
before the connection is made, and a failed handshake is a ``HandshakeError`` naming
the cause, not a refusal to retry.

Listening accepts sockets itself, so that it can look at a peer before any TLS work
is spent on it.  A new socket waits (a socket and a timer, no buffers) until its first
bytes arrive: a TLS ClientHello goes on to the TLS handshake, in which the peer must
present a certificate the CA signed; anything else (a plain ``tcp://`` client) gets a
plain handshake saying ``refused`` and why, and is closed.  A peer that says nothing,
or does not finish the TLS handshake, within ``distributed.comm.timeouts.connect`` is
dropped.  Only a peer whose certificate passed becomes a comm, and only then is
anything it sends parsed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Any

from distributary.comm.addressing import get_address_host_port
from distributary.comm.core import (
    PROTOCOL_VERSION,
    Comm,
    HandleComm,
    HandshakeError,
    Listener,
    backends,
    connect_timeout,
)
from distributary.comm.tcp import (
    TCP,
    TCPBackend,
    TCPListener,
    _FrameProtocol,
    _max_message_size,
    frame_message,
)

__all__ = ["TLSBackend", "TLSListener", "describe_tls_error"]

logger = logging.getLogger("distributary.comm")

_TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a ClientHello
_ACCEPT_RETRY = 1.0  # seconds before accepting again when out of file descriptors
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_NO_CREDENTIALS = (
    "needs TLS credentials: give security=Security(tls_ca_file=..., tls_<role>_cert=..., "
    "tls_<role>_key=...) (or Security.temporary()), or set distributed.comm.tls.*"
)


def describe_tls_error(err: BaseException | str) -> str:
    """What went wrong in a TLS handshake, in words, with the likely cause."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"the peer's certificate was not accepted: {err.verify_message} (is it signed "
            "by the CA in tls_ca_file, and still valid?)"
        )
    text = str(err) or type(err).__name__
    if "alert" in text.lower():
        return (
            f"the peer refused this side's certificate ({text}): is it signed by the CA "
            "that the peer trusts, still valid, and given (tls_<role>_cert)?"
        )
    if isinstance(err, ConnectionError | ssl.SSLEOFError):
        return (
            f"the peer closed the connection during the TLS handshake ({text}): is it a "
            "plain tcp:// server, or did it refuse this side's certificate?"
        )
    return text


class _TLSFrameProtocol(_FrameProtocol):
    """The TCP framing, over TLS: a connection lost to a TLS error says so in words."""

    empty_mark = 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            if isinstance(exc, ssl.SSLError):
                self.error = describe_tls_error(exc)
            elif exc is None and self.handshaking:
                self.error = (
                    "closed by the peer before its handshake: it may have refused this side's "
                    "certificate (is one given, signed by the CA the peer trusts, still valid?)"
                )
        super().connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Tells a plain-TCP peer, in a plain handshake, that this address needs TLS, and
    closes (after ``timeout`` at the latest), dropping whatever the peer sends."""

    def __init__(self, reason: str, timeout: float):
        self._message = frame_message({"distributary": PROTOCOL_VERSION, "refused": reason})
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        transport.write(self._message)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class TLSListener(TCPListener):
    """Accepts TLS connections from peers whose certificate the CA signed."""

    scheme = "tls"
    _protocol_class = _TLSFrameProtocol

    def __init__(self, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any):
        super().__init__(handle_comm, handshake_info)
        self._ssl_context = ssl_context
        self._timeout = connect_timeout()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        # sockets whose first bytes are awaited, and when each is dropped
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._handshakes: set[asyncio.Task] = set()  # TLS handshakes and refusals

    async def _bind(self, family: int, host: str, port: int) -> int:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(self._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept_ready)
        return sock.getsockname()[1]

    def _accept_ready(self) -> None:
        loop = self._loop
        for _ in range(self._backlog):
            if self._sock is None:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno not in _OUT_OF_RESOURCES:
                    continue  # (e.g. the peer gave up already)
                logger.error("Cannot accept connections on %s for now: %s", self.address, err)
                loop.remove_reader(self._sock.fileno())
                loop.call_later(_ACCEPT_RETRY, self._resume_accepting)
                return
            conn.setblocking(False)
            self._waiting[conn] = loop.call_later(self._timeout, self._drop, conn)
            loop.add_reader(conn.fileno(), self._first_bytes, conn)

    def _resume_accepting(self) -> None:
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)

    def _drop(self, conn: socket.socket) -> None:
        """Close a socket that has not shown its first bytes yet."""
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
            self._loop.remove_reader(conn.fileno())
        conn.close()

    def _first_bytes(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        if not head:  # (the peer went away)
            self._drop(conn)
            return
        timer = self._waiting.pop(conn)
        timer.cancel()
        self._loop.remove_reader(conn.fileno())
        remaining = max(timer.when() - self._loop.time(), 0.1)
        if head[0] == _TLS_HANDSHAKE_RECORD:
            work = self._tls_handshake(conn, remaining)
        else:
            work = self._refuse(conn, remaining)
        task = self._loop.create_task(work)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _tls_handshake(self, conn: socket.socket, timeout: float) -> None:
        peer = _peer(conn)
        try:
            await self._loop.connect_accepted_socket(
                self._make_protocol, conn, ssl=self._ssl_context, ssl_handshake_timeout=timeout
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as err:
            conn.close()
            if isinstance(err, ssl.SSLError):
                reason = describe_tls_error(err)
                logger.warning("Rejected a TLS connection from %s: %s", peer, reason)
            else:
                logger.debug("TLS handshake with %s failed: %r", peer, err)

    async def _refuse(self, conn: socket.socket, timeout: float) -> None:
        peer = _peer(conn)
        logger.warning(
            "Refused a connection from %s on %s: the peer does not speak TLS", peer, self.address
        )
        reason = (
            f"{self.address} takes TLS connections only: connect to it with a tls:// address "
            "and TLS credentials (security=Security(...))"
        )
        try:
            await self._loop.connect_accepted_socket(lambda: _Refusal(reason, timeout), conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except OSError:
            conn.close()

    async def close(self) -> None:
        """Stop accepting, drop the connections in their TLS handshake, and close the
        comms accepted."""
        handshakes = list(self._handshakes)
        await super().close()
        await asyncio.gather(*handshakes, return_exceptions=True)

    def stop(self) -> None:
        """Stop accepting connections (idempotent); those still in their TLS handshake
        are dropped."""
        super().stop()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for conn in list(self._waiting):
            self._drop(conn)
        for task in self._handshakes:
            task.cancel()


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "a peer that left"
    return f"{host}:{port}"


class TLSBackend(TCPBackend):
    """The ``tls://`` transport: TCP with the SSL context of a Security."""

    encrypted = True

    async def connect(
        self, loc: str, ssl_context: Any = None, extra_conn_args: dict | None = None
    ) -> Comm:
        """Open a TLS connection to ``host:port``; HandshakeError if the TLS handshake
        fails (a certificate not accepted on either side, a plain TCP server)."""
        if ssl_context is None:
            raise ValueError(f"Connecting to tls://{loc} {_NO_CREDENTIALS}")
        host, port = get_address_host_port("tls://" + loc)
        max_size = _max_message_size()
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: _TLSFrameProtocol(max_size, scheme="tls"),
                host,
                port,
                ssl=ssl_context,
                server_hostname=host,
                **(extra_conn_args or {}),
            )
        except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as err:
            raise HandshakeError(
                f"TLS handshake with tls://{loc} failed: {describe_tls_error(err)}"
            ) from None
        return TCP(protocol)

    async def listen(
        self, loc: str, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any = None
    ) -> Listener:
        """Listen on ``host:port`` (port 0 picks a free port) for TLS connections."""
        if ssl_context is None:
            raise ValueError(
                f"Listening on tls://{loc} {_NO_CREDENTIALS.replace('<role>', 'scheduler')} "
                "(tls_worker_* for workers and nannies)"
            )
        host, port = get_address_host_port("tls://" + loc)
        listener = TLSListener(handle_comm, handshake_info, ssl_context)
        await listener.start(host, port)
        return listener


backends["tls"] = TLSBackend()
