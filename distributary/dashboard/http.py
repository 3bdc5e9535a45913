"""An aiohttp application served on one socket: the HTTP side of a scheduler or a worker.

The socket is bound here, so that a port in use is found before anything is served: it
is then a warning and a random port, as in dask.distributed, never a node that fails to
start.  aiohttp is imported only when a server starts.
"""

from __future__ import annotations

import errno
import logging
import socket
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("distributary.dashboard")

# Seconds the requests still running when a server stops may take to end.
_SHUTDOWN_TIMEOUT = 1.0


class HTTPServer:
    """Serves one aiohttp application; ``what`` names it in messages ("dashboard")."""

    def __init__(self, what: str):
        self.what = what
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        """Whether it serves."""
        return self._runner is not None

    async def start(self, app: web.Application, host: str, port: int) -> None:
        """Serve ``app`` on ``host:port`` (another port, with a warning, if that one is
        taken)."""
        from aiohttp import web

        sock = self._bind(host, port)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = sock.getsockname()[1]

    def _bind(self, host: str, port: int) -> socket.socket:
        try:
            return _listening_socket(host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise OSError(
                    exc.errno, f"Could not serve the {self.what} on {host}:{port}: {exc.strerror}"
                ) from None
        sock = _listening_socket(host, 0)
        new_port = sock.getsockname()[1]
        warnings.warn(
            f"Port {port} is already in use (another cluster running?): the {self.what} is "
            f"served on port {new_port} instead",
            UserWarning,
            stacklevel=2,
        )
        return sock

    async def stop(self) -> None:
        """Stop serving; the requests running may take a second to end."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (every interface when ``host`` is "")."""
    family = socket.AF_INET
    if host:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def node_app(metrics: CollectorRegistry) -> web.Application:
    """An application serving ``/health`` ("ok") and ``/metrics`` (``metrics`` in the
    Prometheus text format), the routes every node serves."""
    from aiohttp import web

    from distributary.dashboard.metrics import CONTENT_TYPE, exposition

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=exposition(metrics), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", scrape)
    return app
