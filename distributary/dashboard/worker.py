"""A worker's own HTTP server: ``/health`` and ``/metrics`` (Prometheus).

It listens on the worker's ``dashboard_address`` (by default a random port on the host
the worker listens on, or on loopback for an in-process worker) and its port is listed
in the worker's ``services`` as ``"dashboard"``.  It is a
:class:`~distributary.dashboard.plain.PlainHTTPServer`, and prometheus_client is imported
at the first scrape: a worker starts no slower for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributary.comm.addressing import get_address_host
from distributary.dashboard.address import parse_http_address
from distributary.dashboard.plain import PlainHTTPServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from distributary.worker.server import Worker


class WorkerHTTP:
    """The HTTP server of ``worker``, on ``dashboard_address`` (None: a random port)."""

    def __init__(self, worker: Worker, dashboard_address: Any = None):
        self.worker = worker
        self._address = (
            None if dashboard_address is None else parse_http_address(dashboard_address, "", 0)
        )
        self._metrics: CollectorRegistry | None = None
        self.server = PlainHTTPServer(
            "worker's HTTP server", {"/health": _health, "/metrics": self._scrape}
        )

    @property
    def services(self) -> dict[str, int]:
        """``{"dashboard": port}`` while it serves."""
        return {"dashboard": self.server.port} if self.server.running else {}

    async def start(self) -> None:
        """Serve, on the worker's host unless ``dashboard_address`` names one."""
        host, port = self._address or ("", 0)
        if not host:
            address = self.worker.address
            tcp = address.startswith(("tcp://", "tls://"))
            host = get_address_host(address) if tcp else "127.0.0.1"
        await self.server.start(host, port)

    async def stop(self) -> None:
        """Stop serving."""
        await self.server.stop()

    def _scrape(self) -> tuple[bytes, str]:
        from distributary.dashboard.metrics import (
            CONTENT_TYPE,
            WorkerCollector,
            exposition,
            registry,
        )

        if self._metrics is None:
            self._metrics = registry(WorkerCollector(self.worker.state, self.worker.memory))
        return exposition(self._metrics), CONTENT_TYPE


def _health() -> tuple[bytes, str]:
    return b"ok", "text/plain; charset=utf-8"
