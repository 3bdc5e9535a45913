"""Addresses: ``scheme://location`` strings such as ``tcp://10.0.0.1:8786``.

TCP and TLS locations are ``host:port`` (IPv6 hosts in brackets: ``[::1]:8786``);
inproc locations are ``<host>/<pid>/<counter>`` or any name given to ``listen``.
"""

from __future__ import annotations

import functools

__all__ = [
    "get_address_host",
    "get_address_host_port",
    "normalize_address",
    "parse_address",
    "unparse_address",
    "unparse_host_port",
]


_HOST_PORT_SCHEMES = ("tcp", "tls")


def parse_address(addr: str) -> tuple[str, str]:
    """Split an address into ``(scheme, location)``; the scheme defaults to ``tcp``."""
    if not isinstance(addr, str):
        raise ValueError(f"Expected an address string, got {addr!r}")
    scheme, sep, loc = addr.partition("://")
    if not sep:
        return "tcp", addr
    return scheme.lower(), loc


def unparse_address(scheme: str, loc: str) -> str:
    """Join a scheme and a location into an address."""
    return f"{scheme}://{loc}"


def unparse_host_port(host: str, port: int) -> str:
    """Format ``host:port``, bracketing IPv6 hosts."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _parse_port(port: object, addr: object) -> int:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
        return port
    raise ValueError(f"Invalid port {port!r} in address {addr!r}")


def _split_host_port(loc: str, addr: object) -> tuple[str, int]:
    if loc.startswith("["):
        host, bracket, rest = loc[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"Expected [host]:port in address {addr!r}")
        port = rest[1:]
    else:
        host, colon, port = loc.rpartition(":")
        if not colon:
            raise ValueError(f"Missing port in address {addr!r}")
        if ":" in host:
            raise ValueError(f"IPv6 hosts must be in brackets ([host]:port): {addr!r}")
    if not host or "/" in host:
        raise ValueError(f"Invalid host in address {addr!r}")
    return host, _parse_port(port, addr)


def normalize_address(addr: str | tuple) -> str:
    """Return the canonical form of an address (``tcp://host:port``,
    ``tls://host:port`` or ``inproc://...``).

    Accepts ``tcp://host:port``, ``host:port``, ``(host, port)``, ``tls://host:port``
    and ``inproc`` addresses; raises ValueError naming the address if it is malformed.
    """
    try:
        return _normalize(addr)
    except TypeError:  # unhashable, so not an address
        raise ValueError(
            f"Expected an address string or (host, port) tuple, got {addr!r}"
        ) from None


@functools.lru_cache(maxsize=4096)
def _normalize(addr: str | tuple) -> str:
    if isinstance(addr, tuple):
        if len(addr) != 2 or not isinstance(addr[0], str) or not addr[0]:
            raise ValueError(f"Expected a (host, port) tuple, got {addr!r}")
        return "tcp://" + unparse_host_port(addr[0], _parse_port(addr[1], addr))
    if not isinstance(addr, str):
        raise ValueError(f"Expected an address string or (host, port) tuple, got {addr!r}")
    if addr.lower() == "inproc":
        return "inproc://"
    scheme, loc = parse_address(addr)
    if scheme in _HOST_PORT_SCHEMES:
        host, port = _split_host_port(loc, addr)
        return f"{scheme}://" + unparse_host_port(host, port)
    if scheme == "inproc":
        return "inproc://" + loc
    raise ValueError(f"Unknown scheme {scheme!r} in address {addr!r}")


def get_address_host(addr: str) -> str:
    """The host part of an address (no brackets for IPv6)."""
    scheme, loc = parse_address(normalize_address(addr))
    if scheme == "inproc":
        return loc.partition("/")[0]
    return _split_host_port(loc, addr)[0]


def get_address_host_port(addr: str) -> tuple[str, int]:
    """``(host, port)`` of a TCP or TLS address; ValueError for addresses without a port."""
    scheme, loc = parse_address(normalize_address(addr))
    if scheme not in _HOST_PORT_SCHEMES:
        raise ValueError(f"Address {addr!r} has no host and port")
    return _split_host_port(loc, addr)
