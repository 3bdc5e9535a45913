"""Comms and listeners: the transport-independent part of the comm layer.

A :class:`Comm` is one end of a message-oriented connection (``read`` returns
whole messages, ``write`` sends one). :func:`connect` opens a comm to an address
and :func:`listen` accepts comms on one, handing each to a callback in its own
task. Transports (``tcp``, ``inproc``) register a :class:`Backend` under their
scheme in :data:`backends`.

Every connection starts with a handshake: each side writes
``{"distributary": PROTOCOL_VERSION, **handshake_info}`` and reads the peer's,
which becomes ``comm.peer_info``. A version mismatch closes the connection.  The peer's
handshake is plain data of a few kilobytes at most (see
:func:`~distributary.protocol.wire.loads_handshake`), and nothing else from the peer is
read until it is accepted; over TLS the peer's certificate was checked before that.
A listener may answer a handshake with ``{"refused": reason}`` and close.

``connect`` and ``listen`` take the TLS context (``ssl_context``) and
``require_encryption`` (see :meth:`distributary.Security.get_connection_args`): with
``require_encryption`` a transport that is not encrypted (``tcp``) is refused, in-process
ones excepted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from distributary.comm.addressing import normalize_address, parse_address

__all__ = [
    "PROTOCOL_VERSION",
    "Backend",
    "Comm",
    "CommClosedError",
    "HandshakeError",
    "Listener",
    "backends",
    "connect",
    "listen",
]

logger = logging.getLogger("distributary.comm")

PROTOCOL_VERSION = 1
# Largest number of frames a peer may announce for one message.
MAX_FRAMES = 100_000

HandleComm = Callable[["Comm"], Awaitable[None]]


class CommClosedError(OSError):
    """The comm is closed (locally, by the peer, or because the peer misbehaved)."""


class HandshakeError(CommClosedError):
    """The peer's handshake is not acceptable (e.g. another protocol version)."""


class Comm(ABC):
    """One end of a connection that carries whole messages.

    ``encodes``: whether messages are encoded into bytes on the way (so that one
    encoded beforehand, a :class:`~distributary.protocol.wire.Encoded`, may be written).
    """

    encodes = True

    def __init__(self, local_address: str, peer_address: str):
        self.local_address = local_address
        self.peer_address = peer_address
        self.peer_info: dict = {}

    @abstractmethod
    async def read(self) -> Any:
        """Return the next message; raise CommClosedError once the comm is closed."""

    async def read_handshake(self) -> dict:
        """Return the peer's handshake (plain data); HandshakeError if it is not one."""
        msg = await self.read()
        if not isinstance(msg, dict):
            raise HandshakeError(f"The handshake from {self.peer_address} is not a dict: {msg!r}")
        return msg

    def handshake_accepted(self) -> None:  # noqa: B027  (nothing to do for most comms)
        """The peer's handshake is accepted: read what it sends next."""

    @abstractmethod
    async def write(self, msg: Any) -> int:
        """Send one message and return the number of bytes written."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what was written and close the connection."""

    @abstractmethod
    def abort(self) -> None:
        """Close the connection at once, dropping anything not yet sent."""

    @abstractmethod
    def closed(self) -> bool:
        """Whether the comm is closed."""

    def __repr__(self) -> str:
        state = "closed" if self.closed() else "open"
        return f"<{type(self).__name__} {state} {self.local_address} -> {self.peer_address}>"


class Listener(ABC):
    """Accepts comms on an address and hands each to ``handle_comm`` in its own task."""

    address: str

    def __init__(self, handle_comm: HandleComm, handshake_info: dict):
        self._handle_comm = handle_comm
        self._handshake_info = handshake_info
        self._tasks: set[asyncio.Task] = set()

    @abstractmethod
    def stop(self) -> None:
        """Stop accepting new comms (idempotent); comms already accepted go on."""

    async def close(self) -> None:
        """Stop accepting; cancel the tasks serving accepted comms and abort those comms."""
        self.stop()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, comm: Comm) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, comm: Comm) -> None:
        try:
            try:
                await handshake(comm, self._handshake_info, connect_timeout())
            except Exception as err:
                comm.abort()
                if isinstance(err, HandshakeError):
                    logger.warning("Rejected connection from %s: %s", comm.peer_address, err)
                else:
                    logger.debug("Handshake with %s failed: %s", comm.peer_address, err)
                return
            await self._handle_comm(comm)
        except asyncio.CancelledError:
            comm.abort()
            raise
        except Exception:
            comm.abort()
            logger.exception("Error while handling the comm from %s", comm.peer_address)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'address', '?')}>"


class Backend(ABC):
    """A transport, registered in :data:`backends` under its scheme.

    ``encrypted``: whether what it carries is safe from the network (TLS, or never
    leaving the process), as ``require_encryption`` asks.
    """

    encrypted = False

    @abstractmethod
    async def connect(
        self, loc: str, ssl_context: Any = None, extra_conn_args: dict | None = None
    ) -> Comm:
        """Open a connection to ``loc`` (no handshake); OSError if refused, HandshakeError
        if the peer answered and failed the transport's own handshake (TLS)."""

    @abstractmethod
    async def listen(
        self, loc: str, handle_comm: HandleComm, handshake_info: dict, ssl_context: Any = None
    ) -> Listener:
        """Start a listener on ``loc``."""


backends: dict[str, Backend] = {}


def connect_timeout() -> float:
    """The configured ``distributed.comm.timeouts.connect``, in seconds."""
    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")


def _backend(addr: str, require_encryption: bool, doing: str) -> tuple[Backend, str]:
    scheme, loc = parse_address(addr)
    try:
        backend = backends[scheme]
    except KeyError:
        raise ValueError(f"No transport for scheme {scheme!r} in address {addr!r}") from None
    if require_encryption and not backend.encrypted:
        raise RuntimeError(
            f"Encryption is required (require_encryption, distributed.comm.require-encryption):"
            f" refusing to {doing} {addr}, which is not encrypted; use tls://"
        )
    return backend, loc


async def handshake(comm: Comm, handshake_info: dict, timeout: float) -> dict:
    """Exchange handshakes on a fresh comm; set and return ``comm.peer_info``."""

    async def exchange() -> Any:
        await comm.write({**handshake_info, "distributary": PROTOCOL_VERSION})
        return await comm.read_handshake()

    try:
        peer = await asyncio.wait_for(exchange(), max(timeout, 0.0))
    except asyncio.TimeoutError:
        raise TimeoutError(f"No handshake from {comm.peer_address} within {timeout} s") from None
    except HandshakeError:
        raise
    except CommClosedError as err:
        raise CommClosedError(
            f"{comm.peer_address} closed the connection during the handshake: {err}"
        ) from None
    if "refused" in peer:
        raise HandshakeError(f"{comm.peer_address} refused the connection: {peer['refused']}")
    version = peer.get("distributary")
    if version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"Protocol version mismatch with {comm.peer_address}: ours is "
            f"{PROTOCOL_VERSION}, the peer's is {version!r}"
        )
    comm.peer_info = peer
    comm.handshake_accepted()
    return peer


async def connect(
    addr: str,
    timeout: float | None = None,
    *,
    retry_refused: bool = True,
    ssl_context: Any = None,
    require_encryption: bool = False,
    extra_conn_args: dict | None = None,
    **handshake_info: Any,
) -> Comm:
    """Open a comm to ``addr`` and exchange handshakes.

    Refused connections (nothing listening yet, including a missing inproc
    address) are retried with a short backoff; when ``timeout`` (default
    ``distributed.comm.timeouts.connect``) runs out, TimeoutError is raised.
    With ``retry_refused=False`` a refusal raises ConnectionRefusedError at once:
    for peers that were listening before, a refusal means they are gone.
    A failed TLS handshake, a refusal by the listener or a version mismatch raises
    HandshakeError (a CommClosedError) at once, naming the cause.  ``ssl_context`` is
    for ``tls://`` addresses; ``extra_conn_args`` go to the event loop's
    ``create_connection``.
    """
    if timeout is None:
        timeout = connect_timeout()
    backend, loc = _backend(normalize_address(addr), require_encryption, "connect to")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    last_error: object = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(
                f"Timed out trying to connect to {addr} after {timeout} s: {last_error}"
            )
        try:
            comm = await asyncio.wait_for(
                backend.connect(loc, ssl_context, extra_conn_args), remaining
            )
            break
        except asyncio.TimeoutError:
            last_error = "connection attempt timed out"
        except HandshakeError:
            raise  # (the peer answered: trying again would get the same answer)
        except OSError as err:
            if not retry_refused:
                raise ConnectionRefusedError(f"Could not connect to {addr}: {err}") from err
            last_error = err
            remaining = deadline - loop.time()
            await asyncio.sleep(min(delay * (1 + random.random()), max(remaining, 0)))
            delay = min(delay * 2, 0.5)
    try:
        await handshake(comm, handshake_info, deadline - loop.time())
    except TimeoutError as err:
        comm.abort()
        raise TimeoutError(
            f"Timed out trying to connect to {addr} after {timeout} s: {err}"
        ) from None
    except BaseException:
        comm.abort()
        raise
    return comm


async def listen(
    addr: str,
    handle_comm: HandleComm,
    *,
    ssl_context: Any = None,
    require_encryption: bool = False,
    **handshake_info: Any,
) -> Listener:
    """Start accepting comms on ``addr`` (port 0 picks a free port; ``inproc`` auto-names).

    Each accepted comm is handshaken, then handed to ``handle_comm`` in its own
    task; an exception from ``handle_comm`` is logged and aborts that comm.
    ``Listener.address`` is the address peers should connect to.  ``tls://`` needs
    ``ssl_context``; with ``require_encryption`` a ``tcp://`` address is refused
    (RuntimeError).
    """
    backend, loc = _backend(normalize_address(addr), require_encryption, "listen on")
    return await backend.listen(loc, handle_comm, handshake_info, ssl_context)
