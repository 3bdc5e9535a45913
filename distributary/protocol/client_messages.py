"""The messages on the stream between the scheduler and each client.

A client's messages are :class:`FromClient`, numbered by ``seq`` in the order it sent
them; the scheduler's reports are :class:`ToClient` and carry as ``ack`` the ``seq``
of the last message from that client handled when they were written, so that the
client can tell a report about an earlier life of a key (one it released or cancelled
since) from one about the key it asks for now.  ``client`` is the peer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from distributary.protocol.message import Catalogue, Key, StreamMessage

# ---------------------------------------------------------------------- client -> scheduler


class FromClient(StreamMessage, kw_only=True):
    """Base of what a client tells the scheduler."""

    peer_fields: ClassVar[tuple[str, ...]] = ("client",)

    client: str = ""
    seq: int = 0  # 0: not numbered


class TaskSpec(msgspec.Struct, frozen=True):
    """One task of a graph as a client describes it.

    ``payload`` is opaque: the scheduler forwards it to a worker and never looks inside.
    ``priority`` sorts ascending: smaller runs first.
    """

    key: Key
    payload: Any
    dependencies: tuple[Key, ...] = ()
    priority: tuple[int | float, ...] = (0,)
    retries: int = 0
    workers: tuple[str, ...] | None = None
    allow_other_workers: bool = False
    resources: dict[str, int | float] | None = None


class UpdateGraph(FromClient):
    """The client submits tasks and wants the keys in ``wanted``.

    A big graph comes in several of these, so that its first tasks can start early;
    the tasks' priorities (given by the client) keep their place in the order.
    """

    op: ClassVar[str] = "update-graph"

    tasks: tuple[TaskSpec, ...]
    wanted: tuple[Key, ...] = ()


class ClientDesiresKeys(FromClient):
    """The client holds futures of these keys again."""

    op: ClassVar[str] = "client-desires-keys"

    keys: tuple[Key, ...]


class FireAndForget(FromClient):
    """Run these keys to the end even when no client holds them any more."""

    op: ClassVar[str] = "fire-and-forget"

    keys: tuple[Key, ...]


class ClientReleasesKeys(FromClient):
    """The client holds no future of these keys any more."""

    op: ClassVar[str] = "client-releases-keys"

    keys: tuple[Key, ...]


class CancelKeys(FromClient):
    """The client cancels keys; with ``force`` even if other clients want them."""

    op: ClassVar[str] = "cancel-keys"

    keys: tuple[Key, ...]
    force: bool = False


class RetryKeys(FromClient):
    """The client asks to run erred keys (and their erred dependencies) again."""

    op: ClassVar[str] = "retry-keys"

    keys: tuple[Key, ...]


class ScatterData(FromClient):
    """The client placed data on workers itself: ``who_has`` maps key to worker addresses.

    ``client`` is empty when no client wants the data (a worker's own scatter).
    """

    op: ClassVar[str] = "scatter-data"

    who_has: dict[Key, tuple[str, ...]]
    nbytes: dict[Key, int]
    types: dict[Key, str] = msgspec.field(default_factory=dict)


class Flush(FromClient):
    """Everything the client sent before this has arrived (a request carrying the same
    ``uid`` waits for it)."""

    op: ClassVar[str] = "flush"

    uid: str


# ---------------------------------------------------------------------- scheduler -> client


class ToClient(StreamMessage, kw_only=True):
    """Base of what the scheduler tells a client."""

    peer_fields: ClassVar[tuple[str, ...]] = ("client",)

    client: str = ""
    ack: int = 0


class KeyInMemory(ToClient):
    """``key`` finished: its result, of ``type``, is held by ``workers``."""

    op: ClassVar[str] = "key-in-memory"

    key: Key
    type: str
    workers: tuple[str, ...]


class KeyErred(ToClient):
    """``key`` (or a task it depends on) raised."""

    op: ClassVar[str] = "task-erred"

    key: Key
    exception: Any
    traceback: Any
    exception_text: str


class KeyCancelled(ToClient):
    """The scheduler forgot ``key`` (cancelled, or its dependencies were lost)."""

    op: ClassVar[str] = "cancelled-key"

    key: Key
    reason: str


class KeyLost(ToClient):
    """The data of a finished key was lost; it is being computed again."""

    op: ClassVar[str] = "lost-data"

    key: Key


class Restarted(ToClient):
    """The cluster restarted: every future of the client is cancelled."""

    op: ClassVar[str] = "restart"


FROM_CLIENT = Catalogue.of(FromClient)
TO_CLIENT = Catalogue.of(ToClient)
