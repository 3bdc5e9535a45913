"""Turning instructions into wire messages.

Instructions that travel as they are subclass :class:`Message`: their ``op`` names
the message, and their fields, minus the routing ones, are its content.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

_ROUTING = frozenset({"worker", "client"})
_fields_cache: dict[type, tuple[str, ...]] = {}


class Message:
    """Mixin for dataclass instructions sent as ``{"op": op, **fields}``."""

    __slots__ = ()
    op: ClassVar[str] = ""

    def to_message(self) -> dict:
        """The message for the wire: the op and every non-routing field."""
        cls = type(self)
        names = _fields_cache.get(cls)
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(self) if f.name not in _ROUTING)
            _fields_cache[cls] = names
        msg = {"op": cls.op}
        for name in names:
            msg[name] = getattr(self, name)
        return msg
