"""Requests that must come after what a client sent on its stream before them.

A client sends graphs, releases and scattered data on its ordered stream, but its
requests (publish a dataset, put a future in a queue, set a variable to a future) go
on connections of their own and may overtake the stream.  So the client first sends a
:class:`~distributary.protocol.client_messages.Flush` marker with a fresh ``uid`` on
its stream, then the request carrying the same ``uid``; the extension holding the
request waits here (:meth:`StreamFlushes.wait`) until the stream has delivered that
marker.  The marker is taken while a batch read from the stream is handled; the
waiting request resumes only after the event loop gets control back, that is after the
whole batch has reached the state machine, so every key the client made before the
request is known by then.  A client that leaves before its marker arrives fails its
waiting requests.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension

# Markers whose request never came (the client died in between) are forgotten beyond
# this many.
_MAX_PENDING = 10_000


class StreamFlushes(SchedulerExtension):
    """The flush markers of the clients' streams, and the requests waiting for them."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self._flushes: OrderedDict[str, asyncio.Future] = OrderedDict()  # by uid
        self._waiting: dict[str, Any] = {}  # uid -> the client whose request waits for it
        self.message_handlers[ev.Flush] = self.received
        self.instruction_handlers[ins.ClientRemoved] = self._client_removed

    def received(self, msg: ev.Flush) -> None:
        """A client's marker arrived: wake the request waiting for it."""
        flushed = self._future(msg.uid)
        if not flushed.done():
            flushed.set_result(None)
        while len(self._flushes) > _MAX_PENDING:
            self._flushes.popitem(last=False)

    async def wait(self, client: str | None, uid: str | None) -> None:
        """Until the stream of ``client`` delivered its marker ``uid`` (at once without
        one); RuntimeError if the client is not, or no longer, connected."""
        if uid is None:
            return
        flushed = self._future(uid)
        try:
            if not flushed.done() and not self.scheduler.is_connected(client):
                raise RuntimeError(_not_connected(client))
            self._waiting[uid] = client
            await flushed
        finally:
            self._flushes.pop(uid, None)
            self._waiting.pop(uid, None)

    def _client_removed(self, removed: ins.ClientRemoved) -> None:
        for uid, client in list(self._waiting.items()):
            flushed = self._flushes.get(uid)
            if client == removed.client and flushed is not None and not flushed.done():
                flushed.set_exception(RuntimeError(_not_connected(client)))

    def _future(self, uid: str) -> asyncio.Future:
        flushed = self._flushes.get(uid)
        if flushed is None:
            flushed = self._flushes[uid] = asyncio.get_running_loop().create_future()
        return flushed


def _not_connected(client: Any) -> str:
    return (
        f"Client {client!r} is not connected to the scheduler: "
        "its earlier messages cannot be waited for"
    )
