"""Server: answers request/reply operations.

Every comm a server accepts is served by :meth:`Server.handle_comm`: it reads a
message ``{"op": name, ...}``, decodes it into the request class of that op (see
:mod:`distributary.protocol.requests`), calls ``handlers[RequestClass](comm, request)``
and writes the result back (unless the message says ``"reply": False``). A request
that does not decode, or a handler that raises, makes the reply an error message (see
:func:`distributary.protocol.error_message`) and the server keeps serving the comm.
A handler may also take the comm over for good, e.g. to read it as a batched stream
(:func:`distributary.core.read_messages`); :meth:`Server.close` aborts it then too.

``blocked`` names operations the server refuses (its ``blocked_handlers``): their
handlers are replaced by one that raises a ValueError saying so, which the caller gets
as the reply.  Names are the ops (``run``, ``who-has``; ``_`` and ``-`` alike) or
dask.distributed's names for them (``run_function``, ``broadcast``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from distributary.comm import Comm, CommClosedError, Listener, listen
from distributary.protocol import error_message
from distributary.protocol.message import Catalogue
from distributary.protocol.requests import Request, wants_reply

__all__ = ["Server"]

logger = logging.getLogger("distributary.core")

# dask.distributed's names of operations that have other names here
_DASK_NAMES = {"run_function": "run", "broadcast": "run_on_workers"}


def _canonical(name: str) -> str:
    name = name.replace("-", "_")
    return _DASK_NAMES.get(name, name)


def _describe(msg: object, limit: int = 200) -> str:
    text = repr(msg)
    return text if len(text) <= limit else text[:limit] + "..."


class Server:
    """Serve ``handlers``: request/reply operations, by request class."""

    def __init__(
        self,
        handlers: dict[type, Callable],
        handshake_info: dict | None = None,
        *,
        listen_args: dict | None = None,
        blocked: Iterable[str] = (),
        name: str = "Server",
    ):
        self.name = name
        self.blocked_handlers = [str(op) for op in blocked]
        self._blocked = {_canonical(op) for op in self.blocked_handlers}
        self.handlers: dict[type, Callable] = {}
        self._requests = Catalogue()
        self.add_handlers(handlers)
        self.handshake_info = dict(handshake_info or {})
        self.listen_args = dict(listen_args or {})
        self.listeners: list[Listener] = []
        # comms being served, and the task serving each
        self._comms: dict[Comm, asyncio.Task | None] = {}
        self._closed = False

    def add_handlers(self, handlers: dict[type, Callable]) -> None:
        """Serve these requests too: ``{RequestClass: handler(comm, request)}``."""
        served = set(self.handlers) & set(handlers)
        if served:
            raise ValueError(f"requests served twice: {sorted(cls.op for cls in served)}")
        self.handlers.update(
            {
                cls: self._refuse if _canonical(cls.op) in self._blocked else handler
                for cls, handler in handlers.items()
            }
        )
        self._requests = Catalogue(*self.handlers)

    @property
    def address(self) -> str:
        """The address of the first listener."""
        if not self.listeners:
            raise ValueError(f"{type(self).__name__} is not listening")
        return self.listeners[0].address

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _refuse(self, comm: Comm, request: Request) -> None:
        raise ValueError(
            f"The {request.op!r} operation is blocked on this {self.name} (its "
            "blocked_handlers), so that peers cannot use it"
        )

    def _check_blocked_names(self) -> None:
        known = {_canonical(cls.op) for cls in self.handlers}
        unknown = sorted(op for op in self.blocked_handlers if _canonical(op) not in known)
        if unknown:
            logger.warning(
                "blocked_handlers of the %s: %s name no operation of it (it has: %s)",
                self.name,
                ", ".join(map(repr, unknown)),
                ", ".join(sorted(cls.op for cls in self.handlers)),
            )

    async def listen(self, address: str) -> Listener:
        """Start accepting comms on ``address``; may be called for several addresses."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not self.listeners:
            self._check_blocked_names()
        listener = await listen(
            address, self.handle_comm, **self.listen_args, **self.handshake_info
        )
        self.listeners.append(listener)
        return listener

    async def handle_comm(self, comm: Comm) -> None:
        """Answer operations on ``comm`` until it closes."""
        if self._closed:
            comm.abort()
            return
        self._comms[comm] = asyncio.current_task()
        try:
            while True:
                try:
                    msg = await comm.read()
                except CommClosedError:
                    return
                if not isinstance(msg, dict | Request):
                    result: Any = error_message(
                        ValueError(f"Expected a dict with an 'op' key, got {_describe(msg)}")
                    )
                    if not await self._reply(comm, result):
                        return
                    continue
                op = msg.op if isinstance(msg, Request) else msg.get("op")
                error: Exception | None = None
                if not isinstance(op, str) or op not in self._requests:
                    error = ValueError(f"Unknown operation {op!r}")
                else:
                    try:
                        request = self._requests.decode(msg, comm.peer_address)
                        result = self.handlers[type(request)](comm, request)
                        if inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:  # (a ProtocolError too)
                        error = exc
                    if comm.closed():
                        if error is not None:  # (e.g. a stream handler gave up on the comm)
                            logger.error(
                                "Operation %r from %s failed; connection closed",
                                op,
                                comm.peer_address,
                                exc_info=error,
                            )
                        return
                if not wants_reply(msg):
                    if error is not None:
                        logger.error(
                            "Operation %r from %s failed (no reply wanted)",
                            op,
                            comm.peer_address,
                            exc_info=error,
                        )
                    continue
                if error is not None:
                    result = error_message(error)
                if not await self._reply(comm, result):
                    return
        finally:
            self._comms.pop(comm, None)
            if not comm.closed():
                comm.abort()

    @staticmethod
    async def _reply(comm: Comm, result: Any) -> bool:
        """Write ``result`` (or the error of encoding it); False if the comm closed."""
        try:
            await comm.write(result)
        except CommClosedError:
            return False
        except Exception as exc:  # the result cannot be encoded
            try:
                await comm.write(error_message(exc))
            except CommClosedError:
                return False
        return True

    async def close(self) -> None:
        """Stop listening, abort every comm being served and wait for their tasks."""
        if self._closed:
            return
        self._closed = True
        for listener in self.listeners:
            listener.stop()
        current = asyncio.current_task()
        tasks = []
        for comm, task in list(self._comms.items()):
            comm.abort()
            if task is not None and task is not current and not task.done():
                task.cancel()
                tasks.append(task)
        for listener in self.listeners:
            await listener.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __repr__(self) -> str:
        where = self.listeners[0].address if self.listeners else "not listening"
        return f"<{type(self).__name__} {where}, {len(self._comms)} comms>"
