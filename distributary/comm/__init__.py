"""Internal: connections between processes: addresses, comms, listeners (TCP, TLS and
in-process)."""

from distributary.comm import inproc, tcp, tls  # noqa: F401  (register the transports)
from distributary.comm.addressing import (
    get_address_host,
    get_address_host_port,
    normalize_address,
    parse_address,
    unparse_address,
    unparse_host_port,
)
from distributary.comm.core import (
    PROTOCOL_VERSION,
    Comm,
    CommClosedError,
    HandshakeError,
    Listener,
    connect,
    listen,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Comm",
    "CommClosedError",
    "HandshakeError",
    "Listener",
    "connect",
    "get_address_host",
    "get_address_host_port",
    "listen",
    "normalize_address",
    "parse_address",
    "unparse_address",
    "unparse_host_port",
]
