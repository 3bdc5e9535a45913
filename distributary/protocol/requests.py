"""The requests each server answers, declared once: a frozen class per operation,
with the type of its reply.

A request travels as ``{"op": op, **fields}`` on a connection of its own (borrowed
from a connection pool) and is answered with one reply, unless it says
``"reply": False``.  The server decodes it as its :class:`~distributary.protocol.
message.Catalogue` of requests says, checking every field: an unknown op, a missing
field or a value of the wrong type is answered with a ProtocolError naming them, and
the handler only ever sees a well-typed request.  The caller checks the reply against
the request's ``reply_type`` in the same way (:func:`decode_reply`): a reply of the
wrong shape is a ProtocolError naming the op, and an error reply raises its exception.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from distributary.protocol.errors import rebuild_exception
from distributary.protocol.message import Key, Message
from distributary.protocol.wire import ProtocolError

Seconds = float | int | str | None  # a duration: seconds, or dask's "5s", "1 minute"
OK = Literal["OK"]


class Request(Message):
    """Base of the requests; ``reply_type`` is the type of the answer.

    With ``reply = False`` the server does not answer with what the handler returns:
    the handler takes the connection over (it becomes a stream) and answers itself.
    """

    reply_type: ClassVar[Any] = Any
    reply: ClassVar[bool] = True


class Reply(msgspec.Struct, frozen=True):
    """Base of the replies with fields of their own (they travel as maps)."""

    def to_message(self) -> dict:
        """The reply for the wire."""
        return msgspec.structs.asdict(self)


def wants_reply(msg: Request | dict) -> bool:
    """Whether the server answers ``msg`` (a request, or a dict naming an op) with
    what its handler returns (a dict may say ``"reply": False``)."""
    return type(msg).reply if isinstance(msg, Request) else msg.get("reply", True)


def decode_reply(request: type[Request], reply: Any) -> Any:
    """``reply`` as ``request`` declares it; an error reply raises its exception."""
    if reply.__class__ is dict and reply.get("status") == "error":
        raise rebuild_exception(reply)
    if reply.__class__ is request.reply_type:  # (made in this process, in memory)
        return reply
    try:
        return msgspec.convert(reply, request.reply_type)
    except msgspec.ValidationError as exc:
        raise ProtocolError(str(exc), op=f"{request.op} reply") from None


# ---------------------------------------------------------------------- replies


class Registered(Reply):
    """A worker or a client is registered: the connection is its stream from now on.

    A worker is given the worker plugins registered (``protocol.plugins.Plugin``
    values), to set up before it reads its first task; a client the ports of the
    scheduler's services (``{"dashboard": 8787}``).
    """

    id: str
    status: OK = "OK"
    plugins: tuple[Any, ...] = ()
    services: dict[str, int] = msgspec.field(default_factory=dict)  # the scheduler's ports


class Dataset(Reply):
    """A published dataset: its pickled value, and the keys of the futures in it."""

    data: Any
    keys: tuple[Key, ...]


class Data(Reply):
    """The data asked for that a worker holds (serialized values, by key)."""

    data: dict[Key, Any]


class Ran(Reply):
    """What a function run on a server gave: its pickled result, or the error reply of
    what it raised."""

    result: Any = None
    error: dict[str, Any] | None = None


class Stored(Reply):
    """What a worker now keeps: the size and the type name of each value."""

    nbytes: dict[Key, int]
    types: dict[Key, str]


# ---------------------------------------------------------------------- any server


class Identity(Request):
    """Who the server is: its type, id, address and what it runs."""

    op: ClassVar[str] = "identity"
    reply_type: ClassVar[Any] = dict[str, Any]


class RunFunction(Request):
    """Run ``function(*args, **kwargs)`` (each pickled) here, in the server's event loop
    (awaited if a coroutine function, unless not ``wait``), passing the server as
    ``dask_worker`` (a worker or a nanny) or ``dask_scheduler`` if it takes that."""

    op: ClassVar[str] = "run"
    reply_type: ClassVar[Any] = Ran

    function: Any
    args: Any
    kwargs: Any
    wait: bool = True


class Terminate(Request):
    """Close the server."""

    op: ClassVar[str] = "terminate"
    reply_type: ClassVar[Any] = OK


# ---------------------------------------------------------------------- the scheduler


class RegisterWorker(Request):
    """A worker joins; the connection becomes its stream.  ``pid`` is its process's."""

    op: ClassVar[str] = "register-worker"
    reply_type: ClassVar[Any] = Registered
    reply: ClassVar[bool] = False

    address: str
    nthreads: int
    name: Any = None
    memory_limit: int | None = None
    resources: dict[str, int | float] | None = None
    nanny: str | None = None
    pid: int = 0
    local_directory: str = ""
    services: dict[str, int] = msgspec.field(default_factory=dict)  # ports, by name


class RegisterClient(Request):
    """A client connects; the connection becomes its stream."""

    op: ClassVar[str] = "register-client"
    reply_type: ClassVar[Any] = Registered
    reply: ClassVar[bool] = False

    client: str


class WhoHas(Request):
    """The workers holding each key."""

    op: ClassVar[str] = "who-has"
    reply_type: ClassVar[Any] = dict[Key, tuple[str, ...]]

    keys: tuple[Key, ...]


class Story(Request):
    """What happened to these keys."""

    op: ClassVar[str] = "story"
    reply_type: ClassVar[Any] = tuple[tuple[Any, ...], ...]

    keys: tuple[Key, ...]


class WorkerKilled(Request):
    """A nanny kills its worker, for ``reason``."""

    op: ClassVar[str] = "worker-killed"
    reply_type: ClassVar[Any] = OK

    worker: str
    reason: str = ""


class WorkersToClose(Request):
    """The workers that can be closed at little cost (``Scheduler.workers_to_close``)."""

    op: ClassVar[str] = "workers_to_close"
    reply_type: ClassVar[Any] = tuple[Any, ...]

    n: int | None = None
    target: int | None = None
    minimum: int = 0
    memory_ratio: float | None = None
    attribute: str = "address"


class RetireWorkers(Request):
    """Move these workers' data elsewhere, then remove (and maybe close) them; the
    workers to close are chosen as :class:`WorkersToClose` says when none are named."""

    op: ClassVar[str] = "retire_workers"
    reply_type: ClassVar[Any] = dict[str, dict[str, Any]]

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
    reply_type: ClassVar[Any] = OK

    timeout: Seconds = 30
    wait_for_workers: bool = True


class RunOnWorkers(Request):
    """Run a function on these workers (addresses or names; all when None), or on their
    nannies, as :class:`RunFunction` says: what each gave, by worker address."""

    op: ClassVar[str] = "run-on-workers"
    reply_type: ClassVar[Any] = dict[str, Ran]

    function: Any
    args: Any
    kwargs: Any
    workers: tuple[Any, ...] | None = None
    nanny: bool = False
    wait: bool = True


class WaitForWorkers(Request):
    """Answered once at least ``n_workers`` workers are registered."""

    op: ClassVar[str] = "wait_for_workers"
    reply_type: ClassVar[Any] = OK

    n_workers: int
    timeout: Seconds = None


class PublishPut(Request):
    """Publish the pickled ``data[i]`` (holding the futures ``keys[i]``) as ``names[i]``."""

    op: ClassVar[str] = "publish-put"
    reply_type: ClassVar[Any] = None

    names: tuple[Key, ...]
    data: tuple[Any, ...]
    keys: tuple[tuple[Key, ...], ...]
    override: bool = False
    client: str | None = None
    uid: str | None = None


class PublishGet(Request):
    """The published datasets ``names``; the asking ``client`` wants their keys."""

    op: ClassVar[str] = "publish-get"
    reply_type: ClassVar[Any] = tuple[Dataset | None, ...]

    names: tuple[Key, ...]
    client: str | None = None


class PublishList(Request):
    """The names of the published datasets."""

    op: ClassVar[str] = "publish-list"
    reply_type: ClassVar[Any] = tuple[Key, ...]


class PublishDelete(Request):
    """Unpublish ``names``."""

    op: ClassVar[str] = "publish-delete"
    reply_type: ClassVar[Any] = None

    names: tuple[Key, ...]
    client: str | None = None
    uid: str | None = None


# ---------------------------------------------------------------------- a worker


class GetData(Request):
    """The data of these keys that the worker holds."""

    op: ClassVar[str] = "get-data"
    reply_type: ClassVar[Any] = Data

    keys: tuple[Key, ...]


class UpdateData(Request):
    """Keep this data (pickled values, by key)."""

    op: ClassVar[str] = "update-data"
    reply_type: ClassVar[Any] = Stored

    data: dict[Key, Any]


class CloseWorker(Request):
    """Close the worker; with ``nanny`` its nanny too."""

    op: ClassVar[str] = "close"
    reply_type: ClassVar[Any] = OK

    nanny: bool = True


# ---------------------------------------------------------------------- a nanny


class Instantiate(Request):
    """Start the worker process."""

    op: ClassVar[str] = "instantiate"
    reply_type: ClassVar[Any] = str


class Kill(Request):
    """Stop the worker process, within ``timeout``."""

    op: ClassVar[str] = "kill"
    reply_type: ClassVar[Any] = str

    timeout: Seconds = 2


class RestartWorker(Request):
    """Start a new worker process in place of the current one."""

    op: ClassVar[str] = "restart"
    reply_type: ClassVar[Any] = str

    timeout: Seconds = 30


class CloseGracefully(Request):
    """The worker closes for good: do not restart it."""

    op: ClassVar[str] = "close_gracefully"
    reply_type: ClassVar[Any] = OK
