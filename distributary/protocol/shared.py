"""The messages of the objects that clients and tasks share through the scheduler:
queues, variables, events and publish/subscribe topics.

Each object has a name (a key); values travel pickled (opaque :class:`~distributary.
protocol.serialize.Serialized` blobs that the scheduler never unpickles) with the keys
of the futures inside them.  A request that waits (a get, a put into a full queue, an
event's wait) is answered when it can be, or when its ``timeout`` (seconds) passes.
``client`` is the asking client's id; ``uid`` names the flush marker it sent on its
stream just before, when the value holds futures (see :mod:`distributary.scheduler.
flushes`).  Publishing, subscribing and confirming the receipt of values go on the
client's ordered stream instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.client_messages import FromClient
from distributary.protocol.message import Key
from distributary.protocol.requests import Reply, Request

# ---------------------------------------------------------------------- replies


class SharedValue(Reply):
    """A value kept by the scheduler: pickled, and the keys of the futures inside it,
    held for the receiver by the pseudo-client ``receipt`` until it confirms
    (:class:`SharedValuesReceived`)."""

    data: Any
    keys: tuple[Key, ...]
    receipt: str | None = None


class SharedValuesReceived(FromClient):
    """The client made the futures of the values it was handed (its desires of their
    keys are on the stream before this): the pseudo-clients holding them may go."""

    op: ClassVar[str] = "shared-values-received"

    receipts: tuple[str, ...]


# ---------------------------------------------------------------------- queues


class QueueCreate(Request):
    """Make the queue ``name`` holding at most ``maxsize`` items, unless it exists."""

    op: ClassVar[str] = "queue-create"
    reply_type: ClassVar[Any] = None

    name: Key
    maxsize: int = 0


class QueuePut(Request):
    """Put a value into the queue, waiting at most ``timeout`` for room."""

    op: ClassVar[str] = "queue-put"
    reply_type: ClassVar[Any] = None

    name: Key
    data: Any
    keys: tuple[Key, ...] = ()
    maxsize: int = 0  # the bound of the queue, if this request makes it
    timeout: float | None = None
    client: str | None = None
    uid: str | None = None


class QueueGet(Request):
    """Take ``count`` values from the queue (all it holds now with ``None``), waiting at
    most ``timeout`` for them; the asking client wants their futures' keys."""

    op: ClassVar[str] = "queue-get"
    reply_type: ClassVar[Any] = tuple[SharedValue, ...]

    name: Key
    count: int | None = 1
    maxsize: int = 0
    timeout: float | None = None
    client: str | None = None


class QueueSize(Request):
    """How many values the queue holds."""

    op: ClassVar[str] = "queue-size"
    reply_type: ClassVar[Any] = int

    name: Key


# ---------------------------------------------------------------------- variables


class VariableSet(Request):
    """Set the variable's value, once the client's earlier messages arrived (waiting
    at most ``timeout`` for them)."""

    op: ClassVar[str] = "variable-set"
    reply_type: ClassVar[Any] = None

    name: Key
    data: Any
    keys: tuple[Key, ...] = ()
    timeout: float | None = None
    client: str | None = None
    uid: str | None = None


class VariableGet(Request):
    """The variable's value, waiting at most ``timeout`` for one to be set; the asking
    client wants its futures' keys."""

    op: ClassVar[str] = "variable-get"
    reply_type: ClassVar[Any] = SharedValue

    name: Key
    timeout: float | None = None
    client: str | None = None


class VariableDelete(Request):
    """Forget the variable's value."""

    op: ClassVar[str] = "variable-delete"
    reply_type: ClassVar[Any] = None

    name: Key


# ---------------------------------------------------------------------- events


class EventSet(Request):
    """Set the event's flag: its waiters are released."""

    op: ClassVar[str] = "event-set"
    reply_type: ClassVar[Any] = None

    name: Key


class EventClear(Request):
    """Clear the event's flag."""

    op: ClassVar[str] = "event-clear"
    reply_type: ClassVar[Any] = None

    name: Key


class EventIsSet(Request):
    """Whether the event's flag is set."""

    op: ClassVar[str] = "event-is-set"
    reply_type: ClassVar[Any] = bool

    name: Key


class EventWait(Request):
    """Answered True once the event is set, or False after ``timeout``."""

    op: ClassVar[str] = "event-wait"
    reply_type: ClassVar[Any] = bool

    name: Key
    timeout: float | None = None
    client: str | None = None


# ---------------------------------------------------------------------- publish/subscribe


class PubSubSubscribe(FromClient):
    """The client's subscriber ``subscriber`` receives what is published on ``name``."""

    op: ClassVar[str] = "pubsub-subscribe"

    name: Key
    subscriber: str


class PubSubUnsubscribe(FromClient):
    """The client's subscriber is gone."""

    op: ClassVar[str] = "pubsub-unsubscribe"

    subscriber: str


class PubSubPut(FromClient):
    """Publish a pickled message on ``name``, to every subscriber of it."""

    op: ClassVar[str] = "pubsub-put"

    name: Key
    data: Any


class PubSubGet(Request):
    """The messages buffered for a subscriber (of ``name``), oldest first, waiting at
    most ``timeout`` for one."""

    op: ClassVar[str] = "pubsub-get"
    reply_type: ClassVar[Any] = tuple[Any, ...]

    name: Key
    subscriber: str
    timeout: float | None = None
    client: str | None = None
