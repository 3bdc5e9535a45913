"""What the Scheduler, Worker and Nanny share: start, close and wait like dask.distributed's.

Each is created, then awaited (or entered with ``async with``) to start, and closed with
``await node.close()``; ``await node.finished()`` waits until it has closed.  While it
runs it keeps its logger's recent records, and answers for them and for its versions.
Each has its :class:`~distributary.Security` (the TLS credentials of its role) and the
operations it refuses (``blocked_handlers``, by default
``distributed.<role>.blocked-handlers``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import dask.config
import psutil
from dask.utils import parse_bytes

from distributary.comm.addressing import get_address_host_port, normalize_address, parse_address
from distributary.protocol.introspection import GetLogs, GetVersions
from distributary.security import Security, as_security
from distributary.utils.logs import RecentLogs
from distributary.utils.process import cpu_count
from distributary.utils.versions import get_versions


class ServerNode:
    """Awaitable lifecycle: ``init -> starting -> running -> closing -> closed``.

    ``logger`` is the node's logger, whose records it keeps while it runs.  ``security``
    (a Security, a dict of its parameters, or None for the configuration's) gives the
    TLS credentials of :attr:`security_role`; ``blocked_handlers`` the operations refused.
    """

    # whose TLS credentials the node uses, and its configuration section
    security_role: ClassVar[str] = "worker"

    def __init__(
        self, logger: logging.Logger, security: Any = None, blocked_handlers: Any = None
    ) -> None:
        self.id = f"{type(self).__name__}-{uuid.uuid4()}"
        self.status = "init"
        self._logger_name = logger.name
        self._logs = RecentLogs()
        self._start_lock: asyncio.Lock | None = None
        self._closed_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.security: Security = as_security(security, type(self).__name__)
        self.connection_args = self.security.get_connection_args(self.security_role)
        self.listen_args = self.security.get_listen_args(self.security_role)
        if blocked_handlers is None:
            blocked_handlers = dask.config.get(
                f"distributed.{self.security_role}.blocked-handlers", default=None
            )
        self.blocked_handlers = _operation_names(blocked_handlers)

    def server_options(self) -> dict[str, Any]:
        """What the node's Server takes: its TLS settings, the operations it refuses and
        the node's name for messages."""
        return {
            "listen_args": self.listen_args,
            "blocked": self.blocked_handlers,
            "name": type(self).__name__,
        }

    async def _start(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def start(self) -> ServerNode:
        """Start the node (once); return it."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
            self._closed_event = asyncio.Event()
        async with self._start_lock:
            if self.status == "init":
                self.loop = asyncio.get_running_loop()
                self.status = "starting"
                self._logs.attach(self._logger_name)
                try:
                    await self._start()
                except BaseException:
                    await self.close()
                    raise
                self.status = "running"
        return self

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self, *args: Any, **kwargs: Any) -> None:
        """Stop the node and release everything it holds; idempotent."""
        if self.status in ("closing", "closed"):
            if self._closed_event is not None:
                await self._closed_event.wait()
            return
        self.status = "closing"
        try:
            if self.loop is not None:
                await self._close()
        finally:
            self.status = "closed"
            self._logs.detach()
            if self._closed_event is not None:
                self._closed_event.set()

    def get_logs(self, n: int | None = None) -> list[tuple[str, str]]:
        """This node's recent log records as ``(level, message)``, newest first (the ``n``
        newest, if given; at most ``distributed.admin.log-length`` are kept)."""
        return self._logs.recent(n)

    def versions(self, packages: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The Python, platform and package versions here (those checked, and
        ``packages``): ``{"host": {...}, "packages": {...}}``."""
        return get_versions(packages or ())

    def node_handlers(self) -> dict[type, Callable]:
        """The requests every node answers: its logs and its versions."""
        return {
            GetLogs: lambda comm, msg: self.get_logs(msg.n),
            GetVersions: lambda comm, msg: self.versions(msg.packages),
        }

    async def finished(self) -> None:
        """Wait until the node has closed."""
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
        await self._closed_event.wait()

    @staticmethod
    def _scheduler_address(ip: Any, port: int | None, scheduler_file: str | None) -> str:
        if scheduler_file is not None:
            with open(scheduler_file) as f:
                return normalize_address(json.load(f)["address"])
        if ip is None:
            raise ValueError("A scheduler address is needed (or scheduler_file=)")
        if port is not None:
            return normalize_address((ip, port))
        return normalize_address(ip)


def listen_address_for(
    scheduler_address: str | None,
    host: str | None,
    port: int | None,
    protocol: str | None,
    interface: str | None = None,
    security: Security | None = None,
) -> str:
    """Where a node should listen: the scheduler's transport (TLS, without a scheduler,
    if ``security`` requires encryption), on ``host`` (or the address of ``interface``);
    by default on this machine's address on the route to the scheduler, which is
    loopback when the scheduler is on this machine or unknown."""
    if protocol is None:
        if scheduler_address:
            protocol = parse_address(scheduler_address)[0]
        else:
            protocol = "tls" if security is not None and security.require_encryption else "tcp"
    protocol = protocol.rstrip(":/")
    if protocol == "inproc":
        return "inproc://"
    if interface is not None and host is None:
        host = _interface_address(interface)
    if host is None and scheduler_address and not scheduler_address.startswith("inproc"):
        host = _host_facing(scheduler_address)
    return f"{protocol}://{host or '127.0.0.1'}:{port or 0}"


def _operation_names(names: Any) -> list[str]:
    """``blocked_handlers`` as a list of operation names."""
    if names is None:
        return []
    if not isinstance(names, list | tuple | set | frozenset) or not all(
        isinstance(name, str) for name in names
    ):
        raise TypeError(
            f"blocked_handlers must be a list of operation names (like ['run_function']), "
            f"not {names!r}"
        )
    return list(names)


def _host_facing(scheduler_address: str) -> str | None:
    """This machine's IP address on the route to the scheduler (None: loopback)."""
    try:
        host, port = get_address_host_port(scheduler_address)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return None
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(sockaddr)  # UDP: nothing is sent, only a route is chosen
            local = sock.getsockname()[0]
    except (OSError, ValueError):
        return None  # let the connection attempt report the problem
    return f"[{local}]" if family == socket.AF_INET6 else local


def _interface_address(interface: str) -> str:
    for addr in psutil.net_if_addrs().get(interface, ()):
        if addr.family.name == "AF_INET":
            return addr.address
    raise ValueError(f"Network interface {interface!r} has no IPv4 address")


def parse_memory_limit(limit: str | float | int | None, nthreads: int) -> int:
    """Bytes of memory for a worker: ``'auto'``, bytes, ``'4GB'``, a fraction, or 0 for none."""
    total = psutil.virtual_memory().total
    if limit is None or limit == 0:
        return 0
    if limit == "auto":
        cpus = cpu_count()
        return int(total * min(1, nthreads / cpus))
    if isinstance(limit, str):
        value = parse_bytes(limit)
    else:
        value = float(limit)
        if 0 < value <= 1:
            value = total * value
    return int(min(value, total))
