"""The client's ordered outbox: every message to the scheduler, and every release, in order.

Messages may be sent from any thread; the client's event loop writes them.  A release
must never overtake a graph sent before it that depends on the released key, so graphs,
messages and released keys share one queue.  A graph goes out as ``update-graph``
messages of a bounded number of tasks each, so that its first tasks can start while the
rest is still being pickled (in a thread, for a big graph) or read by the scheduler.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributary.protocol.errors import error_message
from distributary.utils.gc_pause import gc_paused
from distributary.utils.loop import in_loop

_stimulus_counter = itertools.count()


def stimulus(name: str) -> str:
    """A fresh stimulus id for a message caused by this client."""
    return f"{name}-{next(_stimulus_counter)}"


class PendingGraph:
    """A graph in the outbox: its parts as they are built, sent in order."""

    __slots__ = ("wanted", "built", "asked", "done", "error", "abandoned")

    def __init__(self, wanted: set):
        self.wanted = wanted  # the keys futures were made for
        self.built: list[dict] = []  # messages built and not yet taken by the outbox
        self.asked: set = set()  # every key the built messages ask the scheduler to keep
        self.done = False
        self.error: dict | None = None  # errs the wanted keys of the parts never built
        self.abandoned = False  # no futures were returned: release everything asked for


class OutboxMixin:
    """The ordered outbox of a ``Client``."""

    def _send(self: Any, msg: dict) -> None:
        """Send a message on the scheduler stream, from any thread, in order."""
        self._check_open()
        self._enqueue(msg)

    def _enqueue(self: Any, item: Any) -> None:
        """Queue a message, a ``PendingGraph`` or a key to release (if no future holds
        it by the time it is flushed)."""
        with self._ref_lock:
            self._outbox.append(item)
        self._schedule_flush()

    def _schedule_flush(self: Any) -> None:
        with self._ref_lock:
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        if in_loop(self.loop):
            self.loop.call_soon(self._flush_outbox)
            return
        try:
            self.loop.call_soon_threadsafe(self._flush_outbox)
        except RuntimeError:
            pass  # the loop is closed: the scheduler drops this client's keys anyway

    def _send_graph(
        self: Any,
        parts: Iterable[tuple[list[dict], list]],
        wanted: set,
        background: bool = False,
    ) -> None:
        """Send a graph given as ``(tasks, keys to keep)`` parts, one message each.

        Without ``background`` the parts are built here, and an error raises and abandons
        the graph: what was sent of it is released.  With it they are built in a thread,
        what is sent later waits behind them, and an error errs the ``wanted`` keys not
        yet sent.  The keys parts ask to keep only for a later part are released after
        the last.
        """
        pending = PendingGraph(wanted)
        self._send(pending)
        if not background:
            self._build_parts(pending, parts, background)
            return
        if self._graph_builder is None:
            self._graph_builder = ThreadPoolExecutor(1, thread_name_prefix="distributary-graph")
        self._graph_builder.submit(self._build_parts, pending, parts, background)

    def _build_parts(self: Any, pending: PendingGraph, parts: Iterable, background: bool) -> None:
        try:
            with gc_paused():  # (many objects made, no garbage)
                for index, (tasks, want) in enumerate(parts):
                    msg = {
                        "op": "update-graph",
                        "tasks": tasks,
                        "wanted": want,
                        "continues": index > 0,
                        "stimulus_id": stimulus("update-graph"),
                    }
                    with self._ref_lock:
                        pending.built.append(msg)
                        pending.asked.update(want)
                    self._schedule_flush()
        except BaseException as exc:
            if not (background and isinstance(exc, Exception)):
                with self._ref_lock:  # (at once: the caller may submit these keys again)
                    pending.abandoned = True
                    for key in pending.wanted - pending.asked:
                        if key not in self._refcount:
                            self.futures.pop(key, None)
                raise
            pending.error = error_message(exc)
        finally:
            pending.done = True
            self._schedule_flush()

    def _flush_outbox(self: Any) -> None:
        msgs: list[dict] = []
        releases: list = []

        def release_now() -> None:
            if releases:
                msgs.append(self._release_message(releases[:]))
                releases.clear()

        with self._ref_lock:
            self._flush_scheduled = False
            taken = 0
            for item in self._outbox:
                if isinstance(item, PendingGraph):
                    release_now()
                    msgs.extend(item.built)
                    item.built.clear()
                    if not item.done:
                        break  # the rest waits for this graph
                    released = self._finish_graph(item)
                    releases.extend(key for key in released if key not in self._refcount)
                elif isinstance(item, dict):
                    release_now()
                    msgs.append(item)
                elif item not in self._refcount:  # not wanted again since
                    releases.append(item)
                taken += 1
            del self._outbox[:taken]
            release_now()
        if msgs and self._batched is not None and not self._batched.closed():
            self._batched.send(*msgs)

    def _finish_graph(self: Any, graph: PendingGraph) -> Iterable:
        """Err the wanted keys that were never sent, if building the graph failed; return
        the keys asked for that are to be released."""
        if graph.abandoned:
            return graph.asked
        if graph.error is not None:
            for key in graph.wanted - graph.asked:
                state = self.futures.get(key)
                if state is not None:
                    state.set_error(graph.error)
        return (key for key in graph.asked if key not in graph.wanted)

    def _release_message(self: Any, keys: list) -> dict:
        for key in keys:
            self.futures.pop(key, None)
        return {"op": "client-releases-keys", "keys": keys, "stimulus_id": stimulus("release")}
