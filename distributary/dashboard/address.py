"""Where an HTTP server listens, and the link to a dashboard, as dask.distributed spells them.

A ``dashboard_address`` is ``":8787"`` (a port on the default host), ``"0.0.0.0:8787"``
or ``"[::1]:8787"`` (a host and a port), ``"localhost"`` (a host on the default port),
``8787`` or ``"8787"`` (a port), optionally after ``http://``; ``":0"`` asks for a
random port.  The link is the ``distributed.dashboard.link`` template, formatted with
the environment variables and ``scheme``, ``host`` and ``port``, as dask.distributed
formats it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import dask.config

from distributary.comm.addressing import get_address_host, parse_address

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


def parse_http_address(address: Any, default_host: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of ``address`` (see the module's docstring), with the defaults for
    the parts it leaves out.  TypeError or ValueError naming a malformed address."""
    if isinstance(address, bool) or not isinstance(address, str | int):
        raise TypeError(
            f"dashboard_address must be a string like ':8787' or a port, not {address!r}"
        )
    if isinstance(address, int):
        return default_host, _port(address, address)
    text = address.strip()
    for scheme in ("http://", "https://", "tcp://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.isdigit():
        return default_host, _port(text, address)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"Expected [host]:port in dashboard_address {address!r}")
        port = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise ValueError(f"IPv6 hosts go in brackets ([host]:port): dashboard_address {address!r}")
    else:
        host, _, port = text.partition(":")
    if "/" in host or " " in host:
        raise ValueError(f"Invalid host in dashboard_address {address!r}")
    return host or default_host, _port(port, address) if port else default_port


def _port(port: Any, address: Any) -> int:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, int) and 0 <= port <= 65535:
        return port
    raise ValueError(f"Invalid port {port!r} in dashboard_address {address!r}")


def link_host(bound_host: str, server_host: str | None) -> str:
    """The host to put in a link to a server listening on ``bound_host``: itself, unless
    it listens on every interface: then ``server_host`` (the host of the node's own
    address), or this machine's name."""
    if bound_host not in WILDCARD_HOSTS:
        return bound_host
    if server_host and server_host not in WILDCARD_HOSTS:
        return server_host
    return socket.gethostname()


def format_dashboard_link(host: str, port: int) -> str:
    """The dashboard's URL from the ``distributed.dashboard.link`` template."""
    template = dask.config.get("distributed.dashboard.link")
    scheme = "http"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return template.format(**{**os.environ, "scheme": scheme, "host": host, "port": port})


def scheduler_dashboard_link(scheduler_address: str, services: dict[str, int]) -> str:
    """The link to the dashboard of the scheduler at ``scheduler_address``, which serves
    ``services`` (ports by name): on the scheduler's host; "" without a dashboard."""
    port = services.get("dashboard")
    if port is None:
        return ""
    scheme, _ = parse_address(scheduler_address)
    host = get_address_host(scheduler_address) if scheme in ("tcp", "tls") else "127.0.0.1"
    return format_dashboard_link(link_host(host, None), port)
