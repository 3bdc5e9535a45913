"""Batched streams: :class:`BatchedSend` writes them, :func:`read_messages` reads them.

``send`` only appends to a buffer and wakes one background task per stream. That
task wakes up in a later turn of the event loop, so everything sent during one
turn goes out as one message (a list of dicts); while a write is in progress new
messages accumulate and go out together right after it. With ``interval > 0``
writes are at least ``interval`` seconds apart.

With a ``send_limit`` (the scheduler's streams: ``distributed.comm.send-buffer-limit``) a
peer that reads too slowly cannot make the sender hold messages without bound: while a
write waits for the peer, every :data:`SPILL_MESSAGES` messages sent meanwhile are
encoded at once (work the write would do anyway) and held as bytes; past
``send_limit`` such bytes the connection is dropped, with a warning, and the peer is
treated as gone.

The reader decodes each batch into the message classes of
:mod:`distributary.protocol` that the peer may send, for the one who handles them
(the scheduler, a worker, a client): the only loop that reads a stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_bytes

from distributary.comm import Comm, CommClosedError
from distributary.protocol.message import Catalogue, Message
from distributary.protocol.wire import Encoded, ProtocolError, encode
from distributary.utils.gc_pause import gc_paused

__all__ = ["SPILL_MESSAGES", "BatchedSend", "read_messages", "send_buffer_limit"]

logger = logging.getLogger("distributary.core")

# Messages sent while a write waits that are encoded (and counted) together.
SPILL_MESSAGES = 64


def send_buffer_limit() -> int:
    """The configured ``distributed.comm.send-buffer-limit``, in bytes."""
    return parse_bytes(dask.config.get("distributed.comm.send-buffer-limit"))


class BatchedSend:
    """Send messages over ``comm`` in batches, without ever blocking the sender; with a
    ``send_limit`` (bytes), drop the connection of a peer that falls that far behind."""

    def __init__(self, comm: Comm, interval: float = 0.0, send_limit: int | None = None):
        self.comm = comm
        self.interval = interval
        self.send_limit = send_limit
        # messages held while a write waits, beyond which they are encoded
        self._spill_at = SPILL_MESSAGES if send_limit is not None and comm.encodes else sys.maxsize
        self._spilled: deque[Encoded] = deque()
        self._spilled_bytes = 0
        self._writing = False
        self._buffer: list = []
        self._closed = False
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Future | None = None
        self._last_write = float("-inf")

    def send(self, *msgs: Any) -> None:
        """Queue messages for the next write; CommClosedError if closed."""
        if self._closed or self.comm.closed():
            raise CommClosedError(f"BatchedSend to {self.comm.peer_address} is closed")
        self._buffer.extend(msgs)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._background())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        elif self._writing and len(self._buffer) >= self._spill_at:
            self._spill()

    def _spill(self) -> None:
        """Encode what waits (a peer slow to read), and drop the peer past the limit."""
        payload, self._buffer = self._buffer, []
        try:
            encoded = encode(payload)
        except Exception:
            encoded = encode(self._encodable(payload))
        self._spilled.append(encoded)
        self._spilled_bytes += encoded.nbytes
        if self._spilled_bytes > self.send_limit:
            logger.warning(
                "Dropping the connection to %s: it reads too slowly (%s waiting to be sent, "
                "more than distributed.comm.send-buffer-limit: %s)",
                self.comm.peer_address,
                format_bytes(self._spilled_bytes),
                format_bytes(self.send_limit),
            )
            self.abort()

    def _encodable(self, payload: list) -> list:
        """The messages of ``payload`` that can be encoded; the others are logged."""
        kept = []
        for msg in payload:
            try:
                encode([msg])
            except Exception:
                logger.exception("Dropping a message to %s", self.comm.peer_address)
            else:
                kept.append(msg)
        return kept

    async def _background(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._spilled:
                    spilled = self._spilled.popleft()
                    self._spilled_bytes -= spilled.nbytes
                    await self._write(spilled)
                    continue
                if not self._buffer:
                    if self._closed:
                        return
                    self._wakeup = loop.create_future()
                    try:
                        await self._wakeup
                    finally:
                        self._wakeup = None
                    continue
                if self.interval:
                    delay = self._last_write + self.interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                payload, self._buffer = self._buffer, []
                await self._write(payload)
                del payload  # (not kept alive while the stream waits: it may be a big graph)
                self._last_write = loop.time()
        except CommClosedError:
            pass
        except Exception:
            logger.exception("BatchedSend to %s failed", self.comm.peer_address)
            self.comm.abort()
        finally:
            self._closed = True
            self._buffer.clear()
            self._spilled.clear()

    async def _write(self, payload: list | Encoded) -> None:
        self._writing = True
        try:
            await self.comm.write(payload)
        except CommClosedError:
            raise
        except Exception:
            if type(payload) is Encoded:
                raise
            # Some message cannot be encoded: send the others, drop and log that one.
            for msg in payload:
                try:
                    await self.comm.write([msg])
                except CommClosedError:
                    raise
                except Exception:
                    logger.exception("Dropping a message to %s", self.comm.peer_address)
        finally:
            self._writing = False

    async def close(self, timeout: float | None = None) -> None:
        """Flush what is buffered (waiting at most ``timeout`` seconds), then close."""
        self._closed = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self.abort()
                return
        await self.comm.close()

    def abort(self) -> None:
        """Drop what is buffered and abort the comm."""
        self._closed = True
        self._buffer.clear()
        self._spilled.clear()
        if self._task is not None:
            self._task.cancel()
        self.comm.abort()

    def closed(self) -> bool:
        """Whether the stream is closed (locally or because the comm closed)."""
        return self._closed or self.comm.closed()

    def __repr__(self) -> str:
        state = "closed" if self.closed() else f"{len(self._buffer)} buffered"
        return f"<BatchedSend to {self.comm.peer_address}: {state}>"


async def read_messages(
    comm: Comm, catalogue: Catalogue, peer: str, handle: Callable[[list[Message]], Any]
) -> None:
    """Read batches from ``comm`` until it closes; pass the messages of each, decoded as
    ``catalogue`` says and from ``peer``, in order to ``handle`` (awaited if it returns
    an awaitable), and stop when it returns False.

    A malformed message is dropped with a warning that names its op and field; the
    others are handled.  The cycle collector is paused while a batch is decoded: a
    graph of 100,000 tasks is millions of new objects, none of them in a cycle.
    """
    while True:
        try:
            batch = await comm.read()
        except CommClosedError:
            return
        if isinstance(batch, dict):
            batch = (batch,)
        elif not isinstance(batch, list | tuple):
            logger.warning("Malformed batch from %s: %.200r", peer, batch)
            continue
        messages, msg = [], None
        with gc_paused():
            for msg in batch:
                try:
                    messages.append(catalogue.decode(msg, peer))
                except ProtocolError as exc:
                    logger.warning("Dropped a message from %s: %s", peer, exc)
        batch = msg = None  # (not kept while waiting: a batch may be a graph of 100,000 tasks)
        result = handle(messages)
        if inspect.isawaitable(result):
            result = await result
        messages = None
        if result is False:
            return
