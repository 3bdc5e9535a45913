"""The requests of plugins (:mod:`distributary.plugins`).

A client registers a scheduler plugin with the scheduler, which unpickles and keeps it;
a worker or nanny plugin it registers stays pickled on the scheduler, which passes it
on to every worker (nanny) there is (``plugin-add``) and hands it to each that starts
later (``get-plugins``), as ``(name, seq, plugin)``: ``seq`` numbers the registrations
and removals of the scheduler, so that a worker told of one twice (by both ways, as it
starts) or late acts on each only once, and never undoes a later one.  What a worker
or nanny said is a :class:`~distributary.protocol.requests.Ran` (its error, if any).
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.requests import Ran, Reply, Request

# ---------------------------------------------------------------------- the scheduler


class RegisterSchedulerPlugin(Request):
    """Unpickle ``plugin``, start it and keep it as ``name``, in place of (and closing)
    one of that name; if one is there and ``idempotent``, do nothing."""

    op: ClassVar[str] = "register-scheduler-plugin"
    reply_type: ClassVar[Any] = None

    plugin: Any
    name: str
    idempotent: bool = False


class UnregisterSchedulerPlugin(Request):
    """Drop (and close) the scheduler plugin ``name``: ValueError if there is none."""

    op: ClassVar[str] = "unregister-scheduler-plugin"
    reply_type: ClassVar[Any] = None

    name: str


class RegisterWorkerPlugin(Request):
    """Keep the pickled ``plugin`` as ``name`` for every worker (every nanny, with
    ``nanny``) and set it up on those there are, in place of one of that name; if one is
    there and ``idempotent``, do nothing.  What each said, by worker address."""

    op: ClassVar[str] = "register-worker-plugin"
    reply_type: ClassVar[Any] = dict[str, Ran]

    plugin: Any
    name: str
    idempotent: bool = False
    nanny: bool = False


class UnregisterWorkerPlugin(Request):
    """Drop the worker (nanny) plugin ``name`` and tear it down where it is set up
    (ValueError if there is none): what each said, by worker address."""

    op: ClassVar[str] = "unregister-worker-plugin"
    reply_type: ClassVar[Any] = dict[str, Ran]

    name: str
    nanny: bool = False


class Plugin(Reply):
    """A worker or nanny plugin as the scheduler keeps it: pickled, with the number of
    its registration."""

    name: str
    seq: int
    plugin: Any


class GetPlugins(Request):
    """The worker (nanny) plugins registered, in the order they were."""

    op: ClassVar[str] = "get-plugins"
    reply_type: ClassVar[Any] = tuple[Plugin, ...]

    nanny: bool = False


# ---------------------------------------------------------------------- a worker or a nanny


class PluginAdd(Request):
    """Set the pickled ``plugin`` up as ``name``, in place of one of that name (torn
    down), unless registration ``seq`` (or a later one of ``name``) was acted on here."""

    op: ClassVar[str] = "plugin-add"
    reply_type: ClassVar[Any] = Ran

    name: str
    seq: int
    plugin: Any


class PluginRemove(Request):
    """Tear the plugin ``name`` down, unless removal ``seq`` (or a later registration of
    ``name``) was acted on here."""

    op: ClassVar[str] = "plugin-remove"
    reply_type: ClassVar[Any] = Ran

    name: str
    seq: int


def statuses(replies: dict[str, Ran]) -> dict[str, dict[str, Any]]:
    """What each worker said, as dask.distributed says it: ``{"status": "OK"}`` or its
    error reply, by address."""
    return {address: ran.error or {"status": "OK"} for address, ran in replies.items()}
