"""Queues: named first-in first-out queues of values, shared by every client and task.

Theory of operation
-------------------
A queue holds pickled values (:class:`~distributary.scheduler.shared.StoredValue`,
the futures inside them kept alive while they are in the queue).  Gets and puts that
cannot go ahead at once wait in line, first come first served
(:class:`~distributary.scheduler.waiters.WaitQueue`): a get of ``count`` values is
served once the queue holds that many and no earlier get is waiting (all or nothing,
so a get that times out takes nothing); a put into a full queue is let in when a get
makes room.  :meth:`QueueExtension._serve` moves values along after every change.

Handing values over: a get takes its values out of the queue when it is served, and
hands them to its client when its request resumes, just before the reply goes out
(their holders hold for that client until it confirms, see :mod:`distributary.
scheduler.shared`); if by then its client left or its connection closed (an
asynchronous caller gave up), the values go back to the front of the queue instead
of being lost.  A waiting get or put whose connection closed is dropped when the
queue next moves.

A queue is made by its first request, bounded by that request's ``maxsize``
(``Queue(name, maxsize=n)`` makes it as it is created), and is forgotten once it is
empty, unbounded and nobody waits on it; a bounded queue is kept, as its bound is
part of it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import shared as sh
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.shared import SharedValues, StoredValue
from distributary.scheduler.waiters import TIMED_OUT, WaitQueue, caller_gone, check_connected

GONE = object()  # what a waiting request whose caller went away is served


@dataclass(slots=True)
class WaitingGet:
    """A get waiting in line: how many values it takes, and those handed to it."""

    count: int
    comm: Any
    taken: list = field(default_factory=list)


@dataclass(slots=True)
class WaitingPut:
    """A put waiting for room, and whether its value went into the queue."""

    value: StoredValue
    comm: Any
    placed: bool = False


@dataclass(slots=True)
class SharedQueue:
    """One queue: its values, and the gets and puts waiting on it."""

    maxsize: int
    items: deque = field(default_factory=deque)
    getters: WaitQueue = field(default_factory=WaitQueue)
    putters: WaitQueue = field(default_factory=WaitQueue)

    def full(self) -> bool:
        """Whether a put must wait for room."""
        return 0 < self.maxsize <= len(self.items)

    def unused(self) -> bool:
        """Whether nothing would be lost by forgetting this queue."""
        return self.maxsize <= 0 and not (self.items or self.getters or self.putters)


class QueueExtension(SchedulerExtension):
    """The scheduler's queues, by name."""

    def __init__(self, scheduler: SchedulerContext, values: SharedValues):
        super().__init__(scheduler)
        self.queues: dict[Any, SharedQueue] = {}
        self.values = values
        self.handlers.update(
            {
                sh.QueueCreate: self.create,
                sh.QueuePut: self.put,
                sh.QueueGet: self.get,
                sh.QueueSize: self.size,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self.client_removed

    # ------------------------------------------------------------------ handlers

    def create(self, comm: Any, msg: sh.QueueCreate) -> None:
        """Make the queue, bounded by ``maxsize``, unless it exists."""
        self._queue(msg.name, msg.maxsize)

    async def put(self, comm: Any, msg: sh.QueuePut) -> None:
        """Put the value at the end of the queue; TimeoutError if the queue stayed full
        for ``timeout`` seconds (and then it is not put)."""
        check_connected(self.scheduler, msg.client)
        loop = asyncio.get_running_loop()
        start = loop.time()
        value = await self.values.receive(
            "queue", msg.data, msg.keys, msg.client, msg.uid, msg.timeout
        )
        queue = self._queue(msg.name, msg.maxsize)
        if not (queue.putters or queue.full()):
            queue.items.append(value)
            self._serve(msg.name, queue)
            return
        waiting = WaitingPut(value, comm)
        left = None if msg.timeout is None else max(0.0, msg.timeout - (loop.time() - start))
        try:
            outcome = await queue.putters.wait(msg.client or "", left, waiting)
        finally:
            if not waiting.placed:
                self.values.release(value)
            self._serve(msg.name, queue)
        if outcome is TIMED_OUT:
            raise TimeoutError(f"Queue {msg.name!r} stayed full for {msg.timeout} s")

    async def get(self, comm: Any, msg: sh.QueueGet) -> tuple[sh.SharedValue, ...] | None:
        """Take ``count`` values from the front of the queue (``None``: all it holds
        now), waiting for them at most ``timeout`` seconds (TimeoutError, nothing
        taken).  Their futures' keys are held for the asking client until it confirms."""
        count = msg.count
        if count is not None and count < 0:
            raise ValueError(f"Cannot get a negative number of items ({count}) from a queue")
        check_connected(self.scheduler, msg.client)
        queue = self._queue(msg.name, msg.maxsize)
        if count is not None and 0 < queue.maxsize < count:
            raise ValueError(
                f"Cannot get {count} items at once from queue {msg.name!r}, which holds "
                f"at most {queue.maxsize}"
            )
        if count is None or (not queue.getters and len(queue.items) >= count):
            taken = _take(queue, len(queue.items) if count is None else count)
        else:
            waiting = WaitingGet(count, comm)
            try:
                outcome = await queue.getters.wait(msg.client or "", msg.timeout, waiting)
            except BaseException:
                self._put_back(msg.name, queue, waiting.taken)
                raise
            if outcome is TIMED_OUT:
                self._serve(msg.name, queue)  # (the gets behind this one may go now)
                raise TimeoutError(
                    f"Queue {msg.name!r} had fewer than {count} item(s) for {msg.timeout} s"
                )
            if outcome is GONE:
                return None
            taken = waiting.taken
        if caller_gone(self.scheduler, comm, msg.client):
            self._put_back(msg.name, queue, taken)  # nobody to hand them to
            return None
        self._serve(msg.name, queue)
        return tuple(self.values.hand_over(value, msg.client, keep=False) for value in taken)

    def size(self, comm: Any, msg: sh.QueueSize) -> int:
        """How many values the queue holds."""
        queue = self.queues.get(msg.name)
        return 0 if queue is None else len(queue.items)

    def client_removed(self, removed: ins.ClientRemoved) -> None:
        """A client left: its waiting gets and puts fail (and take or put nothing)."""
        for queue in self.queues.values():
            queue.getters.drop_client(removed.client)
            queue.putters.drop_client(removed.client)

    # ------------------------------------------------------------------ moving values along

    def _queue(self, name: Any, maxsize: int) -> SharedQueue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = SharedQueue(maxsize)
        return queue

    def _serve(self, name: Any, queue: SharedQueue) -> None:
        """Let in the waiting puts there is room for and serve the waiting gets there
        are values for, in their turn; forget the queue if it is unused."""
        moved = True
        while moved:
            moved = False
            while (put := queue.putters.first()) is not None and not queue.full():
                waiting: WaitingPut = put.detail
                if not waiting.comm.closed():
                    queue.items.append(waiting.value)
                    waiting.placed = True
                queue.putters.serve(True if waiting.placed else GONE)
                moved = True
            while (get := queue.getters.first()) is not None:
                wanted: WaitingGet = get.detail
                if wanted.comm.closed():
                    queue.getters.serve(GONE)
                    continue
                if len(queue.items) < wanted.count:
                    break
                wanted.taken = _take(queue, wanted.count)
                queue.getters.serve(wanted.taken)
                moved = True
        if queue.unused() and self.queues.get(name) is queue:
            del self.queues[name]

    def _put_back(self, name: Any, queue: SharedQueue, values: list[StoredValue]) -> None:
        """Values taken by a get that cannot be answered go back to the front."""
        if values:
            queue = self.queues.setdefault(name, queue)  # (made again if forgotten)
            queue.items.extendleft(reversed(values))
        self._serve(name, queue)


def _take(queue: SharedQueue, count: int) -> list[StoredValue]:
    return [queue.items.popleft() for _ in range(count)]
