"""Serialization: msgpack messages with pickle protocol 5 frames, and error messages."""

from distributary.protocol.errors import (
    RemoteError,
    RemoteException,
    error_message,
    rebuild_exception,
    remote_exception,
)
from distributary.protocol.serialize import (
    Serialize,
    Serialized,
    deserialize,
    dumps_function,
    loads_function,
    serialize,
)
from distributary.protocol.wire import ProtocolError, dumps_message, loads_message

__all__ = [
    "ProtocolError",
    "RemoteError",
    "RemoteException",
    "Serialize",
    "Serialized",
    "deserialize",
    "dumps_function",
    "dumps_message",
    "error_message",
    "loads_function",
    "loads_message",
    "rebuild_exception",
    "remote_exception",
    "serialize",
]
