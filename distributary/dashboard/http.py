"""The scheduler's HTTP server: an aiohttp application served on one socket.

aiohttp is imported only when an application starts (a scheduler without a dashboard
never imports it).  The routes every node serves, ``/health`` and ``/metrics``, are
:func:`node_app`'s (the workers serve them with :mod:`~distributary.dashboard.plain`).
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from distributary.dashboard.sockets import listening_socket

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("distributary.dashboard")

# Seconds the requests still running when a server stops may take to end.
_SHUTDOWN_TIMEOUT = 1.0


class HTTPServer:
    """Serves one aiohttp application on a socket bound first (:meth:`bind`), so that
    its port is known, and taken, before the application is ready; ``what`` names it in
    messages ("dashboard")."""

    def __init__(self, what: str):
        self.what = what
        self.host = ""
        self.port = 0
        self._sock: socket.socket | None = None
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        """Whether it is bound (connections wait until the application serves them)."""
        return self._sock is not None

    @property
    def socket(self) -> socket.socket | None:
        """The listening socket, once bound."""
        return self._sock

    def bind(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (another port, with a warning, if that one is taken)."""
        self._sock = listening_socket(host, port, self.what)
        self.host = host
        self.port = self._sock.getsockname()[1]

    async def start(self, app: web.Application) -> None:
        """Serve ``app`` on the socket bound."""
        from aiohttp import web

        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runner = runner
        await web.SockSite(runner, self._sock).start()

    async def stop(self) -> None:
        """Stop serving; the requests running may take a second to end."""
        runner, self._runner = self._runner, None
        sock, self._sock = self._sock, None
        if runner is not None:
            await runner.cleanup()
        if sock is not None:
            sock.close()


def node_app(metrics: CollectorRegistry) -> web.Application:
    """An application serving ``/health`` ("ok") and ``/metrics`` (``metrics`` in the
    Prometheus text format)."""
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
