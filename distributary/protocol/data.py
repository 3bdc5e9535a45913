"""The scheduler's requests about the data on the cluster: where copies of it are held
(``replicate``, ``rebalance``), the metadata kept beside it (``set_metadata``,
``get_metadata``) and the task a failure is blamed on (for replaying it locally).

The data itself never passes through the scheduler: it asks workers to fetch from each
other, and a failed task's payload goes back to the client as the opaque blob it came.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.message import Key
from distributary.protocol.requests import Reply, Request

NO_DEFAULT = "__no_default__"  # get_metadata without a default raises KeyError

# ---------------------------------------------------------------------- replies


class Placed(Reply):
    """How a replicate or rebalance went: ``"OK"``, or ``"partial-fail"`` with the keys
    that hold no data (unknown, erred, released) and were left out."""

    status: str
    keys: tuple[Key, ...] = ()


class ErredTask(Reply):
    """The task a failure is blamed on: its key, its payload as it came from its client,
    and the keys it takes as inputs."""

    key: Key
    payload: Any
    dependencies: tuple[Key, ...]


# ---------------------------------------------------------------------- requests


class Replicate(Request):
    """Have ``n`` copies of each key's data on ``workers`` (addresses or names; all
    running workers when None; ``n``: one on each of them when None).  Each holder
    gives at most ``branching_factor`` copies per round; with ``delete`` copies beyond
    ``n`` on those workers are dropped.  ``client`` and ``uid``: the flush marker to
    wait for (see :mod:`distributary.scheduler.flushes`)."""

    op: ClassVar[str] = "replicate"
    reply_type: ClassVar[Any] = Placed

    keys: tuple[Key, ...]
    n: int | None = None
    workers: tuple[Any, ...] | None = None
    branching_factor: int = 2
    delete: bool = True
    client: str | None = None
    uid: str | None = None


class Rebalance(Request):
    """Even out the bytes held among ``workers`` (all running workers when None) by
    moving the data of ``keys`` (all when None), after the flush marker ``uid`` of
    ``client``."""

    op: ClassVar[str] = "rebalance"
    reply_type: ClassVar[Any] = Placed

    keys: tuple[Key, ...] | None = None
    workers: tuple[Any, ...] | None = None
    client: str | None = None
    uid: str | None = None


class SetMetadata(Request):
    """Set the metadata at the path ``keys`` (a nested dict is made on the way)."""

    op: ClassVar[str] = "set_metadata"
    reply_type: ClassVar[Any] = None

    keys: tuple[Key, ...]
    value: Any = None


class GetMetadata(Request):
    """The metadata at the path ``keys``: ``default`` if there is none, KeyError
    without one."""

    op: ClassVar[str] = "get_metadata"
    reply_type: ClassVar[Any] = Any

    keys: tuple[Key, ...]
    default: Any = NO_DEFAULT


class GetErredTask(Request):
    """The task that the failure of the first erred key of ``keys`` is blamed on (None
    if none of them erred)."""

    op: ClassVar[str] = "get_erred_task"
    reply_type: ClassVar[Any] = ErredTask | None

    keys: tuple[Key, ...]
