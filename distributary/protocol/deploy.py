"""The requests of cluster managers (SpecCluster, Adaptive) to their scheduler: how many
workers the work asks for, and the workers there are, as they come and go."""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.requests import Reply, Request, Seconds


class AdaptiveTarget(Request):
    """How many workers the current work asks for (``Scheduler.adaptive_target``)."""

    op: ClassVar[str] = "adaptive_target"
    reply_type: ClassVar[Any] = int

    target_duration: Seconds = "5s"


class WorkerTable(Reply):
    """The scheduler's identity (with its workers by address) and ``version``, the
    count of worker arrivals and departures so far."""

    version: int
    identity: dict[str, Any]


class WatchWorkers(Request):
    """The :class:`WorkerTable`, once its version differs from ``since`` or ``timeout``
    seconds have passed (a long poll; ``since=-1`` answers at once)."""

    op: ClassVar[str] = "watch_workers"
    reply_type: ClassVar[Any] = WorkerTable

    since: int = -1
    timeout: float | None = None
