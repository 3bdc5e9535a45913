"""The invariants of the scheduler's state machine, checked after every step in tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState


def validate_state(state: SchedulerState) -> None:
    """Check the invariants that tie the records together; raise AssertionError."""
    for key, ts in state.tasks.items():
        assert ts.key == key
        assert (ts.state == "processing") == (ts.processing_on is not None), ts
        if ts.state == "processing":
            assert ts in ts.processing_on.processing, ts
            assert ts.processing_on.address in state.workers, ts
            assert not ts.waiting_on, ts
        if ts.state == "memory":
            assert ts.who_has, ts
        else:
            assert not ts.who_has, ts
        if ts.state == "waiting":
            assert ts.waiting_on == {d for d in ts.dependencies if d.state != "memory"}, ts
        else:
            assert not ts.waiting_on, ts
        assert (ts.state == "no-worker") == (ts in state.unrunnable), ts
        for dep in ts.dependencies:
            assert ts in dep.dependents, (ts, dep)
            known = state.tasks.get(dep.key) is dep
            assert known or ts.state in ("released", "erred"), (ts, dep)
        for client in ts.who_wants:
            assert ts in state.clients[client].wants_what, ts
        if ts.state in ("waiting", "queued", "no-worker", "processing"):
            for dep in ts.dependencies:
                assert ts in dep.waiters, (ts, dep)
        if ts.state == "queued":
            assert not state.idle, (ts, state.idle)  # no queued task while a worker has room
    for ws in state.workers.values():
        for ts in ws.processing:
            assert ts.processing_on is ws, (ws, ts)
        for ts in ws.has_what:
            assert ws in ts.who_has, (ws, ts)
        assert (ws.address in state.idle) == ws.has_room(), ws
    for cs in state.clients.values():
        for ts in cs.wants_what:
            assert cs.client_id in ts.who_wants, (cs, ts)
    for address in state.retiring:
        assert state.workers[address].status == "closing_gracefully", address
