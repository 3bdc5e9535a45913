"""Work stealing in the scheduler's state machine: events in, instructions out.

The cluster-level behaviour (an unevenly placed map finishes on every worker) is in
tests/test_placement.py; the randomized sequences of test_scheduler_state.py answer
steal requests at random too.
"""

from __future__ import annotations

import pytest
from test_scheduler_state import (
    A,
    B,
    C,
    add_worker,
    computes,
    finished,
    graph,
    of,
    sid,
    spec,
    state,
)

from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins

pytestmark = pytest.mark.timeout(30)


def steals(out: list) -> list[ins.StealRequest]:
    return of(out, ins.StealRequest)


def answer(request: ins.StealRequest, accepted: bool = True) -> ev.StealResponse:
    return ev.StealResponse(sid(), request.key, request.run_id, accepted, worker=request.worker)


def unbalanced(n: int = 10, duration: float = 1.0, **restrictions):
    """Workers A and B (one thread each); ``n`` tasks placed on A."""
    s = state()
    s.durations["t"] = duration
    s.handle(add_worker(A), add_worker(B))
    restrictions.setdefault("workers", (A,))
    tasks = [spec(("t", i), priority=(0, i), **restrictions) for i in range(n)]
    out = s.handle(graph("c", *tasks))
    return s, out


def test_an_idle_worker_asks_for_the_least_urgent_tasks_of_a_busy_one():
    s, out = unbalanced(allow_other_workers=True)
    assert {ct.worker for ct in computes(out)} == {A}
    requests = steals(out)
    # B has one thread: it asks for one task to run and one to have next
    assert [(r.key, r.worker) for r in requests] == [(("t", 9), A), (("t", 8), A)]
    moved = s.handle(answer(requests[0]), answer(requests[1], accepted=False))
    assert [(ct.key, ct.worker) for ct in computes(moved)] == [(("t", 9), B)]
    assert s.tasks[("t", 9)].processing_on is s.workers[B]
    assert s.tasks[("t", 8)].processing_on is s.workers[A]
    assert steals(moved) == []  # (B's thread is taken)
    # once B is free again it asks for more, but not for the task A refused (started)
    again = steals(s.handle(finished(computes(moved)[0])))
    assert [r.key for r in again] == [("t", 7), ("t", 6)]


def test_a_stolen_task_finishes_on_its_thief_and_a_late_report_from_the_victim_is_stale():
    s, out = unbalanced(allow_other_workers=True)
    request = steals(out)[0]
    run_on_a = request.run_id
    ct = computes(s.handle(answer(request)))[0]
    s.handle(finished(ct))
    assert s.tasks[request.key].state == "memory"
    assert s.tasks[request.key].who_has == (s.workers[B],)
    stale = ev.TaskFinished(sid(), key=request.key, run_id=run_on_a, nbytes=8, worker=A)
    s.handle(stale)
    assert s.tasks[request.key].who_has == (s.workers[B],)


def test_strict_restrictions_are_never_stolen_from():
    _, out = unbalanced()
    assert steals(out) == []


def test_tasks_needing_a_resource_move_only_to_workers_that_have_it():
    s = state()
    s.durations["t"] = 1.0
    s.handle(
        add_worker(A, resources={"GPU": 1}),
        add_worker(B),
        add_worker(C, resources={"GPU": 2}),
    )
    tasks = [spec(("t", i), priority=(0, i), resources={"GPU": 1}) for i in range(6)]
    out = s.handle(graph("c", *tasks))
    assert {ct.worker for ct in computes(out)} <= {A, C}
    for request in steals(out):
        thief = s.stealing.in_flight[s.tasks[request.key]][0]
        assert thief.address == (C if request.worker == A else A)


def test_short_tasks_stay_where_they_are():
    """Moving a task costs a round trip: a 1 ms task waiting behind one other does not
    move, however idle the other worker is."""
    _, out = unbalanced(n=3, duration=0.001, allow_other_workers=True)
    assert steals(out) == []


def test_a_request_to_a_worker_that_left_is_forgotten_and_its_task_placed_again():
    s, out = unbalanced(allow_other_workers=True)
    requests = steals(out)
    s.handle(ev.RemoveWorker(sid(), address=A))
    assert all(ts.processing_on is s.workers[B] for ts in s.tasks.values())
    s.handle(add_worker(C))
    assert all(r.worker != A for r in steals(s.handle(add_worker(A))))
    assert not any(victim.address == A for _, victim, _ in s.stealing.in_flight.values())
    assert requests  # (there were requests to forget)


def test_stealing_can_be_turned_off():
    s = state(work_stealing=False)
    s.durations["t"] = 1.0
    s.handle(add_worker(A), add_worker(B))
    tasks = [spec(("t", i), workers=(A,), allow_other_workers=True) for i in range(10)]
    assert steals(s.handle(graph("c", *tasks))) == []
