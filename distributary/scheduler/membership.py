"""Workers joining, leaving, pausing, beating and retiring, and time passing: the
scheduler state machine's handlers of these events.

Each handler takes the :class:`~distributary.scheduler.state.SchedulerState` and its
event, updates the worker records, and returns recommendations for the tasks, like
the state's own handlers; :meth:`SchedulerState.handle` calls them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from distributary.exceptions import KilledWorker
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.placement import urgent_last
from distributary.scheduler.records import FIRE_AND_FORGET, MemoryState, Retirement, WorkerRecord
from distributary.scheduler.retirement import plan_replicas, retirement_progress

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState

Recs = dict  # key -> recommended state


def add_worker(state: SchedulerState, event: ev.AddWorker) -> Recs:
    if event.address in state.workers:
        return {}
    ws = WorkerRecord(
        event.address,
        event.nthreads,
        event.name,
        event.host,
        event.memory_limit,
        event.resources,
        event.nanny,
        state.worker_saturation,
    )
    ws.last_seen = event.time
    ws.pid = event.pid
    ws.local_directory = event.local_directory
    ws.services = dict(event.services)
    state.workers[ws.address] = ws
    if ws.name is not None:
        state.workers_by_name[ws.name] = ws.address
    state.workers_by_host.setdefault(ws.host, set()).add(ws.address)
    state.update_idle(ws)
    state.emit(ins.WorkerAdded(event.stimulus_id, ws.address, ws.nanny))
    recs = state.recommend_unrunnable()
    recs.update(state.fill_slots(ws))
    return recs


def remove_worker(state: SchedulerState, event: ev.RemoveWorker) -> Recs:
    ws = state.workers.pop(event.address, None)
    if ws is None:
        return {}
    state.idle.pop(ws.address, None)
    state.emit(ins.WorkerRemoved(event.stimulus_id, ws.address))
    if state.retiring.pop(ws.address, None) is not None:  # (gone: nothing left to move)
        state.emit(ins.WorkerRetired(event.stimulus_id, ws.address))
    if state.workers_by_name.get(ws.name) == ws.address:
        del state.workers_by_name[ws.name]
    host_set = state.workers_by_host.get(ws.host)
    if host_set is not None:
        host_set.discard(ws.address)
        if not host_set:
            del state.workers_by_host[ws.host]
    recs: Recs = {}
    for ts in urgent_last(ws.processing):
        if not event.safe:
            ts.suspicious += 1
            if ts.suspicious > state.allowed_failures:
                exc = KilledWorker(ts.key, ws.address, state.allowed_failures, event.reason)
                state.set_exception(ts, exc, None, repr(exc))
                recs[ts.key] = "erred"
                continue
        recs[ts.key] = "released"
    for ts in list(ws.has_what):
        state.remove_replica(ts, ws)
        if not ts.who_has:
            recs[ts.key] = "released"
    return recs


def worker_status_change(state: SchedulerState, event: ev.WorkerStatusChange) -> Recs:
    ws = state.workers.get(event.worker)
    # A worker pauses and resumes itself; leaving is decided here, and sticks.
    if ws is None or ws.status not in ("running", "paused"):
        return {}
    if event.status not in ("running", "paused"):
        return {}
    ws.status = event.status
    if ws.status == "running":
        return _resume(state, ws)
    state.update_idle(ws)
    return {}


def _resume(state: SchedulerState, ws: WorkerRecord) -> Recs:
    state.update_idle(ws)
    recs = state.recommend_unrunnable()
    recs.update(state.fill_slots(ws))
    return recs


def worker_heartbeat(state: SchedulerState, event: ev.WorkerHeartbeat) -> Recs:
    ws = state.workers.get(event.worker)
    if ws is not None:
        ws.last_seen = event.time
        memory = event.memory
        ws.memory = MemoryState(
            memory.get("process", 0), memory.get("managed", 0), memory.get("spilled", 0)
        )
        ws.usage = event.usage
    return {}


def retire_workers(state: SchedulerState, event: ev.RetireWorkers) -> Recs:
    retiring = [state.workers[a] for a in event.addresses if a in state.workers]
    for ws in retiring:
        if ws.status in ("running", "paused"):
            ws.status = "closing_gracefully"
            state.update_idle(ws)
        retirement = state.retiring.get(ws.address)
        if retirement is None:
            retirement = state.retiring[ws.address] = Retirement(event.time, event.deadline)
        elif event.replan:
            retirement.asked.clear()
            retirement.planned_at = event.time
    _plan_replicas(state, retiring, event.stimulus_id)
    return {}


def _plan_replicas(state: SchedulerState, retiring: list[WorkerRecord], stimulus_id: str) -> None:
    for recipient, who_has, nbytes in plan_replicas(state, retiring):
        state.emit(ins.AcquireReplicas(stimulus_id, who_has, nbytes, worker=recipient))


def cancel_retirement(state: SchedulerState, event: ev.CancelRetirement) -> Recs:
    return _cancel_retirement(state, event.addresses)


def _cancel_retirement(state: SchedulerState, addresses: Iterable[str]) -> Recs:
    recs: Recs = {}
    for address in addresses:
        ws = state.workers.get(address)
        state.retiring.pop(address, None)
        if ws is not None and ws.status == "closing_gracefully":
            ws.status = "running"
            recs.update(_resume(state, ws))
    return recs


def tick(state: SchedulerState, event: ev.Tick) -> Recs:
    now = event.now
    if state.worker_ttl is not None:
        for ws in state.workers.values():
            if now - ws.last_seen > state.worker_ttl:
                state.emit(ins.WorkerSilent(event.stimulus_id, ws.address, now - ws.last_seen))
    if state.idle_timeout is not None:
        _check_idle(state, now, event.stimulus_id)
    if not state.retiring:
        return {}
    done, failed, reason, replan = retirement_progress(state, event.now)
    for address in done:
        del state.retiring[address]
        state.emit(ins.WorkerRetired(event.stimulus_id, address))
    for address in replan:
        retirement = state.retiring[address]
        retirement.asked.clear()
        retirement.planned_at = event.now
    _plan_replicas(state, [state.workers[a] for a in replan], event.stimulus_id)
    if not failed:
        return {}
    state.emit(ins.RetirementFailed(event.stimulus_id, tuple(failed), reason))
    return _cancel_retirement(state, failed)


def _check_idle(state: SchedulerState, now: float, stimulus_id: str) -> None:
    busy = (
        any(client != FIRE_AND_FORGET for client in state.clients)
        or state.unrunnable
        or any(ws.processing for ws in state.workers.values())
    )
    if busy or state.idle_since is None:
        state.idle_since = now
    elif now - state.idle_since > state.idle_timeout:
        state.emit(ins.SchedulerIdle(stimulus_id, now - state.idle_since))
