"""The requests each server answers, declared once: a frozen class per operation.

A request travels as ``{"op": op, **fields}`` on a connection of its own (borrowed
from a connection pool) and is answered with one reply, unless it says
``"reply": False``.  The server decodes it as its :class:`~distributary.protocol.
message.Catalogue` of requests says, checking every field: an unknown op, a missing
field or a value of the wrong type is answered with a ProtocolError naming them, and
the handler only ever sees a well-typed request.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.message import Key, Message

Seconds = float | int | str | None  # a duration: seconds, or dask's "5s", "1 minute"


class Request(Message):
    """Base of the requests."""


# ---------------------------------------------------------------------- any server


class Identity(Request):
    """Who the server is: its type, id, address and what it runs."""

    op: ClassVar[str] = "identity"


class Terminate(Request):
    """Close the server."""

    op: ClassVar[str] = "terminate"


# ---------------------------------------------------------------------- the scheduler


class RegisterWorker(Request):
    """A worker joins; the connection becomes its stream."""

    op: ClassVar[str] = "register-worker"

    address: str
    nthreads: int
    name: Any = None
    memory_limit: int | None = None
    resources: dict[str, int | float] | None = None
    nanny: str | None = None


class RegisterClient(Request):
    """A client connects; the connection becomes its stream."""

    op: ClassVar[str] = "register-client"

    client: str


class WhoHas(Request):
    """The workers holding each key."""

    op: ClassVar[str] = "who-has"

    keys: tuple[Key, ...]


class Story(Request):
    """What happened to these keys."""

    op: ClassVar[str] = "story"

    keys: tuple[Key, ...]


class WorkerKilled(Request):
    """A nanny kills its worker, for ``reason``."""

    op: ClassVar[str] = "worker-killed"

    worker: str
    reason: str = ""


class WorkersToClose(Request):
    """The workers that can be closed at little cost (``Scheduler.workers_to_close``)."""

    op: ClassVar[str] = "workers_to_close"

    n: int | None = None
    target: int | None = None
    minimum: int = 0
    memory_ratio: float | None = None
    attribute: str = "address"


class RetireWorkers(Request):
    """Move these workers' data elsewhere, then remove (and maybe close) them; the
    workers to close are chosen as :class:`WorkersToClose` says when none are named."""

    op: ClassVar[str] = "retire_workers"

    workers: tuple[str, ...] | None = None
    names: tuple[Any, ...] | None = None
    close_workers: bool = False
    remove: bool = True
    timeout: float | None = None
    n: int | None = None
    target: int | None = None
    minimum: int = 0
    memory_ratio: float | None = None
    attribute: str = "address"


class Restart(Request):
    """Forget every task and restart every worker."""

    op: ClassVar[str] = "restart"

    timeout: Seconds = 30
    wait_for_workers: bool = True


class WaitForWorkers(Request):
    """Answered once at least ``n_workers`` workers are registered."""

    op: ClassVar[str] = "wait_for_workers"

    n_workers: int
    timeout: Seconds = None


class PublishPut(Request):
    """Publish the pickled ``data[i]`` (holding the futures ``keys[i]``) as ``names[i]``."""

    op: ClassVar[str] = "publish-put"

    names: tuple[Key, ...]
    data: tuple[Any, ...]
    keys: tuple[tuple[Key, ...], ...]
    override: bool = False
    client: str | None = None
    uid: str | None = None


class PublishGet(Request):
    """The published datasets ``names``; the asking ``client`` wants their keys."""

    op: ClassVar[str] = "publish-get"

    names: tuple[Key, ...]
    client: str | None = None


class PublishList(Request):
    """The names of the published datasets."""

    op: ClassVar[str] = "publish-list"


class PublishDelete(Request):
    """Unpublish ``names``."""

    op: ClassVar[str] = "publish-delete"

    names: tuple[Key, ...]
    client: str | None = None
    uid: str | None = None


# ---------------------------------------------------------------------- a worker


class GetData(Request):
    """The data of these keys that the worker holds."""

    op: ClassVar[str] = "get-data"

    keys: tuple[Key, ...]


class UpdateData(Request):
    """Keep this data (pickled values, by key)."""

    op: ClassVar[str] = "update-data"

    data: dict[Key, Any]


class CloseWorker(Request):
    """Close the worker; with ``nanny`` its nanny too."""

    op: ClassVar[str] = "close"

    nanny: bool = True


# ---------------------------------------------------------------------- a nanny


class Instantiate(Request):
    """Start the worker process."""

    op: ClassVar[str] = "instantiate"


class Kill(Request):
    """Stop the worker process, within ``timeout``."""

    op: ClassVar[str] = "kill"

    timeout: Seconds = 2


class RestartWorker(Request):
    """Start a new worker process in place of the current one."""

    op: ClassVar[str] = "restart"

    timeout: Seconds = 30


class CloseGracefully(Request):
    """The worker closes for good: do not restart it."""

    op: ClassVar[str] = "close_gracefully"
