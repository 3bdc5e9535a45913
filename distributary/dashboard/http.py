"""The scheduler's HTTP server: an aiohttp application served on one socket.

aiohttp is imported only when a server starts (a scheduler without a dashboard never
imports it).  The routes every node serves, ``/health`` and ``/metrics``, are
:func:`node_app`'s (the workers serve them with :mod:`~distributary.dashboard.plain`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distributary.dashboard.sockets import listening_socket

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

        sock = listening_socket(host, port, self.what)
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

    async def stop(self) -> None:
        """Stop serving; the requests running may take a second to end."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


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
