"""Retiring workers gracefully: which data must move first, where it goes, and when
a retirement is done, or given up.

Pure queries over :class:`~distributary.scheduler.state.SchedulerState`: a retiring
worker may leave once no key is held by retiring workers only and it runs no task.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from distributary.scheduler.records import TaskRecord, WorkerRecord

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState


def unique_data(state: SchedulerState, address: str) -> list[TaskRecord]:
    """The tasks whose data only retiring workers hold, of all that ``address`` holds."""
    ws = state.workers.get(address)
    if ws is None:
        return []
    return [
        ts for ts in ws.has_what if all(holder.address in state.retiring for holder in ts.who_has)
    ]


def retirement_done(state: SchedulerState, address: str) -> bool:
    """Whether a retiring worker may leave: its data is elsewhere and its tasks ran."""
    ws = state.workers.get(address)
    if ws is None:
        return True
    return ws.occupied <= 0 and not unique_data(state, address)


def plan_replicas(
    state: SchedulerState, retiring: list[WorkerRecord]
) -> list[tuple[str, dict, dict]]:
    """Where to copy the data that only retiring workers hold.

    Each key goes to the running worker holding the fewest bytes so far; keys already
    asked of a worker that is still running are not asked again.  Returns
    ``(recipient, {key: holders}, {key: nbytes})`` per recipient.
    """
    recipients = [ws for ws in state.workers.values() if ws.status == "running"]
    if not recipients:
        return []
    load = [(ws.nbytes, ws.address) for ws in recipients]
    heapq.heapify(load)
    plans: dict[str, tuple[dict, dict]] = {}
    for ws in retiring:
        retirement = state.retiring.get(ws.address)
        if retirement is None:
            continue
        asked = retirement.asked
        for ts in unique_data(state, ws.address):
            recipient = asked.get(ts)
            if recipient is not None and state.workers.get(recipient) in recipients:
                continue
            nbytes, recipient = heapq.heappop(load)
            heapq.heappush(load, (nbytes + max(ts.nbytes, 0), recipient))
            asked[ts] = recipient
            who_has, sizes = plans.setdefault(recipient, ({}, {}))
            who_has[ts.key] = tuple(holder.address for holder in ts.who_has)
            sizes[ts.key] = ts.nbytes
    return [(recipient, who_has, sizes) for recipient, (who_has, sizes) in plans.items()]


REPLAN_EVERY = 2.0  # seconds after which copies asked for and not made are asked again


def retirement_progress(state: SchedulerState, now: float) -> tuple[list, list, str, list]:
    """Where the retirements stand at ``now``: the workers done, those to give up and
    why, and those whose copies should be asked for again."""
    done, failed, replan = [], [], []
    stuck = not any(ws.status == "running" for ws in state.workers.values())
    reason = "no other running worker can take their data" if stuck else "timed out"
    for address, retirement in state.retiring.items():
        if retirement_done(state, address):
            done.append(address)
        elif stuck or (retirement.deadline is not None and now > retirement.deadline):
            failed.append(address)
        elif now - retirement.planned_at > REPLAN_EVERY:
            replan.append(address)
    return done, failed, reason, replan
