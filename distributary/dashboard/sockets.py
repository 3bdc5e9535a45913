"""The listening socket of an HTTP server, bound before anything is served.

A port in use is then a warning and a random port, as in dask.distributed, never a node
that fails to start; any other error (a host that is not this machine's) is an OSError
naming the address.
"""

from __future__ import annotations

import errno
import socket
import warnings


def listening_socket(host: str, port: int, what: str) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (every interface when ``host``
    is ""), or on a random port of ``host`` if ``port`` is taken; ``what`` names the
    server in the messages ("dashboard")."""
    try:
        return _listen(host, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise OSError(
                exc.errno, f"Could not serve the {what} on {host}:{port}: {exc.strerror}"
            ) from None
    sock = _listen(host, 0)
    warnings.warn(
        f"Port {port} is already in use (another cluster running?): the {what} is served "
        f"on port {sock.getsockname()[1]} instead",
        UserWarning,
        stacklevel=3,
    )
    return sock


def _listen(host: str, port: int) -> socket.socket:
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
