"""A worker's own HTTP server: ``/health`` and ``/metrics`` (Prometheus).

It listens on the worker's ``dashboard_address`` (by default a random port on the host
the worker listens on, or on loopback for an in-process worker) and its port is listed
in the worker's ``services`` as ``"dashboard"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributary.comm.addressing import get_address_host
from distributary.dashboard.address import parse_http_address
from distributary.dashboard.http import HTTPServer, node_app

if TYPE_CHECKING:
    from distributary.worker.server import Worker


class WorkerHTTP:
    """The HTTP server of ``worker``, on ``dashboard_address`` (None: a random port)."""

    def __init__(self, worker: Worker, dashboard_address: Any = None):
        self.worker = worker
        self._address = (
            None if dashboard_address is None else parse_http_address(dashboard_address, "", 0)
        )
        self.server = HTTPServer("worker's HTTP server")

    @property
    def services(self) -> dict[str, int]:
        """``{"dashboard": port}`` while it serves."""
        return {"dashboard": self.server.port} if self.server.running else {}

    async def start(self) -> None:
        """Serve, on the worker's host unless ``dashboard_address`` names one."""
        from distributary.dashboard.metrics import WorkerCollector, registry

        host, port = self._address or ("", 0)
        if not host:
            address = self.worker.address
            host = get_address_host(address) if address.startswith("tcp://") else "127.0.0.1"
        metrics = registry(WorkerCollector(self.worker.state, self.worker.memory))
        await self.server.start(node_app(metrics), host, port)

    async def stop(self) -> None:
        """Stop serving."""
        await self.server.stop()
