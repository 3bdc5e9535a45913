"""Work stealing: tasks waiting on a busy worker move to a worker with a free thread.

A worker given more tasks than it has threads is a *victim*; a running worker with a
thread free is a *thief*.  The scheduler asks the victim for its least urgent tasks
back (``StealRequest``).  The victim gives a task back only if it has not started it,
and says so (``StealResponse``); the scheduler then sends it to the thief (or, if the
thief can no longer take it, wherever it fits best now).  So a task never runs twice,
and a refused request costs one message.

A task is asked for only when moving pays: the time it would still wait on the victim
is longer than moving its inputs to the thief plus the round trip of asking, and only
towards workers its restrictions allow (``allow_other_workers`` lets a task leave the
workers it was placed on; resources are always required).

Balancing runs after the events that can unbalance the cluster (a worker given more
tasks than threads, a thread freed, a worker joined or unpaused, a steal answered),
not on a timer.  It is pure and reproducible: workers go in address order and tasks in
priority order.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import TYPE_CHECKING

from distributary.scheduler import instructions as ins
from distributary.scheduler.placement import BANDWIDTH
from distributary.scheduler.records import TaskRecord, WorkerRecord

if TYPE_CHECKING:
    from distributary.protocol.worker_messages import StealResponse
    from distributary.scheduler.state import Recs, SchedulerState

LATENCY = 0.005  # seconds: a steal request, its answer and the task sent again


class WorkStealing:
    """The scheduler's steals: which tasks were asked back, and for which thief."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.pending = False  # the cluster may be out of balance: balance after this event
        # task asked back -> (its thief, its victim, the run asked back)
        self.in_flight: dict[TaskRecord, tuple[WorkerRecord, WorkerRecord, int]] = {}
        self.refused: dict[TaskRecord, int] = {}  # task -> the run its worker kept (started)
        # Workers with a thread free, and with tasks waiting for a thread: a balance is
        # worth its time only while there are both.
        self._free: set[WorkerRecord] = set()
        self._queued: set[WorkerRecord] = set()

    def note(self, ws: WorkerRecord, present: bool) -> None:
        """The worker's load changed (``present``: it is still in the cluster)."""
        if not self.enabled:
            return
        free = present and ws.status == "running" and ws.occupied < ws.nthreads
        queued = present and ws.occupied > ws.nthreads
        (self._free.add if free else self._free.discard)(ws)
        (self._queued.add if queued else self._queued.discard)(ws)
        if self._free and self._queued:
            self.pending = True

    def balance(self, state: SchedulerState, stimulus_id: str) -> None:
        """Ask busy workers for tasks that threads free elsewhere can start sooner."""
        self.pending = False
        if not self.enabled:
            return
        incoming: Counter = Counter()
        outgoing: Counter = Counter()
        if self.in_flight or self.refused:
            self._forget_stale(state)
            incoming.update(thief for thief, _, _ in self.in_flight.values())
            outgoing.update(victim for _, victim, _ in self.in_flight.values())
        room = {}
        excess = {}
        for ws in state.workers.values():  # (one pass: this runs after most events)
            occupied = ws.occupied
            if ws.status == "running" and occupied + incoming[ws] < ws.nthreads:
                room[ws] = _target(ws) - occupied - incoming[ws]
            elif occupied - outgoing[ws] > ws.nthreads:
                excess[ws] = occupied - outgoing[ws] - ws.nthreads
        if not room or not excess:
            return
        wanted = sum(room.values())
        offers: dict[WorkerRecord, list[TaskRecord]] = {}  # (made when first asked for)
        for thief in sorted(room, key=_address):
            while room[thief] > 0 and excess:
                victim = max(sorted(excess, key=_address), key=excess.__getitem__)
                if victim not in offers:
                    offers[victim] = _least_urgent(self, victim, wanted)
                ts = _take_offer(state, offers[victim], thief, excess[victim] / victim.nthreads)
                if ts is None:
                    del excess[victim]
                    continue
                self.in_flight[ts] = (thief, victim, ts.run_id)
                state.emit(ins.StealRequest(stimulus_id, ts.key, ts.run_id, worker=victim.address))
                room[thief] -= 1
                excess[victim] -= 1
                if not excess[victim]:
                    del excess[victim]

    def answered(self, state: SchedulerState, event: StealResponse) -> Recs:
        """A victim's answer: move the task it gave back to its thief."""
        self.pending = True  # (a refused steal leaves the thief idle: ask elsewhere)
        ts = state.tasks.get(event.key)
        if ts is None or ts.state != "processing" or ts.run_id != event.run_id:
            return {}
        thief = None
        asked = self.in_flight.get(ts)
        if asked is not None and asked[2] == event.run_id:  # (not an older run's request)
            thief = self.in_flight.pop(ts)[0]
        victim = state.workers.get(event.worker)
        if not event.accepted or ts.processing_on is not victim:
            self.refused[ts] = event.run_id  # (started there: not to be asked for again)
            return {}
        # The victim dropped the task: it runs on the thief, or wherever it fits now.
        recs = state.unassign(ts)
        if (
            thief is not None
            and state.workers.get(thief.address) is thief
            and thief.status == "running"
        ):
            state.assign(ts, thief, event.stimulus_id)
            return recs
        ts.state = "waiting"
        recs[ts.key] = "processing"
        return recs

    def _forget_stale(self, state: SchedulerState) -> None:
        """Drop requests that will not be answered (their task moved on, or their
        victim left) and refusals of runs that are over."""
        for ts, (_, victim, run_id) in list(self.in_flight.items()):
            if (
                ts.state != "processing"
                or ts.run_id != run_id
                or state.workers.get(victim.address) is not victim
            ):
                del self.in_flight[ts]
        for ts, run_id in list(self.refused.items()):
            if ts.state != "processing" or ts.run_id != run_id:
                del self.refused[ts]


def _target(ws: WorkerRecord) -> int:
    """Tasks a thief takes: its threads and one more, so that the next one is there
    when a thread frees (the round trip of a steal is not lost)."""
    return ws.nthreads + 1


def _address(ws: WorkerRecord) -> str:
    return ws.address


def _least_urgent(stealing: WorkStealing, victim: WorkerRecord, n: int) -> list[TaskRecord]:
    """Up to ``n`` of the victim's tasks that may move, least urgent first."""
    movable = (
        ts
        for ts in victim.processing
        if ts not in victim.long_running
        and ts not in stealing.in_flight
        and stealing.refused.get(ts) != ts.run_id
    )
    return heapq.nlargest(n, movable, key=lambda ts: (ts.priority, ts.run_id))


def _take_offer(
    state: SchedulerState, offer: list[TaskRecord], thief: WorkerRecord, queued_per_thread: float
) -> TaskRecord | None:
    """The first task of ``offer`` that ``thief`` may run and that starts sooner there
    (it is removed from ``offer``); None if the victim has nothing worth moving."""
    for i, ts in enumerate(offer):
        if not _allowed(state, ts, thief):
            continue
        duration = state.durations.get(ts.prefix, state.unknown_duration)
        missing = sum(max(d.nbytes, 0) for d in ts.dependencies if thief not in d.who_has)
        if queued_per_thread * duration <= LATENCY + missing / BANDWIDTH:
            return None  # (the least urgent waits longest: the rest are not worth it)
        del offer[i]
        return ts
    return None


def _allowed(state: SchedulerState, ts: TaskRecord, ws: WorkerRecord) -> bool:
    """Whether the task's restrictions let it run on ``ws``."""
    if ts.resource_restrictions is not None and any(
        ws.resources.get(r, 0) < n for r, n in ts.resource_restrictions.items()
    ):
        return False
    if ts.worker_restrictions is None or ts.loose_restrictions:
        return True
    return any(
        spec == ws.address or spec == ws.name or spec == ws.host for spec in ts.worker_restrictions
    )
