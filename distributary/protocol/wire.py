"""Messages as frames: a msgpack header followed by out-of-band pickle frames.

``frames[0]`` is the msgpack encoding of the message. Every :class:`Serialize`
in the message is pickled (and every :class:`Serialized` passed through as is);
its frames are appended after the header and the value is replaced in the header
by a msgpack extension that names the slice of frames holding it; a small value
(under 64 KiB, like most task payloads) travels inside its extension instead, so
that a graph of 100,000 tasks is not 100,000 frames. On the way in the extension
becomes a :class:`Serialized` again, *not* the object: a process that only forwards
a payload (the scheduler) never unpickles it.

Arrays are decoded as tuples, so keys such as ``("x", 0, (1, 2))`` come back
exactly, and map keys may be any hashable msgpack value.

A connection's handshake is decoded by :func:`loads_handshake` instead: plain data only
(one frame of at most :data:`HANDSHAKE_MAX_BYTES`, a map with string keys, no
extension types), since it comes from a peer not yet accepted.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgspec

from distributary.protocol.serialize import Serialize, Serialized, serialize

__all__ = [
    "HANDSHAKE_MAX_BYTES",
    "Encoded",
    "ProtocolError",
    "dumps_message",
    "encode",
    "loads_handshake",
    "loads_message",
]

_EXT_SERIALIZED = 42
_EXT_INLINE = 43  # a small serialized value: its frames, msgpack-encoded in the extension
# (index of the first frame, number of frames) of one serialized value
_EXT_PAYLOAD = struct.Struct("<II")
_INLINE_MAX = 64 * 1024  # bytes of frames below which a serialized value is inlined
# The largest handshake a peer may send (handshakes are a few dozen bytes).
HANDSHAKE_MAX_BYTES = 16 * 1024


class ProtocolError(ValueError):
    """What was received is not a valid message; ``op`` and ``field`` say where, when
    known."""

    def __init__(self, problem: str, op: Any = None, field: str | None = None):
        self.problem, self.op, self.field = problem, op, field
        where = f"Malformed {op!r} message" if op is not None else "Malformed message"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}" if op is not None or field else problem)

    def __reduce__(self) -> tuple:
        return type(self), (self.problem, self.op, self.field)


class Encoded:
    """A message already encoded into its frames (by :func:`encode`), written as is."""

    __slots__ = ("frames", "nbytes")

    def __init__(self, frames: list):
        self.frames = frames
        self.nbytes = sum(map(_nbytes, frames))


def encode(msg: Any) -> Encoded:
    """Encode ``msg`` now, to write later."""
    return Encoded(dumps_message(msg))


def dumps_message(msg: Any) -> list:
    """Encode a message into a list of frames (one frame if nothing is pickled)."""
    if type(msg) is Encoded:
        return msg.frames
    frames: list = [b""]

    def encode_default(obj: Any) -> Any:
        if isinstance(obj, msgspec.Struct):  # a message or a reply, inside another
            return obj.to_message()
        if isinstance(obj, Serialize):
            obj = serialize(obj.obj)
        elif not isinstance(obj, Serialized):
            raise TypeError(
                f"Cannot put an object of type {type(obj).__name__} in a message; "
                "wrap it in Serialize to pickle it"
            )
        if sum(map(_nbytes, obj.frames)) < _INLINE_MAX:
            inline = msgpack.packb([bytes(frame) for frame in obj.frames], use_bin_type=True)
            return msgpack.ExtType(_EXT_INLINE, inline)
        payload = _EXT_PAYLOAD.pack(len(frames), len(obj.frames))
        frames.extend(obj.frames)
        return msgpack.ExtType(_EXT_SERIALIZED, payload)

    frames[0] = msgpack.packb(msg, use_bin_type=True, default=encode_default)
    return frames


def loads_message(frames: list) -> Any:
    """Decode frames made by :func:`dumps_message`; raise ProtocolError if malformed."""
    if not frames:
        raise ProtocolError("A message needs at least one frame")
    nframes = len(frames)

    def decode_ext(code: int, data: bytes) -> Serialized:
        if code == _EXT_INLINE:
            inline = msgpack.unpackb(data, use_list=True, raw=False)
            if not inline or not all(type(frame) is bytes for frame in inline):
                raise ProtocolError("Malformed inline serialized value")
            return Serialized(inline)
        if code != _EXT_SERIALIZED or len(data) != _EXT_PAYLOAD.size:
            raise ProtocolError(f"Unknown msgpack extension type {code}")
        start, count = _EXT_PAYLOAD.unpack(data)
        if start < 1 or count < 1 or start + count > nframes:
            raise ProtocolError(
                f"Serialized value refers to frames {start}..{start + count - 1} "
                f"of a {nframes}-frame message"
            )
        return Serialized(list(frames[start : start + count]))

    try:
        return msgpack.unpackb(
            frames[0],
            use_list=False,
            strict_map_key=False,
            raw=False,
            ext_hook=decode_ext,
        )
    except ProtocolError:
        raise
    except Exception as err:
        raise ProtocolError(f"Malformed message: {type(err).__name__}: {err}") from err


def loads_handshake(frames: list) -> dict:
    """Decode a peer's handshake: one frame holding a map of plain data; raise
    ProtocolError otherwise.  Nothing in it is unpickled, nor kept as a pickle."""
    if len(frames) != 1:
        raise ProtocolError(f"A handshake is one frame, not {len(frames)}")
    if _nbytes(frames[0]) > HANDSHAKE_MAX_BYTES:
        raise ProtocolError(f"A handshake has at most {HANDSHAKE_MAX_BYTES} bytes")
    try:
        msg = msgpack.unpackb(frames[0], use_list=False, raw=False, ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    except Exception as err:
        raise ProtocolError(f"Malformed handshake: {type(err).__name__}: {err}") from err
    if not isinstance(msg, dict):
        raise ProtocolError(f"A handshake is a map, not {type(msg).__name__}")
    return msg


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"A handshake is plain data: it holds a msgpack extension ({code})")


def _nbytes(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)
