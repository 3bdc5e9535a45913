"""Internal: the messages, declared once, and their serialization: msgpack with
pickle protocol 5 frames, and remote errors."""

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
