"""Internal: servers with operation handlers, a connection pool for calls, and
batched streams."""

from distributary.core.batched import BatchedSend, read_messages
from distributary.core.rpc import ConnectionPool
from distributary.core.server import Server

__all__ = ["BatchedSend", "ConnectionPool", "Server", "read_messages"]
