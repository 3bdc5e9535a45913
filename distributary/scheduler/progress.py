"""Progress on the scheduler: tasks counted per task prefix, and the bars of ``progress()``.

Nothing is counted while nobody asks: the extension attaches its observers to the
state's transitions only while it has a consumer, and detaches them when the last one
goes, so that without consumers no transition pays anything.  With one, each
transition costs a dict lookup and a few counts (:mod:`~distributary.scheduler.
progress_state`); starting to count costs one pass over the tasks there are.

Counts per task prefix (for the dashboard)
------------------------------------------
``scheduler.progress.acquire()`` returns a :class:`ProgressWatch` (counting starts
with the first one)::

    watch = scheduler.progress.acquire()
    watch.counts()   # {"inc": {"memory": 8, "processing": 2, ..., "all": 10}, ...}
    watch.version    # changes whenever a count does: nothing to redraw if it did not
    watch.release()  # (or ``with scheduler.progress.acquire() as watch: ...``)

``counts()`` gives, by task prefix in the order first seen, how many of the
scheduler's tasks are in each state: ``released`` (finished and their data released,
or not started), ``waiting`` (for dependencies), ``queued`` (for a worker with room),
``no-worker`` (no worker can run them), ``processing``, ``memory``, ``erred``; plus
``forgotten``: those the scheduler dropped (done, or cancelled) since this watch was
acquired, and ``all``, the sum of them all.  A prefix with no task and nothing
forgotten is left out.  Call ``acquire`` and ``counts`` from the scheduler's event loop
(they read the scheduler's state).

The bars of ``progress()``
--------------------------
A client starts a bar on a set of keys (:mod:`distributary.protocol.progress`): the
keys and the unfinished tasks they need, counted by group (task prefix, or a function
of the key), updated as they finish, and asked for by the client at its own interval
(a request answered when the counts changed).  A bar goes with its last report, when
its client stops it, or with its client.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from distributary.plugins import observe
from distributary.protocol import progress as pr
from distributary.protocol.serialize import deserialize
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.progress_state import KeySetProgress, PrefixCounts, prefix_of
from distributary.scheduler.records import TaskRecord
from distributary.scheduler.waiters import check_connected


class ProgressWatch:
    """One consumer of the counts per task prefix (see the module's docstring)."""

    def __init__(self, extension: ProgressExtension, counter: PrefixCounts):
        self._extension = extension
        self._counter: PrefixCounts | None = counter
        self._since = counter.forgotten()

    def counts(self) -> dict[str, dict[str, int]]:
        """By task prefix: the tasks in each state, ``forgotten`` since this watch
        began, and ``all``."""
        return self._live().counts(self._since)

    @property
    def version(self) -> int:
        """A number that changes whenever a count does."""
        return self._live().version

    def release(self) -> None:
        """This consumer is done (counting stops with the last one); idempotent."""
        if self._counter is not None:
            self._counter = None
            self._extension._release(self)

    def _live(self) -> PrefixCounts:
        if self._counter is None:
            raise RuntimeError("This progress watch was released")
        return self._counter

    def __enter__(self) -> ProgressWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _Bar:
    """A client's bar: its progress, and the requests waiting for it to change."""

    __slots__ = ("id", "client", "progress", "changed")

    def __init__(self, bar_id: str, client: str | None, progress: KeySetProgress):
        self.id = bar_id
        self.client = client
        self.progress = progress
        self.changed: asyncio.Future | None = None

    def wake(self) -> None:
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)


class ProgressExtension(SchedulerExtension):
    """Counts per task prefix for the dashboard, and the bars of ``progress()``."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self._counter: PrefixCounts | None = None
        self._watches: set[ProgressWatch] = set()
        self._bars: dict[str, _Bar] = {}
        self._by_key: dict[Any, list[_Bar]] = {}  # the bars each unfinished key is in
        self.handlers.update({pr.ProgressStart: self._handle_start, pr.ProgressGet: self._get})
        self.message_handlers[pr.ProgressStop] = self._stop
        self.instruction_handlers.update(
            {ins.ClientRemoved: self._client_removed, ins.ClusterRestarted: self._restarted}
        )

    # ------------------------------------------------------------------ per prefix

    def acquire(self) -> ProgressWatch:
        """A new consumer of the counts per task prefix (release it when done)."""
        if self._counter is None:
            self._counter = PrefixCounts(self.scheduler.state.tasks)
            observe(self.scheduler.state.observers, self._counter.moved, True)
        watch = ProgressWatch(self, self._counter)
        self._watches.add(watch)
        return watch

    @property
    def watching(self) -> int:
        """How many consumers of the counts per prefix there are."""
        return len(self._watches)

    def _release(self, watch: ProgressWatch) -> None:
        self._watches.discard(watch)
        if not self._watches and self._counter is not None:
            observe(self.scheduler.state.observers, self._counter.moved, False)
            self._counter = None

    # ------------------------------------------------------------------ bars

    def stop(self) -> None:
        """The scheduler closes: every consumer goes."""
        for watch in list(self._watches):
            watch.release()
        for bar in list(self._bars.values()):
            self._drop(bar)

    def start_bar(
        self,
        keys: Any,
        complete: bool = True,
        group: Callable[[TaskRecord], Any] = prefix_of,
        client: str | None = None,
    ) -> pr.ProgressReport:
        """Follow ``keys`` and the unfinished tasks they need; the first report (its
        ``id`` names the bar)."""
        progress = KeySetProgress(self.scheduler.state.tasks, keys, complete, group)
        bar = _Bar(uuid.uuid4().hex, client, progress)
        if progress.remaining:
            self._bars[bar.id] = bar
            for key in progress.remaining:
                self._by_key.setdefault(key, []).append(bar)
            observe(self.scheduler.state.observers, self._keys_moved, True)
        return self._report(bar)

    async def _handle_start(self, comm: Any, msg: pr.ProgressStart) -> pr.ProgressReport:
        await self.scheduler.after_flush(msg.client, msg.uid)
        group = prefix_of
        if msg.group_by is not None:
            function = deserialize(msg.group_by)
            if not callable(function):
                raise TypeError(f"progress(group_by=...) takes a function, not {function!r}")
            group = _of_key(function)
        return self.start_bar(msg.keys, msg.complete, group, msg.client)

    async def _get(self, comm: Any, msg: pr.ProgressGet) -> pr.ProgressReport:
        bar = self._bars.get(msg.id)
        if bar is None:
            raise KeyError(f"No progress bar {msg.id!r}: it ended, or its client left")
        if bar.progress.version == msg.seen and bar.progress.remaining:
            check_connected(self.scheduler, msg.client)
            if bar.changed is None or bar.changed.done():
                bar.changed = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(bar.changed), msg.timeout)
            except asyncio.TimeoutError:
                pass
        return self._report(bar)

    def _stop(self, msg: pr.ProgressStop) -> None:
        bar = self._bars.get(msg.id)
        if bar is not None and bar.client == msg.client:
            self._drop(bar)

    def _report(self, bar: _Bar) -> pr.ProgressReport:
        """The bar's report; a bar that ended is dropped as it is reported."""
        progress = bar.progress
        status = progress.status
        if status != "running":
            self._drop(bar)
        return pr.ProgressReport(
            id=bar.id,
            version=progress.version,
            state=status,  # type: ignore[arg-type]
            all=dict(progress.all),
            done=dict(progress.done),
            erred=dict(progress.erred),
            cancelled=dict(progress.cancelled),
            error_key=progress.error_key,
            exception=progress.exception_text,
        )

    def _drop(self, bar: _Bar) -> None:
        if self._bars.pop(bar.id, None) is None:
            return
        by_key = self._by_key
        for key in bar.progress.remaining:
            bars = by_key.get(key)
            if bars is not None and bar in bars:
                bars.remove(bar)
                if not bars:
                    del by_key[key]
        bar.wake()
        if not self._bars:
            by_key.clear()  # (of bars that finished, whose keys left already)
            observe(self.scheduler.state.observers, self._keys_moved, False)

    def _keys_moved(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        """An observer of the transitions, while there are bars."""
        bars = self._by_key.get(key)
        if bars is None:
            return
        ts = self.scheduler.state.tasks.get(key) if finish != "forgotten" else None
        left = []
        for bar in bars:
            if bar.progress.moved(key, finish, ts):
                bar.wake()
            else:
                left.append(bar)
        if len(left) == len(bars):
            return
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]

    # ------------------------------------------------------------------ instructions

    def _client_removed(self, removed: ins.ClientRemoved) -> None:
        for bar in [bar for bar in self._bars.values() if bar.client == removed.client]:
            self._drop(bar)

    def _restarted(self, restarted: ins.ClusterRestarted) -> None:
        if self._counter is not None:
            self._counter.restarted()
        tasks = self.scheduler.state.tasks
        for key in [key for key in self._by_key if key not in tasks]:
            self._keys_moved(key, "released", "forgotten", restarted.stimulus_id)


def _of_key(function: Callable[[Any], Any]) -> Callable[[TaskRecord], Any]:
    """A group of tasks from a function of their keys (``progress(group_by=...)``)."""
    return lambda ts: function(ts.key)
