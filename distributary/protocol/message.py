"""Messages declared once: a frozen class per message, its op and its typed fields.

A message class is what its sender's state machine emits, what travels (as
``{"op": op, **fields}``), and what its receiver's state machine takes, so that adding
a message is one class plus one handler.  Two kinds of field never travel:

* the **peer** (:func:`peer`): the worker or client at the other end of the stream.
  Outgoing it says whom the message is for; incoming the receiver fills it in with
  whom it came from, so that no one can speak for another.
* the **arrival time** (:func:`arrival_time`), filled in by the receiver's clock.

:class:`Catalogue` decodes what one side may send the other, checking each field
against its annotation (with msgspec, in C): an unknown op, a missing field or a value
of the wrong type is a :class:`ProtocolError` naming the op and the field, so that a
state machine only ever sees well-typed messages.  Lists become tuples where a tuple
is declared.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Hashable
from typing import Any, ClassVar

import msgspec

from distributary.protocol.wire import ProtocolError

Key = Hashable  # str, bytes, int or a (nested) tuple of these

_PEER = "peer"
_ARRIVAL = "arrival"


def peer() -> Any:
    """A field naming the other end of the stream: not sent, filled in on arrival."""
    return dataclasses.field(default="", kw_only=True, metadata={_PEER: True})


def arrival_time() -> Any:
    """A field holding when the message arrived (``time.time()``): not sent."""
    return dataclasses.field(default=0.0, kw_only=True, metadata={_ARRIVAL: True})


class Message:
    """Base of the messages that travel: subclasses are frozen, slotted dataclasses
    with an ``op``."""

    __slots__ = ()
    op: ClassVar[str] = ""

    def to_message(self) -> dict:
        """The message for the wire: its op and every field that travels."""
        names, records = _layout(type(self))
        msg = {"op": self.op}
        for name in names:
            msg[name] = getattr(self, name)
        for name in records:
            msg[name] = tuple(_as_dict(record) for record in msg[name])
        return msg


# message class -> (the fields that travel, those of them that hold records)
_layouts: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _layout(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    layout = _layouts.get(cls)
    if layout is None:
        hints = typing.get_type_hints(cls)
        names = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if not (f.metadata.get(_PEER) or f.metadata.get(_ARRIVAL))
        )
        records = tuple(name for name in names if _holds_records(hints[name]))
        layout = _layouts[cls] = (names, records)
    return layout


def _holds_records(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and bool(args) and dataclasses.is_dataclass(args[0])


def _as_dict(record: Any) -> dict:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


class Catalogue:
    """The messages one side may send another, by op: decodes and checks them."""

    def __init__(self, *classes: type[Message]):
        self.classes = classes
        self._decoders: dict[str, _Decoder] = {}
        for cls in classes:
            if cls.op in self._decoders:
                raise ValueError(f"two messages named {cls.op!r}")
            self._decoders[cls.op] = _Decoder(cls)

    def __contains__(self, op: str) -> bool:
        return op in self._decoders

    def decode(self, msg: Any, peer: str = "") -> Message:
        """The message that ``msg`` (a dict off the wire) is, from ``peer``."""
        if not isinstance(msg, dict):
            raise ProtocolError(f"a message is a map, not {type(msg).__name__}")
        op = msg.get("op")
        decoder = self._decoders.get(op) if isinstance(op, str) else None
        if decoder is None:
            raise ProtocolError(f"unknown op {op!r:.60}", op=op)
        return decoder(msg, peer)


class _Decoder:
    """Builds one message class from a dict, checking every field (with msgspec)."""

    def __init__(self, cls: type):
        self.cls = cls
        self.op = cls.op
        fields = dataclasses.fields(cls)
        self.peer_fields = [f.name for f in fields if f.metadata.get(_PEER)]
        self.arrival_fields = [f.name for f in fields if f.metadata.get(_ARRIVAL)]
        self.keys = _key_fields(cls)
        self.records = [(name, _key_fields(record)) for name, record in _record_fields(cls)]

    def __call__(self, msg: dict, peer: str) -> Any:
        try:
            message = msgspec.convert(msg, self.cls)
        except msgspec.ValidationError as exc:
            raise _protocol_error(self.op, str(exc)) from None
        for name in self.keys:
            self._check_hashable(getattr(message, name), name)
        for name, keys in self.records:
            for record in getattr(message, name):
                for key in keys:
                    self._check_hashable(getattr(record, key), f"{name}: {key}")
        # (set, not taken from the message: no one speaks for another)
        for name in self.peer_fields:
            object.__setattr__(message, name, peer)
        if self.arrival_fields:
            now = time.time()
            for name in self.arrival_fields:
                object.__setattr__(message, name, now)
        return message

    def _check_hashable(self, value: Any, where: str) -> None:
        try:
            hash(value)
        except TypeError:
            raise ProtocolError(f"unhashable key {value!r:.50}", op=self.op, field=where) from None


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


def _key_fields(cls: type) -> list[str]:
    """The fields holding keys, or tuples of keys, which must hash deeply (msgspec
    checks that a key is hashable, but not what a tuple holds)."""
    hints = typing.get_type_hints(cls)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if hints[f.name] is Key or hints[f.name] == tuple[Key, ...]
    ]


def _record_fields(cls: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, typing.get_args(hints[f.name])[0])
        for f in dataclasses.fields(cls)
        if _holds_records(hints[f.name])
    ]
