"""The requests that look into a running cluster: where keys are, what runs, the
servers' logs, versions and call stacks, and the scheduler's events.

Workers are named by address or name (``workers=None``: all).  The logs of a server
are ``(level, message)`` pairs, newest first.  An event is ``(time, msg)``, ``msg``
being plain data (what msgpack encodes: no pickled objects); workers log theirs on
their stream to the scheduler (:class:`WorkerLogEvent`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.message import Key
from distributary.protocol.requests import Request
from distributary.protocol.wire import dumps_message, loads_message
from distributary.protocol.worker_messages import FromWorker

Logs = tuple[tuple[str, ...], ...]  # (level, message) pairs, newest first


def plain(msg: Any, what: str) -> Any:
    """``msg`` as it comes out of a message (lists as tuples); TypeError naming
    ``what`` if it is not plain data."""
    try:
        return loads_message(dumps_message(msg))
    except TypeError as exc:
        raise TypeError(f"{what} must be plain data that msgpack encodes: {exc}") from None


def check_topic(topic: Any) -> str | tuple[str, ...]:
    """An event's topic: a string, or several (a tuple of them); TypeError otherwise."""
    if isinstance(topic, str):
        return topic
    if isinstance(topic, list | tuple | set | frozenset) and all(isinstance(t, str) for t in topic):
        return tuple(topic)
    raise TypeError(f"An event's topic is a string or a list of strings, not {topic!r}")


# ---------------------------------------------------------------------- any server


class GetLogs(Request):
    """The server's recent log records, newest first: at most ``n`` (None: all kept)."""

    op: ClassVar[str] = "get-logs"
    reply_type: ClassVar[Any] = Logs

    n: int | None = None


class GetVersions(Request):
    """The server's Python, platform and package versions (and those of ``packages``)."""

    op: ClassVar[str] = "versions"
    reply_type: ClassVar[Any] = dict[str, dict[str, Any]]

    packages: tuple[str, ...] = ()


# ---------------------------------------------------------------------- a worker


class CallStack(Request):
    """The Python stack of each task running on the worker (of ``keys`` only, unless
    None), by key: the lines of ``traceback.format_stack``."""

    op: ClassVar[str] = "call-stack"
    reply_type: ClassVar[Any] = dict[Key, tuple[str, ...]]

    keys: tuple[Key, ...] | None = None


class WorkerLogEvent(FromWorker):
    """Log ``msg`` under ``topic`` (or each of several topics) on the scheduler."""

    op: ClassVar[str] = "log-event"

    topic: str | tuple[str, ...]
    msg: Any


# ---------------------------------------------------------------------- the scheduler


class HasWhat(Request):
    """The keys held by each worker, by address."""

    op: ClassVar[str] = "has-what"
    reply_type: ClassVar[Any] = dict[str, tuple[Key, ...]]

    workers: tuple[Any, ...] | None = None


class Processing(Request):
    """The keys being processed by each worker, by address."""

    op: ClassVar[str] = "processing"
    reply_type: ClassVar[Any] = dict[str, tuple[Key, ...]]

    workers: tuple[Any, ...] | None = None


class NThreads(Request):
    """The threads of each worker, by address."""

    op: ClassVar[str] = "ncores"
    reply_type: ClassVar[Any] = dict[str, int]

    workers: tuple[Any, ...] | None = None


class NBytes(Request):
    """The bytes of each key held (of ``keys`` only, unless None); with ``summary``
    added up by key prefix."""

    op: ClassVar[str] = "nbytes"
    reply_type: ClassVar[Any] = dict[Key, int]

    keys: tuple[Key, ...] | None = None
    summary: bool = True


class ClusterCallStack(Request):
    """The stacks of the tasks running now (of ``keys``, and of what those wait for,
    unless None), by worker address and key; workers running none are left out."""

    op: ClassVar[str] = "cluster-call-stack"
    reply_type: ClassVar[Any] = dict[str, dict[Key, tuple[str, ...]]]

    keys: tuple[Key, ...] | None = None


class WorkerLogs(Request):
    """The recent logs of each worker (or of its nanny), by worker address."""

    op: ClassVar[str] = "worker-logs"
    reply_type: ClassVar[Any] = dict[str, Logs]

    n: int | None = None
    workers: tuple[Any, ...] | None = None
    nanny: bool = False


class ClusterVersions(Request):
    """The versions of the scheduler and of each worker:
    ``{"scheduler": versions, "workers": {address: versions}}``."""

    op: ClassVar[str] = "cluster-versions"
    reply_type: ClassVar[Any] = dict[str, Any]

    packages: tuple[str, ...] = ()


class LogEvent(Request):
    """Log ``msg`` under ``topic`` (or each of several topics)."""

    op: ClassVar[str] = "log-event"
    reply_type: ClassVar[Any] = None

    topic: str | tuple[str, ...]
    msg: Any


class GetEvents(Request):
    """The events of ``topic``, oldest first, as ``(time, msg)`` pairs; of every topic,
    by topic, when None."""

    op: ClassVar[str] = "get-events"
    reply_type: ClassVar[Any] = Any

    topic: str | None = None
