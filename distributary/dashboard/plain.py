"""A small HTTP/1.1 server on asyncio streams, for the routes of a worker.

A worker serves only ``GET /health`` and ``GET /metrics``: this answers one request per
connection (``Connection: close``), with a body made by the route's function, and costs
no import (aiohttp would add a fifth of a second to the start of every worker process).
A request must arrive within ``REQUEST_TIMEOUT`` and fit in ``MAX_REQUEST`` bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import urlsplit

from distributary.dashboard.sockets import listening_socket

logger = logging.getLogger("distributary.dashboard")

REQUEST_TIMEOUT = 10.0  # seconds
MAX_REQUEST = 16 * 1024  # bytes of request line and headers

# A route gives the body and its content type.
Route = Callable[[], tuple[bytes, str]]


class PlainHTTPServer:
    """Serves ``routes`` (by path) to GET and HEAD requests; ``what`` names it in messages."""

    def __init__(self, what: str, routes: dict[str, Route]):
        self.what = what
        self.routes = routes
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def running(self) -> bool:
        """Whether it serves."""
        return self._server is not None

    async def start(self, host: str, port: int) -> None:
        """Serve on ``host:port`` (another port, with a warning, if that one is taken)."""
        sock = listening_socket(host, port, self.what)
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_REQUEST)
        self.host = host
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop serving, and drop the connections open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            writer.write(_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))
        finally:
            self._open.discard(writer)
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        if len(head) > MAX_REQUEST:
            return _response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        method, _, rest = head.partition(b"\r\n")[0].decode("latin-1").partition(" ")
        target = rest.rpartition(" ")[0] or rest
        route = self.routes.get(urlsplit(target).path)
        if method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, extra=b"Allow: GET, HEAD\r\n")
        if route is None:
            return _response(HTTPStatus.NOT_FOUND)
        try:
            body, content_type = route()
        except Exception:
            logger.exception("The %s could not answer %s", self.what, target)
            return _response(HTTPStatus.INTERNAL_SERVER_ERROR)
        return _response(HTTPStatus.OK, body, content_type, head_only=method == "HEAD")


def _response(
    status: HTTPStatus,
    body: bytes | None = None,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    if body is None:
        body = status.phrase.encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + (b"" if head_only else body)
