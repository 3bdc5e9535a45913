"""Where copies of data go: the pure side of ``replicate`` and ``rebalance``.

The planning functions read the records and say which worker should fetch which keys
(``{address: [keys]}``), which should drop them, or which keys should move where.  The
two events carry such a plan into :class:`~distributary.scheduler.state.SchedulerState`,
whose handlers here ask the workers to fetch from the holders (``acquire-replicas``:
they fetch from each other and report ``add-keys``, and only then is a copy in
``who_has``) or to drop their copies (``free-keys``: the copy leaves ``who_has`` at
once).  The last copy of a key, and a copy that a task running on its worker needs,
are never dropped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributary.scheduler import instructions as ins
from distributary.scheduler.events import SchedulerEvent
from distributary.scheduler.records import TaskRecord, WorkerRecord

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState

Recs = dict  # key -> recommended state
Plan = dict  # worker address -> [keys]


@dataclass(frozen=True, slots=True)
class CopyReplicas(SchedulerEvent):
    """Have each worker of ``copies`` (``{address: keys}``) fetch those keys."""

    copies: dict


@dataclass(frozen=True, slots=True)
class DropReplicas(SchedulerEvent):
    """Have each worker of ``drops`` (``{address: keys}``) drop its copies of those keys."""

    drops: dict


def copy_replicas(state: SchedulerState, event: CopyReplicas) -> Recs:
    """Ask running workers to fetch the keys in memory that they do not hold yet."""
    for address, keys in event.copies.items():
        ws = state.workers.get(address)
        if ws is None or ws.status != "running":
            continue
        who_has: dict = {}
        nbytes: dict = {}
        for key in keys:
            ts = state.tasks.get(key)
            if ts is None or ts.state != "memory" or not ts.who_has or ws in ts.who_has:
                continue
            who_has[key] = tuple(holder.address for holder in ts.who_has)
            nbytes[key] = ts.nbytes
        if who_has:
            state.emit(ins.AcquireReplicas(event.stimulus_id, who_has, nbytes, worker=address))
    return {}


def drop_replicas(state: SchedulerState, event: DropReplicas) -> Recs:
    """Forget the copies of keys on workers and tell them; keep the last copy of a
    key, and copies that a task running there needs."""
    for address, keys in event.drops.items():
        ws = state.workers.get(address)
        if ws is None:
            continue
        dropped = []
        for key in keys:
            ts = state.tasks.get(key)
            if ts is None or ts.state != "memory" or ws not in ts.who_has:
                continue
            if len(ts.who_has) < 2 or needed_on(ts, ws):
                continue
            state.remove_replica(ts, ws)
            dropped.append(key)
        if dropped:
            state.emit(ins.FreeKeys(event.stimulus_id, tuple(dropped), worker=address))
    return {}


def needed_on(ts: TaskRecord, ws: WorkerRecord) -> bool:
    """Whether a task assigned to ``ws`` waits for the data of ``ts``."""
    return any(waiter.processing_on is ws for waiter in ts.waiters)


def plan_deletions(tasks: Iterable[TaskRecord], workers: list[WorkerRecord], n: int) -> Plan:
    """The copies beyond ``n`` of each task's data on ``workers`` to drop: from the
    workers holding the most bytes first (counting the drops planned before)."""
    load = {ws: ws.nbytes for ws in workers}
    drops: Plan = {}
    for ts in tasks:
        holders = [ws for ws in ts.who_has if ws in load and not needed_on(ts, ws)]
        excess = len([ws for ws in ts.who_has if ws in load]) - n
        if excess <= 0:
            continue
        holders.sort(key=lambda ws: (-load[ws], ws.address))
        for ws in holders[:excess]:
            load[ws] -= max(ts.nbytes, 0)
            drops.setdefault(ws.address, []).append(ts.key)
    return drops


def plan_copies(
    tasks: Iterable[TaskRecord], workers: list[WorkerRecord], n: int, branching_factor: int
) -> Plan:
    """One round of copies towards ``n`` copies of each task's data on ``workers``.

    Each holder of a key gives at most ``branching_factor`` new copies per round (a
    tree copy: the holders double or more each round); the copies go to the workers
    holding the fewest bytes, counting the copies planned before.
    """
    by_address = {ws.address: ws for ws in workers}
    heap = [(ws.nbytes, ws.address) for ws in workers]
    heapq.heapify(heap)
    copies: Plan = {}
    for ts in tasks:
        have = sum(1 for ws in ts.who_has if ws.address in by_address)
        count = min(n - have, branching_factor * len(ts.who_has))
        if count <= 0:
            continue
        popped = []
        chosen = set()
        while heap and len(chosen) < count:
            entry = heapq.heappop(heap)
            popped.append(entry)
            if by_address[entry[1]] not in ts.who_has:
                chosen.add(entry[1])
        size = max(ts.nbytes, 0)
        for load, address in popped:
            heapq.heappush(heap, (load + size if address in chosen else load, address))
        for address in sorted(chosen):
            copies.setdefault(address, []).append(ts.key)
    return copies


def plan_moves(
    tasks: Iterable[TaskRecord] | None, workers: list[WorkerRecord]
) -> list[tuple[object, str, str]]:
    """Moves ``(key, sender, recipient)`` that even out the bytes held by ``workers``.

    Workers holding more than the mean give their largest keys (of ``tasks``; any when
    None) to the worker holding the least that lacks them, as long as each move narrows
    the gap between the two (the recipient ends with less than the sender had) and the
    sender is still above the mean.
    """
    load = {ws: ws.nbytes for ws in workers}
    if len(load) < 2:
        return []
    mean = sum(load.values()) / len(load)
    wanted = None if tasks is None else set(tasks)
    moves = []
    for sender in sorted(load, key=lambda ws: (-load[ws], ws.address)):
        if load[sender] <= mean:
            break
        movable = [
            ts
            for ts in sender.has_what
            if (wanted is None or ts in wanted)
            and ts.state == "memory"
            and ts.nbytes > 0
            and not needed_on(ts, sender)
        ]
        movable.sort(key=lambda ts: (-ts.nbytes, str(ts.key)))
        for ts in movable:
            if load[sender] <= mean:
                break
            lacking = [ws for ws in load if ws not in ts.who_has]
            if not lacking:
                continue
            recipient = min(lacking, key=lambda ws: (load[ws], ws.address))
            if load[recipient] + ts.nbytes >= load[sender]:
                continue
            moves.append((ts.key, sender.address, recipient.address))
            load[sender] -= ts.nbytes
            load[recipient] += ts.nbytes
    return moves
