"""Messages declared once: a frozen class per message, its op and its typed fields.

A message class (a frozen msgspec ``Struct``: slotted, and made and checked in C) is
what its sender's state machine emits, what travels (as ``{"op": op, **fields}``), and
what its receiver's state machine takes, so that adding a message is one class plus
one handler.  Two kinds of field never travel:

* the **peer** (named in ``peer_fields``): the worker or client at the other end of
  the stream.  Outgoing it says whom the message is for; incoming the receiver fills
  it in with whom it came from, so that no one can speak for another.
* the **arrival time** (named in ``arrival_fields``), filled in by the receiver's clock.

:class:`Catalogue` decodes what one side may send the other, checking each field
against its annotation (with msgspec, in C): an unknown op, a missing field or a value
of the wrong type is a :class:`ProtocolError` naming the op and the field, so that a
state machine only ever sees well-typed messages.  Lists become tuples where a tuple
is declared.
"""

from __future__ import annotations

import functools
import time
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec.structs import force_setattr

from distributary.protocol.wire import ProtocolError

# A dask key: str, bytes, int, float or a (nested) tuple of these.  Checked here, by
# hashing it whole (msgspec's check of a Hashable is shallow, and costs a Python call).
Key = Annotated[Any, "key"]


class Message(msgspec.Struct, frozen=True):
    """Base of the messages that travel: on streams, and the requests to servers."""

    op: ClassVar[str] = ""
    peer_fields: ClassVar[tuple[str, ...]] = ()  # filled in on arrival, not sent
    arrival_fields: ClassVar[tuple[str, ...]] = ()  # when it arrived, not sent

    def to_message(self) -> dict:
        """The message for the wire: its op and every field that travels."""
        local, records = _layout(type(self))
        msg = msgspec.structs.asdict(self)
        for name in local:
            del msg[name]
        for name in records:
            msg[name] = tuple(msgspec.structs.asdict(record) for record in msg[name])
        msg["op"] = self.op
        return msg


class StreamMessage(Message):
    """Base of the messages on batched streams: ``stimulus_id`` names their cause."""

    stimulus_id: str


_decoders: dict[type, _Decoder] = {}

# message class -> (the fields that do not travel, those that hold records)
_layouts: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _layout(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    layout = _layouts.get(cls)
    if layout is None:
        hints = _hints(cls)
        local = (*cls.peer_fields, *cls.arrival_fields)
        names = [name for name in cls.__struct_fields__ if name not in local]
        records = tuple(name for name in names if _holds_records(hints[name]))
        layout = _layouts[cls] = (local, records)
    return layout


def _holds_records(hint: Any) -> bool:
    args = typing.get_args(hint)
    return (
        typing.get_origin(hint) is tuple
        and bool(args)
        and isinstance(args[0], type)
        and issubclass(args[0], msgspec.Struct)
    )


class Catalogue:
    """The messages one side may send another, by op: decodes and checks them.

    ``Catalogue(A, B)`` holds the classes named; ``Catalogue.of(Base)`` holds every
    subclass of ``Base`` with an op, wherever it is declared (looked for again when an
    op is not found), so that a new message is one class and the handler that takes it.
    """

    def __init__(self, *classes: type[Message]):
        self._base: type[Message] | None = None
        self._classes: dict[str, type[Message]] = {}
        self._add(classes)

    @classmethod
    def of(cls, base: type[Message]) -> Catalogue:
        """The catalogue of every message class derived from ``base``."""
        catalogue = cls()
        catalogue._base = base
        catalogue._find_new()
        return catalogue

    @property
    def classes(self) -> tuple[type[Message], ...]:
        """The message classes held."""
        self._find_new()
        return tuple(self._classes.values())

    def __contains__(self, op: str) -> bool:
        return op in self._classes or (self._find_new() and op in self._classes)

    def decode(self, msg: Any, peer: str = "") -> Message:
        """The message that ``msg`` (a dict off the wire) is, from ``peer``.

        A message that came in memory (from a server in this process) is already one
        of the classes, made and checked by its sender: it is only told its peer.
        """
        if isinstance(msg, Message):
            return self._decoder(msg.op, type(msg)).adopt(msg, peer)
        if not isinstance(msg, dict):
            raise ProtocolError(f"a message is a map, not {type(msg).__name__}")
        return self._decoder(msg.get("op"))(msg, peer)

    def _decoder(self, op: Any, cls: type | None = None) -> _Decoder:
        """The decoder of ``op`` (which must be ``cls``'s, when given)."""
        known = self._classes.get(op) if isinstance(op, str) else None
        if known is None and self._find_new():
            known = self._classes.get(op)
        if known is None or (cls is not None and known is not cls):
            raise ProtocolError(f"unknown op {op!r:.60}", op=op)
        return _decoder_of(known)

    def _add(self, classes: Iterable[type[Message]]) -> None:
        for cls in classes:
            known = self._classes.get(cls.op)
            if known is not None and known is not cls:
                raise ValueError(f"two messages named {cls.op!r}")
            self._classes[cls.op] = cls

    def _find_new(self) -> bool:
        """Take in the subclasses of the base declared since last looked; any new?"""
        if self._base is None:
            return False
        known = set(self._classes.values())
        new = [cls for cls in _subclasses(self._base) if cls.op and cls not in known]
        self._add(new)
        return bool(new)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _decoder_of(cls: type) -> _Decoder:
    """The decoder of a message class, made on its first message, once per process
    (reading the type hints takes about 0.4 ms a class)."""
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = _Decoder(cls)
    return decoder


class _Decoder:
    """Builds one message class from a dict, checking every field (with msgspec)."""

    def __init__(self, cls: type):
        self.cls = cls
        self.op = cls.op
        self.peer_fields = cls.peer_fields
        self.arrival_fields = cls.arrival_fields
        self.keys = _key_fields(cls)
        self.records = [(name, _key_fields(record)) for name, record in _record_fields(cls)]

    def __call__(self, msg: dict, peer: str) -> Any:
        try:
            message = msgspec.convert(msg, self.cls)
        except msgspec.ValidationError as exc:
            raise _protocol_error(self.op, str(exc)) from None
        try:
            for name in self.keys:
                hash(getattr(message, name))
            for name, keys in self.records:
                for record in getattr(message, name):
                    for key in keys:
                        hash(getattr(record, key))
        except TypeError:
            self._unhashable(message)
        self._stamp(message, peer)
        return message

    def adopt(self, message: Any, peer: str) -> Any:
        """A message that came in memory, as its receiver's own copy."""
        if self.peer_fields or self.arrival_fields:
            message = msgspec.structs.replace(message)
            self._stamp(message, peer)
        return message

    def _stamp(self, message: Any, peer: str) -> None:
        # (set, not taken from the message: no one speaks for another)
        for name in self.peer_fields:
            force_setattr(message, name, peer)
        if self.arrival_fields:
            now = time.time()
            for name in self.arrival_fields:
                force_setattr(message, name, now)

    def _unhashable(self, message: Any) -> None:
        """Raise the ProtocolError naming the first key that does not hash."""
        fields = [(name, getattr(message, name)) for name in self.keys]
        for name, keys in self.records:
            for record in getattr(message, name):
                fields += [(f"{name}: {key}", getattr(record, key)) for key in keys]
        for where, value in fields:
            try:
                hash(value)
            except TypeError:
                raise ProtocolError(
                    f"unhashable key {value!r:.50}", op=self.op, field=where
                ) from None


def _protocol_error(op: str, text: str) -> ProtocolError:
    """msgspec's "Expected `int`, got `str` - at `$.run_id`" as a ProtocolError."""
    problem, _, path = text.rpartition(" - at `$.")
    if not problem:
        missing = text.rpartition("missing required field `")[2].rstrip("`")
        return ProtocolError("missing" if missing else text, op=op, field=missing or None)
    field, _, inner = path.rstrip("`").partition(".")
    field, _, index = field.partition("[")
    inner = ("[" + index if index else "") + ("." + inner if inner else "")
    return ProtocolError(f"{problem} at {inner}" if inner else problem, op=op, field=field)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The fields' types (read once: it costs about 0.2 ms a class)."""
    return typing.get_type_hints(cls, include_extras=True)


def _key_fields(cls: type) -> list[str]:
    """The fields holding keys, or tuples of keys: each must hash, whole."""
    hints = _hints(cls)
    return [name for name in cls.__struct_fields__ if _holds_keys(hints[name])]


def _holds_keys(hint: Any) -> bool:
    """A key, or a tuple of them (of tuples of them, ...), possibly ``None``."""
    if hint == Key:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis and _holds_keys(args[0])
    if origin in (types.UnionType, typing.Union):
        return any(_holds_keys(arg) for arg in args if arg is not type(None))
    return False


def _record_fields(cls: type) -> list[tuple[str, type]]:
    hints = _hints(cls)
    return [
        (name, typing.get_args(hints[name])[0])
        for name in cls.__struct_fields__
        if _holds_records(hints[name])
    ]
