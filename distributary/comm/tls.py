"""TLS transport: the TCP transport (:mod:`distributary.comm.tcp`: its framing, comms and
flow control) with the standard library's ``ssl`` in between, and mutual
authentication.

Theory of operation
-------------------
The TLS layer is the frame protocol's own: an ``ssl.SSLObject`` over two memory BIOs,
on the plain TCP transport (asyncio's SSL transport costs several times more Python per
message).  Records read from the socket go into the incoming BIO and are decrypted
straight into the frame parser's buffer (a big frame's own buffer included); what the
comm writes goes through :class:`_TLSTransport`, which encrypts it and hands the
records to the socket's transport, whose flow control then applies as over TCP.

A listener's connection costs a small buffer and a timer until the peer's first bytes:
a TLS ClientHello starts the TLS handshake, in which the peer must present a
certificate the CA signed; anything else (a plain ``tcp://`` client) is answered with a
plain handshake saying ``refused`` and why, and closed.  A peer that does not finish
the TLS handshake within ``distributed.comm.timeouts.connect`` is dropped.  Only then
does the connection become a comm, and only then is anything it sends parsed.  A failed
handshake sends the peer the TLS alert that says why, and the listener logs it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from distributary.comm.addressing import get_address_host_port, unparse_host_port
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
_HANDSHAKE_RECORDS = 4 * 1024  # bytes read at once during the TLS handshake
_RECORDS = 256 * 1024  # ... and after it
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


class _TLSTransport:
    """What a TLS connection's comm writes to: encrypts, and hands the records to the
    socket's transport (everything else is that transport's)."""

    __slots__ = ("_out", "_protocol", "_raw", "_ssl")

    def __init__(self, raw: Any, sslobj: ssl.SSLObject, out: ssl.MemoryBIO, protocol: Any):
        self._raw, self._ssl, self._out, self._protocol = raw, sslobj, out, protocol

    def write(self, data: Any) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as err:
            self._protocol.tls_failed(err)
            return
        self._raw.write(self._out.read())

    def close(self) -> None:
        try:
            self._ssl.unwrap()  # (close_notify; the peer's is not waited for)
        except (ssl.SSLError, ValueError):
            pass
        if self._out.pending:
            self._raw.write(self._out.read())
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        return self._raw.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_closing(self) -> bool:
        return self._raw.is_closing()


class _TLSFrameProtocol(_FrameProtocol):
    """The TCP framing over TLS, which this protocol does itself (see the module)."""

    def __init__(
        self,
        max_size: int,
        on_connection: Any = None,
        scheme: str = "tls",
        *,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        timeout: float | None = None,
        pending: set | None = None,
        address: str = "",
    ):
        super().__init__(max_size, on_connection, scheme)
        self._context = context
        self._server_side = server_side
        self._hostname = server_hostname
        self._timeout = timeout
        self._pending = pending  # (the listener's connections not through TLS yet)
        self._address = address
        self.tls_ready: asyncio.Future | None = None  # (a client's: awaited by connect)
        self._raw: Any = None
        self._ssl: ssl.SSLObject | None = None
        self._in = self._out = None
        self._tls_done = self._refusing = False
        self._timer: asyncio.TimerHandle | None = None
        self._records = memoryview(bytearray(_HANDSHAKE_RECORDS))

    # --- the TLS handshake -------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._raw = transport
        loop = asyncio.get_running_loop()
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer = "tls://" + unparse_host_port(peername[0], peername[1])
        if self._pending is not None:
            self._pending.add(self)
        if self._timeout is not None:
            self._timer = loop.call_later(self._timeout, self._too_slow)
        if not self._server_side:
            self.tls_ready = loop.create_future()
            self._start_tls()  # (the client speaks first)

    def _start_tls(self) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = self._context.wrap_bio(
            self._in, self._out, server_side=self._server_side, server_hostname=self._hostname
        )
        self._step()

    def _step(self) -> None:
        """Take the TLS handshake as far as what has arrived allows."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception as err:
            self.tls_failed(err)
            return
        self._flush()
        self._tls_done = True
        self._settled()
        self._records = memoryview(bytearray(_RECORDS))
        super().connection_made(_TLSTransport(self._raw, self._ssl, self._out, self))
        if self.tls_ready is not None:
            self.tls_ready.set_result(None)
        self._decrypt()  # (what came with the handshake's last records)

    def _settled(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.discard(self)

    def _too_slow(self) -> None:
        self._timer = None
        self.tls_failed(TimeoutError(f"no TLS handshake within {self._timeout} s"))

    def tls_failed(self, err: BaseException) -> None:
        """Give up on the connection: tell the peer why (a TLS alert), and say so."""
        if self.error is not None or self.lost:
            return
        self._flush()
        self.error = describe_tls_error(err)
        self._settled()
        if self.tls_ready is not None and not self.tls_ready.done():
            self.tls_ready.set_exception(HandshakeError(self.error))
        elif self._server_side and not self._tls_done:
            log = logger.warning if isinstance(err, ssl.SSLError) else logger.debug
            log("Rejected a TLS connection from %s: %s", self.peer, self.error)
        self.wake_reader()
        self._raw.close()  # (after the alert has gone out)

    def _refuse(self) -> None:
        """A peer that does not speak TLS: a plain handshake saying why, then close."""
        self._refusing = True
        self._settled()
        logger.warning(
            "Refused a connection from %s on %s: the peer does not speak TLS",
            self.peer,
            self._address,
        )
        reason = (
            f"{self._address} takes TLS connections only: connect to it with a tls:// "
            "address and TLS credentials (security=Security(...))"
        )
        self._raw.write(frame_message({"distributary": PROTOCOL_VERSION, "refused": reason}))
        self._raw.write_eof()  # (then drop what it sends, until it closes)
        self._timer = asyncio.get_running_loop().call_later(self._timeout or 5, self._raw.abort)

    def _flush(self) -> None:
        if self._out is not None and self._out.pending:
            self._raw.write(self._out.read())

    # --- records in ----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._records

    def buffer_updated(self, nbytes: int) -> None:
        if self._refusing or self.error is not None:
            return
        if self._ssl is None:  # (a listener's connection: the peer's first bytes)
            if self._records[0] != _TLS_HANDSHAKE_RECORD:
                self._refuse()
                return
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._ssl = self._context.wrap_bio(self._in, self._out, server_side=True)
        self._in.write(self._records[:nbytes])
        if self._tls_done:
            self._decrypt()
        else:
            self._step()

    def _decrypt(self) -> None:
        """Decrypt what has arrived into the frame parser's buffer, and parse it."""
        sslobj, incoming = self._ssl, self._in
        parse = super().buffer_updated
        buffer = super().get_buffer
        while self.error is None and not self.lost:
            view = buffer(-1)
            try:
                n = sslobj.read(len(view), view)
            except ssl.SSLWantReadError:  # (the rest of a record is still to come)
                break
            except ssl.SSLZeroReturnError:  # (the peer's close_notify)
                self._raw.close()
                break
            except ssl.SSLError as err:
                self.tls_failed(err)
                return
            if not n:
                break
            parse(n)
            if not incoming.pending and not sslobj.pending():
                break  # (all read: no need for the exception that says so)
        if self._out.pending:  # (TLS's own messages, e.g. session tickets)
            self._raw.write(self._out.read())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._tls_done and self.error is None:
            self.error = describe_tls_error(exc or ConnectionResetError("closed by the peer"))
            if self.tls_ready is not None and not self.tls_ready.done():
                self.tls_ready.set_exception(HandshakeError(self.error))
        elif self.error is None:
            if isinstance(exc, ssl.SSLError):
                self.error = describe_tls_error(exc)
            elif exc is None and self.handshaking:
                self.error = (
                    "closed by the peer before its handshake: it may have refused this side's "
                    "certificate (is one given, signed by the CA the peer trusts, still valid?)"
                )
        self._settled()
        super().connection_lost(exc)


class TLSListener(TCPListener):
    """Accepts TLS connections from peers whose certificate the CA signed."""

    scheme = "tls"

    def __init__(self, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any):
        super().__init__(handle_comm, handshake_info)
        self._ssl_context = ssl_context
        self._timeout = connect_timeout()
        self._pending: set[_TLSFrameProtocol] = set()  # (not through the TLS handshake)

    def _make_protocol(self) -> _FrameProtocol:
        return _TLSFrameProtocol(
            self._max_size,
            self._on_connection,
            context=self._ssl_context,
            server_side=True,
            timeout=self._timeout,
            pending=self._pending,
            address=getattr(self, "address", "this tls:// address"),
        )

    def stop(self) -> None:
        """Stop accepting connections (idempotent); those still in their TLS handshake
        are dropped."""
        super().stop()
        for protocol in list(self._pending):
            protocol.tls_failed(ConnectionAbortedError("the listener stopped"))


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
        _, protocol = await asyncio.get_running_loop().create_connection(
            lambda: _TLSFrameProtocol(
                max_size, context=ssl_context, server_side=False, server_hostname=host
            ),
            host,
            port,
            **(extra_conn_args or {}),
        )
        try:
            await protocol.tls_ready
        except HandshakeError as err:
            raise HandshakeError(f"TLS handshake with tls://{loc} failed: {err}") from None
        finally:
            if protocol.error is not None or not protocol.tls_ready.done():
                protocol._raw.abort()
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
