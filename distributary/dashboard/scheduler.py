"""The scheduler's HTTP server: the dashboard's pages and their live feed, ``/metrics`` and
``/health``.

It listens on the scheduler's ``dashboard_address`` (None: no HTTP server at all), on
the host the scheduler listens on unless the address names one (127.0.0.1 by default).
The pages are static files (``dashboard/static``: HTML, CSS and the JavaScript that
draws everything in the browser); they read JSON from ``/api/...`` and take their live
updates from ``/events`` (:class:`~distributary.dashboard.feed.LiveFeed`).  What they
show is read from the scheduler's state (:mod:`~distributary.dashboard.views`), from
its task stream and from its progress, never per task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta

from distributary.comm.addressing import get_address_host, parse_address
from distributary.dashboard import views
from distributary.dashboard.address import format_dashboard_link, link_host, parse_http_address
from distributary.dashboard.http import HTTPServer
from distributary.dashboard.metrics import Arrivals
from distributary.dashboard.stream import StreamCursor
from distributary.protocol.diagnostics import GetTaskStream
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.task_stream import ask_workers, compute_start

if TYPE_CHECKING:
    from aiohttp import web

    from distributary.dashboard.feed import LiveFeed
    from distributary.scheduler.progress import ProgressExtension, ProgressWatch

logger = logging.getLogger("distributary.dashboard")

STATIC = os.path.join(os.path.dirname(__file__), "static")
DEFAULT_PORT = 8787
PAGES = {"/status": "status.html", "/workers": "workers.html"}


class SchedulerHTTP(SchedulerExtension):
    """The HTTP server of the scheduler, on ``dashboard_address`` (None: none); the pages
    read the workers' task streams and the scheduler's ``progress`` extension."""

    def __init__(
        self,
        scheduler: SchedulerContext,
        dashboard_address: Any,
        progress: ProgressExtension,
    ):
        super().__init__(scheduler)
        self.progress = progress
        self._watch: ProgressWatch | None = None  # (while pages are open)
        self._cursor = StreamCursor(_stream_length())
        self._address = (
            None
            if dashboard_address is None
            else parse_http_address(dashboard_address, "", DEFAULT_PORT)
        )
        self.arrivals = Arrivals()
        self.instruction_handlers.update(self.arrivals.instruction_handlers)
        self.server = HTTPServer("dashboard")
        self.feed: LiveFeed | None = None
        self._starting: asyncio.Task | None = None

    @property
    def service_ports(self) -> dict[str, int]:
        """``{"dashboard": port}`` while it serves."""
        return {"dashboard": self.server.port} if self.server.running else {}

    @property
    def link(self) -> str:
        """The URL of the status page ("" when there is no dashboard)."""
        if not self.server.running:
            return ""
        return format_dashboard_link(
            link_host(self.server.host, _tcp_host(self.scheduler.address)), self.server.port
        )

    async def serve(self, listen_address: str) -> None:
        """Listen (if there is a dashboard address), on the host of the scheduler's
        ``listen_address`` unless the dashboard address names one.

        The application starts with the first connection, which waits for it in the
        socket's backlog: until somebody looks, the dashboard costs a socket, and
        aiohttp is not even imported (it takes about 0.15 s).
        """
        if self._address is None:
            return
        host, port = self._address
        if not host:
            host = _tcp_host(listen_address) or "127.0.0.1"
        self.server.bind(host, port)
        asyncio.get_running_loop().add_reader(self.server.socket, self._first_connection)
        logger.info("Dashboard at: %s", self.link)

    def _first_connection(self) -> None:
        asyncio.get_running_loop().remove_reader(self.server.socket)
        self._starting = asyncio.get_running_loop().create_task(self._start_app())

    async def _start_app(self) -> None:
        from distributary.dashboard.feed import LiveFeed

        try:
            config = dask.config.get
            self.feed = LiveFeed(
                self._frame,
                interval=parse_timedelta(config("distributed.dashboard.update-interval")),
                max_connections=int(config("distributed.dashboard.max-connections")),
                send_timeout=parse_timedelta(config("distributed.dashboard.send-timeout")),
                started=self._pages_opened,
                stopped=self._pages_closed,
            )
            await self.server.start(self._app())
        except Exception:
            logger.exception("The dashboard could not start")
            await self.server.stop()

    async def close(self) -> None:
        """Stop serving: the live pages are told first."""
        if self.server.socket is not None and self._starting is None:
            asyncio.get_running_loop().remove_reader(self.server.socket)
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            try:
                await self._starting
            except asyncio.CancelledError:
                pass
        if self.feed is not None:
            await self.feed.close()
        await self.server.stop()

    # ------------------------------------------------------------------ the application

    def _app(self) -> web.Application:

        from distributary.dashboard.http import node_app
        from distributary.dashboard.metrics import SchedulerCollector, registry
        from distributary.scheduler.methods import adaptive_target

        metrics = registry(
            SchedulerCollector(
                self.scheduler.state, self.arrivals, lambda: adaptive_target(self.scheduler)
            )
        )
        app = node_app(metrics)
        add = app.router.add_get
        add("/", _to_status)
        for path, page in PAGES.items():
            add(path, _page(page))
        add("/info/worker/{address:.+}", _page("info.html"))
        add("/info/task/{key:.+}", _page("info.html"))
        add("/api/status", self._api_status)
        add("/api/workers", self._api_workers)
        add("/api/worker/{address:.+}", self._api_worker)
        add("/api/task/{key:.+}", self._api_task)
        add("/events", self.feed.serve)
        app.router.add_static("/static", STATIC)
        return app

    async def _api_status(self, request: web.Request) -> web.Response:
        return _json(await self._frame(True))

    async def _api_workers(self, request: web.Request) -> web.Response:
        return _json(views.workers(self.scheduler.state))

    async def _api_worker(self, request: web.Request) -> web.Response:
        from aiohttp import web

        text = request.match_info["address"]
        state = self.scheduler.state
        ws = views.find_worker(state, text)
        if ws is None:
            raise web.HTTPNotFound(text=f"No worker {text!r}")
        return _json(views.worker_detail(state, ws))

    async def _api_task(self, request: web.Request) -> web.Response:
        from aiohttp import web

        text = request.match_info["key"]
        state = self.scheduler.state
        ts = views.find_task(state, text)
        if ts is None:
            raise web.HTTPNotFound(text=f"No task {text!r} (it may be forgotten)")
        return _json(views.task_detail(state, ts))

    # ------------------------------------------------------------------ frames

    def _pages_opened(self) -> None:
        self._watch = self.progress.acquire()
        self._cursor.busy = True  # (the newest first: what ran while no page was open)

    def _pages_closed(self) -> None:
        if self._watch is not None:
            self._watch.release()
            self._watch = None

    async def _frame(self, first: bool) -> dict[str, Any]:
        """What the pages are sent: the workers' figures, the progress of each task
        prefix, and the task stream: the rectangles a page shows on opening
        (``first``), else those that are new."""
        cursor = self._cursor
        if first:
            stream = list(cursor.recent)
        else:
            now = time.time()
            request = GetTaskStream(**cursor.request(len(self.scheduler.state.workers)))
            replies = await ask_workers(self.scheduler, request)
            records = sorted((r for reply in replies.values() for r in reply), key=compute_start)
            stream = cursor.take(records, now)
        watch = self._watch
        return {
            "time": time.time(),
            "first": first,
            "scheduler": self.scheduler.address,
            "workers": views.workers(self.scheduler.state),
            "prefixes": views.prefixes(watch.counts()) if watch is not None else [],
            "stream": stream,
            "stream_length": cursor.limit,
        }


async def _to_status(request: web.Request) -> web.Response:
    from aiohttp import web

    raise web.HTTPFound("/status")


def _page(name: str) -> Any:
    path = os.path.join(STATIC, name)

    async def page(request: web.Request) -> web.FileResponse:
        from aiohttp import web

        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return page


def _json(value: Any) -> web.Response:
    from aiohttp import web

    from distributary.dashboard.feed import encode

    return web.Response(body=encode(value), content_type="application/json")


def _stream_length() -> int:
    return int(dask.config.get("distributed.scheduler.dashboard.status.task-stream-length"))


def _tcp_host(address: str | None) -> str | None:
    """The host of a TCP or TLS address (None for another transport)."""
    if not address or parse_address(address)[0] not in ("tcp", "tls"):
        return None
    try:
        return get_address_host(address)
    except ValueError:
        return None
