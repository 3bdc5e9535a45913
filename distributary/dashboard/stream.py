"""The task stream as the status page draws it: rectangles, each sent once.

The workers keep the records of the tasks they ran (:mod:`distributary.scheduler.
task_stream` gathers them when asked).  While a page is open the dashboard asks, once
per update, for what finished since it last asked (with a second of overlap, for the
clocks of other hosts and for records made while it asked), and :class:`StreamCursor`
keeps out what was sent already.  An update carries at most half of what a page shows
(``distributed.scheduler.dashboard.status.task-stream-length``); when more finished,
the next update asks each worker for only its newest share of that many: a busy
cluster costs each update a bounded amount, whatever its rate of tasks.

A rectangle is one phase of a task's run: ``{"k": key (as text), "p": task prefix,
"w": worker, "t": thread (numbered from 0 on each worker), "s": start, "e": stop, "a":
"compute" | "transfer" | "disk-read" | "disk-write", "x": "OK" | "error"}``.  Pure: no
I/O, no clock (the time comes in).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from dask.utils import key_split

# Seconds asked for again, before the previous request.
OVERLAP = 1.0


class StreamCursor:
    """Which records were sent, and the last ``limit`` rectangles (for a new page)."""

    def __init__(self, limit: int):
        self.limit = max(int(limit), 1)
        self.per_update = max(self.limit // 2, 1)  # (a page fills up in two updates)
        self.asked: float | None = None  # when the previous request was made
        self.busy = True  # the newest ``limit`` (as on the first request)
        self._sent: dict[tuple, float] = {}  # record -> its end
        self._threads: dict[str, dict[Any, int]] = {}  # worker -> thread ident -> number
        self.recent: deque[dict] = deque(maxlen=self.limit)

    def request(self, workers: int) -> dict[str, Any]:
        """What to ask each of ``workers`` workers for next: the records since the
        previous request (``start``), or the newest ones, a share of ``limit``
        (``count``)."""
        if self.busy or self.asked is None:
            return {"count": -(-self.per_update // max(workers, 1))}
        return {"start": self.asked - OVERLAP}

    def take(self, records: Iterable[dict], now: float) -> list[dict]:
        """The rectangles of the records not sent yet (the newest half of ``limit``),
        out of those asked for at ``now``."""
        horizon = None if self.asked is None else self.asked - 2 * OVERLAP
        new = []
        for record in records:
            phases = record["startstops"]
            if not phases:
                continue
            start = min(p["start"] for p in phases)
            end = max(p["stop"] for p in phases)
            ident = (record["worker"], record["thread"], start)
            if ident in self._sent or (horizon is not None and end < horizon):
                continue
            self._sent[ident] = end
            new.append(record)
        self.busy = len(new) >= self.per_update
        self.asked = now
        oldest = now - 4 * OVERLAP
        self._sent = {ident: end for ident, end in self._sent.items() if end >= oldest}
        rectangles = [r for record in new[-self.per_update :] for r in self._rectangles(record)]
        rectangles = rectangles[-self.per_update :]
        self.recent.extend(rectangles)
        return rectangles

    def _rectangles(self, record: dict) -> list[dict]:
        key = key_text(record["key"])
        prefix = key_split(_as_key(record["key"]))
        worker = record["worker"]
        threads = self._threads.setdefault(worker, {})
        thread = threads.setdefault(record["thread"], len(threads))
        status = record.get("status", "OK")
        return [
            {
                "k": key,
                "p": prefix,
                "w": worker,
                "t": thread,
                "s": phase["start"],
                "e": phase["stop"],
                "a": phase["action"],
                "x": status,
            }
            for phase in record["startstops"]
        ]


def key_text(key: Any) -> str:
    """A key as the pages show it (and :func:`~distributary.dashboard.views.find_task`
    finds it again): a key that came back as a list is the tuple it was."""
    return str(_as_key(key))


def _as_key(key: Any) -> Any:
    if isinstance(key, list | tuple):
        return tuple(_as_key(part) for part in key)
    return key
