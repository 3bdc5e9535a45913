"""Unit tests of the worker's sans-I/O state machine: events in, instructions out.

No event loop and no network: every test builds events, hands them to
``WorkerState.handle`` and looks at the instructions that come back.  The state is
built with ``validate=True`` (its invariants are checked inside every ``handle``), and
``step`` checks a few more of its records after every call.
"""

from __future__ import annotations

import ast
import itertools
import pathlib
import random

import pytest

from distributary import transitions
from distributary.protocol.errors import RemoteError
from distributary.worker import events as ev
from distributary.worker import instructions as ins
from distributary.worker.state import WorkerState

ME = "tcp://127.0.0.1:1"
P1, P2, P3 = "tcp://10.0.0.1:4001", "tcp://10.0.0.2:4002", "tcp://10.0.0.3:4003"

_sids = itertools.count()


# ---------------------------------------------------------------------- helpers


def sid() -> str:
    return f"stim-{next(_sids)}"


def ws(nthreads: int = 1, **kwargs) -> WorkerState:
    return WorkerState(ME, nthreads=nthreads, validate=True, **kwargs)


def check(s: WorkerState) -> None:
    """``validate()`` and the bookkeeping it does not look at."""
    s.validate()
    for peer, tasks in s.in_flight_peers.items():
        for ts in tasks:
            assert ts.coming_from == peer, (peer, ts)
            assert ts.state in ("flight", "cancelled"), (peer, ts)
    for key, ts in s.tasks.items():
        if ts.state in ("flight", "cancelled") and ts.coming_from is not None:
            assert ts in s.in_flight_peers.get(ts.coming_from, ()), ts
        if ts.state == "long-running":
            assert ts in s.long_running and ts not in s.executing, ts
        if ts.state == "cancelled":
            assert (ts.coming_from is not None) != (ts in s.executing or ts in s.long_running)
        if ts.state in ("waiting", "ready", "executing", "long-running"):
            assert ts.run_id > 0, ts
        assert ts.waiting_for_data <= ts.dependencies, ts
        for dep in ts.dependencies:
            if dep not in ts.waiting_for_data and ts.state in ("waiting", "ready"):
                assert dep.key in s.data, (ts, dep)
        for dependent in ts.dependents:
            assert s.tasks.get(dependent.key) is dependent, (ts, dependent)
            assert ts in dependent.dependencies, (ts, dependent)
        assert key in s.tasks
    for ts in s.executing | s.long_running:
        assert s.tasks.get(ts.key) is ts, ts
    assert not s.executing & s.long_running
    used: dict = {}
    for ts in s.executing:
        for r, n in (ts.resources or {}).items():
            used[r] = used.get(r, 0) + n
    for r, total in s.total_resources.items():
        assert s.available_resources[r] == total - used.get(r, 0), (r, s.available_resources)
        assert s.available_resources[r] >= 0


def step(s: WorkerState, *events: ev.WorkerEvent) -> list:
    out = s.handle(*events)
    check(s)
    return out


def compute(
    key,
    run_id: int = 1,
    who_has: dict | None = None,
    nbytes: dict | None = None,
    priority: tuple = (0,),
    resources: dict | None = None,
) -> ev.ComputeTask:
    who_has = who_has or {}
    if nbytes is None:
        nbytes = {k: 10 for k in who_has}
    return ev.ComputeTask(
        sid(), key, run_id, ("payload", key), priority, who_has, nbytes, resources
    )


def success(key, run_id: int = 1, value=None, nbytes: int = 8) -> ev.ExecuteSuccess:
    value = ("v", key) if value is None else value
    return ev.ExecuteSuccess(sid(), key, run_id, value, nbytes, "tuple", 0.5)


def failure(key, run_id: int = 1, exc: BaseException | None = None) -> ev.ExecuteFailure:
    exc = exc or ValueError(f"failed {key!r}")
    return ev.ExecuteFailure(sid(), key, run_id, exc, "tb", repr(exc), "tb-text")


def free(*keys) -> ev.FreeKeys:
    return ev.FreeKeys(sid(), tuple(keys))


def gathered(gd: ins.GatherDep, *missing, nbytes: int = 10) -> ev.GatherDepSuccess:
    data = {k: ("v", k) for k in gd.keys if k not in missing}
    return ev.GatherDepSuccess(sid(), gd.worker, gd.keys, data, {k: nbytes for k in data})


def gather_failed(gd: ins.GatherDep) -> ev.GatherDepFailure:
    return ev.GatherDepFailure(sid(), gd.worker, gd.keys)


def of(out: list, cls: type) -> list:
    return [i for i in out if type(i) is cls]


def executes(out: list) -> list:
    return [i.key for i in of(out, ins.Execute)]


def gathers(out: list) -> dict:
    return {g.worker: g for g in of(out, ins.GatherDep)}


def one(out: list, cls: type):
    found = of(out, cls)
    assert len(found) == 1, out
    return found[0]


def states(s: WorkerState, *keys) -> list[str]:
    return [s.tasks[k].state if k in s.tasks else "forgotten" for k in keys]


def assert_empty(s: WorkerState) -> None:
    assert s.tasks == {}
    assert dict(s.data) == {}
    assert not s.executing and not s.long_running and not s.in_flight_peers
    assert s.busy_threads == 0
    assert s.available_resources == s.total_resources


# ---------------------------------------------------------------------- one task


def test_single_task_lifecycle():
    s = ws()
    key = ("x-abc", 0)
    e = compute(key, run_id=3, priority=(1, 2))
    out = step(s, e)
    assert out == [ins.Execute(e.stimulus_id, key, 3)]
    assert states(s, key) == ["executing"]
    assert s.tasks[key].payload == ("payload", key)
    assert s.busy_threads == 1

    done = ev.ExecuteSuccess(sid(), key, 3, "result", 123, "str", 0.25)
    out = step(s, done)
    assert out == [ins.TaskFinished(done.stimulus_id, key, 3, 123, "str", 0.25)]
    assert out[0].to_message() == {
        "op": "task-finished",
        "stimulus_id": done.stimulus_id,
        "key": key,
        "run_id": 3,
        "nbytes": 123,
        "type": "str",
        "duration": 0.25,
    }
    assert s.data[key] == "result"
    assert states(s, key) == ["memory"]
    assert s.busy_threads == 0

    assert step(s, free(key)) == []
    assert_empty(s)


def test_story():
    s = ws()
    key = ("x", 1)
    e1, e2, e3 = compute(key), success(key), free(key)
    for e in (e1, e2, e3):
        step(s, e)
    assert s.story(key) == [
        (key, "released", "waiting", e1.stimulus_id),
        (key, "waiting", "ready", e1.stimulus_id),
        (key, "ready", "executing", e1.stimulus_id),
        (key, "executing", "memory", e2.stimulus_id),
        (key, "memory", "released", e3.stimulus_id),
        (key, "released", "forgotten", e3.stimulus_id),
    ]
    assert s.story(("other",)) == []


def test_story_of_several_keys():
    s = ws(transition_log_length=5)
    step(s, compute("a"), compute("b"))
    step(s, success("a"))
    story = s.story("a", "b")
    assert len(story) == 5  # bounded
    assert {entry[0] for entry in story} == {"a", "b"}


def test_free_unknown_key_and_stray_results_are_harmless():
    s = ws()
    assert step(s, free("nope")) == []
    assert step(s, success("nope"), failure("nope")) == []
    assert step(s, ev.RescheduleTask(sid(), "nope", 1), ev.Secede(sid(), "nope")) == []
    assert_empty(s)


def test_compute_task_for_key_in_memory_reports_it_again():
    s = ws()
    step(s, compute("a", run_id=1))
    step(s, success("a", nbytes=5))
    e = compute("a", run_id=2)
    out = step(s, e)
    assert out == [ins.TaskFinished(e.stimulus_id, "a", 2, 5, "tuple", 0.0)]


# ---------------------------------------------------------------------- threads


def test_threads_and_priorities():
    s = ws(nthreads=2)
    prios = {f"t{i}": (p, 0) for i, p in enumerate([3, 0, 4, 1, 2])}  # t1 < t3 < t4 < t0 < t2
    out = step(s, *[compute(k, priority=p) for k, p in prios.items()])
    assert executes(out) == ["t1", "t3"]
    assert s.busy_threads == 2
    assert states(s, "t4", "t0", "t2") == ["ready"] * 3

    out = step(s, success("t3"))
    assert executes(out) == ["t4"]
    out = step(s, success("t1"))
    assert executes(out) == ["t0"]

    # a seceded task gives its thread back and still finishes
    e = ev.Secede(sid(), "t4")
    out = step(s, e)
    assert out == [ins.LongRunning(e.stimulus_id, "t4", 1), ins.Execute(e.stimulus_id, "t2", 1)]
    assert states(s, "t4") == ["long-running"]
    assert s.busy_threads == 2  # t0 and t2
    out = step(s, success("t4"))
    assert of(out, ins.TaskFinished)[0].key == "t4"
    assert executes(out) == []
    assert s.busy_threads == 2
    for key in ("t0", "t2"):
        step(s, success(key))
    assert s.busy_threads == 0
    assert set(s.data) == set(prios)


def test_one_more_task_per_success():
    s = ws(nthreads=2)
    out = step(s, *[compute(("t", i), priority=(i,)) for i in range(5)])
    assert executes(out) == [("t", 0), ("t", 1)]
    for i in range(2, 5):
        out = step(s, success(("t", i - 2)))
        assert executes(out) == [("t", i)]
    for i in (3, 4):
        assert executes(step(s, success(("t", i)))) == []


def test_secede_of_a_task_not_executing_is_ignored():
    s = ws()
    step(s, compute("a"), compute("b"))
    assert step(s, ev.Secede(sid(), "b")) == []  # b is only ready
    assert states(s, "b") == ["ready"]


# ---------------------------------------------------------------------- dependencies


def test_dependencies_fetched_in_batches_per_peer():
    s = ws(nthreads=2, transfer_batch_bytes=100, max_peers_in_flight=2)
    who_has = {("d", i): [P1] for i in range(4)}
    who_has[("e", 0)] = [P2]
    out = step(
        s,
        compute("x", who_has=who_has, nbytes={k: 30 for k in who_has}, priority=(0,)),
        compute("y", who_has={("f", 0): [P3]}, priority=(1,)),  # fetched after x's
    )
    g = gathers(out)
    assert set(g) == {P1, P2}  # at most two peers at once; P3 waits
    assert len(g[P1].keys) == 3  # three keys of 30 bytes fit in 100, four do not
    assert g[P1].total_nbytes == 90
    assert set(g[P1].keys) < {("d", i) for i in range(4)}
    assert g[P2].keys == (("e", 0),)
    assert states(s, *g[P1].keys) == ["flight"] * 3
    assert states(s, "x") == ["waiting"]

    # P2 answers: P3 gets its request, P1 is still busy
    out = step(s, gathered(g[P2]))
    assert of(out, ins.AddKeys) == [ins.AddKeys(out[0].stimulus_id, (("e", 0),))]
    g3 = one(out, ins.GatherDep)
    assert (g3.worker, g3.keys) == (P3, (("f", 0),))
    # P1 answers: the fourth key is asked of P1
    out = step(s, gathered(g[P1]))
    assert one(out, ins.AddKeys).keys == g[P1].keys
    (last,) = {("d", i) for i in range(4)} - set(g[P1].keys)
    assert one(out, ins.GatherDep).keys == (last,)
    out = step(s, gathered(one(out, ins.GatherDep)))
    assert executes(out) == ["x"]
    out = step(s, gathered(g3))
    assert executes(out) == ["y"]
    assert one(out, ins.AddKeys).keys == (("f", 0),)


def test_a_key_bigger_than_the_batch_is_fetched_alone():
    s = ws(transfer_batch_bytes=100)
    out = step(s, compute("x", who_has={"a": [P1], "b": [P1]}, nbytes={"a": 500, "b": 500}))
    gd = one(out, ins.GatherDep)
    assert len(gd.keys) == 1 and gd.total_nbytes == 500


def test_gather_success_makes_dependent_ready():
    s = ws()
    out = step(s, compute(("x", 1), who_has={("a", 0): [P1]}, nbytes={("a", 0): 7}))
    gd = one(out, ins.GatherDep)
    assert (gd.worker, gd.keys, gd.total_nbytes) == (P1, (("a", 0),), 7)
    reply = gathered(gd)
    out = step(s, reply)
    assert out == [
        ins.AddKeys(reply.stimulus_id, (("a", 0),)),
        ins.Execute(reply.stimulus_id, ("x", 1), 1),
    ]
    assert s.data[("a", 0)] == ("v", ("a", 0))
    assert not s.in_flight_peers
    # the server hands the task its dependencies from ``data``
    assert {d.key for d in s.tasks[("x", 1)].dependencies} == {("a", 0)}
    step(s, success(("x", 1)))
    # the fetched replica stays until the scheduler frees it (it was told by add-keys)
    assert states(s, ("a", 0)) == ["memory"]
    step(s, free(("x", 1), ("a", 0)))
    assert_empty(s)


def test_dependency_in_memory_here_is_not_fetched():
    s = ws()
    step(s, compute("a"))
    step(s, success("a"))
    out = step(s, compute("b", who_has={"a": [ME, P1]}))
    assert executes(out) == ["b"]
    assert not of(out, ins.GatherDep)
    assert s.tasks["a"].who_has == {P1}  # never itself


def test_dependency_computed_here_is_waited_on_not_fetched():
    s = ws(nthreads=1)
    step(s, compute("a", priority=(0,)))
    step(s, compute("b", priority=(1,)))  # ready, waiting for a thread
    out = step(s, compute("c", who_has={"a": [P1], "b": [P1]}, priority=(2,)))
    assert out == []
    assert states(s, "a", "b", "c") == ["executing", "ready", "waiting"]
    out = step(s, success("a"))
    assert executes(out) == ["b"]
    out = step(s, success("b"))
    assert executes(out) == ["c"]
    assert not s.in_flight_peers


def test_two_dependents_share_one_fetch():
    s = ws(nthreads=2)
    out = step(s, compute("x", who_has={"a": [P1]}), compute("y", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    out = step(s, gathered(gd))
    assert sorted(executes(out)) == ["x", "y"]


def test_gather_failure_tries_another_holder():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1, P2]}))
    gd = one(out, ins.GatherDep)
    assert gd.worker == P1
    fail = gather_failed(gd)
    out = step(s, fail)
    assert out[0] == ins.MissingData(fail.stimulus_id, "a", P1)
    assert one(out, ins.GatherDep).worker == P2
    assert s.tasks["a"].who_has == {P2} and s.suspicious == {"a": 1}
    out = step(s, gathered(one(out, ins.GatherDep)))
    assert executes(out) == ["x"]
    step(s, success("x"), free("x", "a"))
    assert "a" not in s.tasks and s.suspicious == {}  # (counted while the key is known)


def test_key_missing_from_reply():
    s = ws(nthreads=2)
    out = step(
        s,
        compute("x", run_id=4, who_has={"a": [P1], "b": [P1]}),
        compute("y", run_id=5, who_has={"a": [P1]}),
    )
    gd = one(out, ins.GatherDep)
    assert set(gd.keys) == {"a", "b"}
    reply = gathered(gd, "b")
    out = step(s, reply)
    assert ins.AddKeys(reply.stimulus_id, ("a",)) in out
    assert ins.MissingData(reply.stimulus_id, "b", P1) in out
    assert ins.TaskRescheduled(reply.stimulus_id, "x", 4) in out  # b has no other holder
    assert executes(out) == ["y"]
    assert states(s, "x", "b", "a", "y") == ["forgotten", "forgotten", "memory", "executing"]


def test_no_holder_left_gives_the_dependent_back():
    s = ws()
    out = step(s, compute(("x", 0), run_id=2, who_has={("a", 0): [P1], ("b", 0): [P2]}))
    g = gathers(out)
    fail = gather_failed(g[P1])
    out = step(s, fail)
    assert out == [
        ins.MissingData(fail.stimulus_id, ("a", 0), P1),
        ins.TaskRescheduled(fail.stimulus_id, ("x", 0), 2),
    ]
    assert states(s, ("x", 0), ("a", 0)) == ["forgotten", "forgotten"]
    assert states(s, ("b", 0)) == ["cancelled"]  # still coming, nobody wants it
    assert step(s, gathered(g[P2])) == []  # dropped
    assert_empty(s)


def test_gather_error_fails_the_dependents():
    s = ws()
    out = step(s, compute("x", run_id=3, who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    exc = TypeError("cannot unpickle")
    error = RemoteError(exc, "tb", "TypeError('cannot unpickle')", "tb-text")
    e = ev.GatherDepError(sid(), P1, gd.keys, error)
    out = step(s, e)
    assert out == [
        ins.TaskErred(e.stimulus_id, "x", 3, error.exception, "tb", error.exception_text, "tb-text")
    ]
    assert_empty(s)


def test_reply_from_a_peer_not_asked_is_ignored():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    bogus = ev.GatherDepSuccess(sid(), P2, ("a",), {"a": 1}, {"a": 1})
    assert step(s, bogus) == []
    assert states(s, "a") == ["flight"]
    assert step(s, ev.GatherDepFailure(sid(), P3, ("a",))) == []
    assert executes(step(s, gathered(gd))) == ["x"]


# ---------------------------------------------------------------------- cancelling


def test_free_while_executing_cancels():
    s = ws(nthreads=1)
    step(s, compute("a"), compute("b", priority=(1,)))
    assert step(s, free("a")) == []
    assert states(s, "a") == ["cancelled"]
    assert s.busy_threads == 1  # its thread is still taken
    out = step(s, success("a"))
    assert not of(out, ins.TaskFinished)
    assert executes(out) == ["b"]
    assert "a" not in s.data and states(s, "a") == ["forgotten"]
    step(s, free("b"))
    step(s, failure("b"))
    assert_empty(s)


@pytest.mark.parametrize("outcome", ["failure", "reschedule"])
def test_cancelled_task_reports_nothing(outcome):
    s = ws()
    step(s, compute("a"))
    step(s, free("a"))
    e = failure("a") if outcome == "failure" else ev.RescheduleTask(sid(), "a", 1)
    assert step(s, e) == []
    assert_empty(s)


def test_compute_again_resumes_a_cancelled_task():
    s = ws()
    step(s, compute(("a", 0), run_id=1))
    step(s, free(("a", 0)))
    assert step(s, compute(("a", 0), run_id=2)) == []  # still running: no second Execute
    assert states(s, ("a", 0)) == ["executing"]
    out = step(s, success(("a", 0), run_id=1))
    assert one(out, ins.TaskFinished).run_id == 2
    assert states(s, ("a", 0)) == ["memory"]


def test_free_long_running_then_resume():
    s = ws()
    step(s, compute("a", run_id=1))
    step(s, ev.Secede(sid(), "a"))
    step(s, free("a"))
    assert states(s, "a") == ["cancelled"] and s.busy_threads == 0
    out = step(s, compute("a", run_id=2))
    assert states(s, "a") == ["long-running"]
    assert of(out, ins.LongRunning) == [ins.LongRunning(out[0].stimulus_id, "a", 2)]
    out = step(s, success("a"))
    assert one(out, ins.TaskFinished).run_id == 2


def test_secede_while_cancelled_frees_the_thread():
    s = ws(nthreads=1)
    step(s, compute("a", run_id=1))
    step(s, free("a"))
    step(s, ev.Secede(sid(), "a"))
    assert s.busy_threads == 0
    out = step(s, compute("b"))
    assert executes(out) == ["b"]
    out = step(s, compute("a", run_id=2))  # resumed: the scheduler hears it seceded
    assert out == [ins.LongRunning(out[0].stimulus_id, "a", 2)]
    assert one(step(s, success("a")), ins.TaskFinished).run_id == 2
    step(s, success("b"))
    step(s, free("a", "b"))
    assert_empty(s)


def test_rejoin_with_a_free_slot_goes_on_at_once():
    s = ws(nthreads=1)
    step(s, compute("a"))
    step(s, ev.Secede(sid(), "a"))
    out = step(s, ev.Rejoin(sid(), "a"))
    assert of(out, ins.Rejoined) == [ins.Rejoined(out[0].stimulus_id, "a")]
    assert states(s, "a") == ["executing"] and s.busy_threads == 1
    out = step(s, compute("b"))
    assert executes(out) == []  # the rejoined task holds the only thread
    assert executes(step(s, success("a"))) == ["b"]


def test_rejoin_waits_for_a_slot_and_comes_before_ready_tasks():
    s = ws(nthreads=1)
    step(s, compute("a", priority=(0,)))
    step(s, ev.Secede(sid(), "a"))
    assert executes(step(s, compute("b", priority=(1,)))) == ["b"]
    step(s, compute("c", priority=(2,)))
    assert step(s, ev.Rejoin(sid(), "a")) == []  # b holds the thread
    out = step(s, success("b"))
    assert of(out, ins.Rejoined) and executes(out) == []  # a first, c waits
    assert states(s, "a", "c") == ["executing", "ready"]
    assert executes(step(s, success("a"))) == ["c"]


def test_rejoin_of_a_task_not_seceded_or_cancelled_goes_on():
    s = ws(nthreads=1)
    step(s, compute("a"))
    out = step(s, ev.Rejoin(sid(), "a"))  # never seceded: it holds its thread
    assert of(out, ins.Rejoined) and s.busy_threads == 1
    step(s, ev.Secede(sid(), "a"))
    step(s, free("a"))
    assert states(s, "a") == ["cancelled"] and s.busy_threads == 0
    out = step(s, ev.Rejoin(sid(), "a"))
    assert of(out, ins.Rejoined) and s.busy_threads == 1  # it still runs: its slot back
    step(s, success("a"))
    assert_empty(s)


def test_free_while_in_flight_drops_the_data():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    assert step(s, free("x")) == []
    assert states(s, "x", "a") == ["forgotten", "cancelled"]
    assert step(s, gathered(gd)) == []
    assert_empty(s)


def test_free_while_in_flight_then_needed_again():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    step(s, free("x"))
    out = step(s, compute("y", who_has={"a": [P1]}))
    assert out == []  # the transfer under way will do
    out = step(s, gathered(gd))
    assert executes(out) == ["y"]
    assert one(out, ins.AddKeys).keys == ("a",)


def test_dependency_cancelled_while_executing_then_needed():
    # a ran here, was freed (and computed elsewhere); y needs it: fetched once a ends
    s = ws(nthreads=2)
    step(s, compute("a"))
    step(s, free("a"))
    out = step(s, compute("y", who_has={"a": [P1]}))
    assert executes(out) == []
    out = step(s, success("a"))
    assert not of(out, ins.TaskFinished)
    gd = one(out, ins.GatherDep)
    assert gd.keys == ("a",)
    assert executes(step(s, gathered(gd))) == ["y"]


def test_free_while_fetching_then_data_arrives_for_other_keys():
    s = ws(nthreads=2)
    out = step(s, compute("x", who_has={"a": [P1]}), compute("y", who_has={"b": [P1]}))
    gd = one(out, ins.GatherDep)
    assert set(gd.keys) == {"a", "b"}
    step(s, free("x"))
    out = step(s, gathered(gd))
    assert one(out, ins.AddKeys).keys == ("b",)
    assert executes(out) == ["y"]
    assert "a" not in s.data and states(s, "a") == ["forgotten"]


def test_compute_task_for_key_in_flight_takes_the_transfer():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    assert step(s, compute("a", run_id=7)) == []
    out = step(s, gathered(gd))
    assert one(out, ins.TaskFinished).run_id == 7
    assert executes(out) == ["x"]


def test_compute_task_for_key_in_flight_whose_transfer_fails():
    # the holder is gone: the scheduler asked us to compute the key, while we fetch it
    s = ws()
    out = step(s, compute("x", run_id=1, who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    assert step(s, compute("a", run_id=7)) == []
    out = step(s, gather_failed(gd))
    assert ins.TaskRescheduled(out[0].stimulus_id, "a", 7) in out  # a is not left hanging
    assert ins.TaskRescheduled(out[0].stimulus_id, "x", 1) in out
    assert_empty(s)


def test_free_key_being_fetched_then_compute_it():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    step(s, free("x"))
    assert step(s, compute("a", run_id=3)) == []  # resumed: the data on its way will do
    assert states(s, "a") == ["flight"]
    out = step(s, gathered(gd))
    assert one(out, ins.TaskFinished).run_id == 3


def test_compute_task_for_key_waiting_to_be_fetched():
    s = ws(max_peers_in_flight=1)
    out = step(s, compute("x", who_has={"a": [P1]}, priority=(0,)))
    gd = one(out, ins.GatherDep)
    out = step(s, compute("y", who_has={"b": [P2]}, priority=(1,)))
    assert out == [] and states(s, "b") == ["fetch"]
    out = step(s, compute("b", run_id=2, priority=(2,)))  # b is lost: compute it here
    assert executes(out) == ["b"]
    assert executes(step(s, gathered(gd))) == []  # x waits for the thread
    out = step(s, success("b", run_id=2))
    assert one(out, ins.TaskFinished).run_id == 2
    assert executes(out) == ["x"]
    assert executes(step(s, success("x"))) == ["y"]
    assert not s.in_flight_peers


# ---------------------------------------------------------------------- errors


def test_execute_failure():
    s = ws()
    key = ("boom", 1)
    step(s, compute(key, run_id=9))
    exc = ZeroDivisionError("division by zero")
    e = ev.ExecuteFailure(sid(), key, 9, exc, "tb", "ZeroDivisionError(...)", "Traceback...")
    out = step(s, e)
    assert out == [
        ins.TaskErred(e.stimulus_id, key, 9, exc, "tb", "ZeroDivisionError(...)", "Traceback...")
    ]
    msg = out[0].to_message()
    assert msg["op"] == "task-erred"
    assert msg["exception"] is exc and msg["exception_text"] == "ZeroDivisionError(...)"
    assert msg["traceback"] == "tb" and msg["traceback_text"] == "Traceback..."
    assert_empty(s)


def test_reschedule():
    s = ws()
    step(s, compute("a", run_id=4))
    e = ev.RescheduleTask(sid(), "a", 4)
    out = step(s, e)
    assert out == [ins.TaskRescheduled(e.stimulus_id, "a", 4)]
    assert out[0].to_message() == {
        "op": "reschedule",
        "stimulus_id": e.stimulus_id,
        "key": "a",
        "run_id": 4,
    }
    assert_empty(s)


def test_failure_of_a_long_running_task():
    s = ws()
    step(s, compute("a"))
    step(s, ev.Secede(sid(), "a"))
    out = step(s, failure("a"))
    assert one(out, ins.TaskErred).key == "a"
    assert_empty(s)


def test_failure_releases_fetched_dependencies_only_when_freed():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    step(s, gathered(one(out, ins.GatherDep)))
    step(s, failure("x"))
    assert states(s, "x", "a") == ["forgotten", "memory"]  # the scheduler holds the replica
    step(s, free("a"))
    assert_empty(s)


# ---------------------------------------------------------------------- resources


def test_resources_one_at_a_time():
    s = ws(nthreads=2, resources={"GPU": 1})
    out = step(
        s,
        compute("g1", resources={"GPU": 1}, priority=(0,)),
        compute("g2", resources={"GPU": 1}, priority=(1,)),
    )
    assert executes(out) == ["g1"]
    assert s.available_resources == {"GPU": 0}
    assert states(s, "g2") == ["ready"]
    out = step(s, compute("plain", priority=(2,)))
    assert executes(out) == ["plain"]  # the second thread is free for it
    out = step(s, success("g1"))
    assert executes(out) == ["g2"]
    assert s.available_resources == {"GPU": 0}
    step(s, success("g2"), success("plain"))
    assert s.available_resources == {"GPU": 1}


def test_resources_task_without_resources_runs_beside():
    s = ws(nthreads=2, resources={"GPU": 1})
    out = step(
        s,
        compute("g1", resources={"GPU": 1}, priority=(0,)),
        compute("g2", resources={"GPU": 1}, priority=(1,)),
        compute("p", priority=(2,)),
    )
    assert executes(out) == ["g1", "p"]
    out = step(s, success("p"))
    assert executes(out) == []  # g2 still waits for the GPU
    assert executes(step(s, success("g1"))) == ["g2"]


def test_resources_released_when_cancelled_task_ends():
    s = ws(nthreads=2, resources={"GPU": 1})
    step(s, compute("g1", resources={"GPU": 1}), compute("g2", resources={"GPU": 1}))
    step(s, free("g1"))
    assert s.available_resources == {"GPU": 0}
    assert executes(step(s, failure("g1"))) == ["g2"]


def test_resources_freed_when_ready_task_is_released():
    s = ws(nthreads=2, resources={"GPU": 1})
    step(s, compute("g1", resources={"GPU": 1}), compute("g2", resources={"GPU": 1}))
    step(s, free("g2"))
    step(s, success("g1"))
    assert s.available_resources == {"GPU": 1}
    step(s, free("g1"))
    assert_empty(s)


# ---------------------------------------------------------------------- pause


def test_pause():
    s = ws(nthreads=2)
    step(s, compute("running"))
    e = ev.PauseChange(sid(), True)
    out = step(s, e)
    assert out == [ins.WorkerStatusChange(e.stimulus_id, "paused")]
    assert out[0].to_message() == {
        "op": "worker-status-change",
        "stimulus_id": e.stimulus_id,
        "status": "paused",
    }
    assert step(s, compute("a")) == []
    assert step(s, compute("b", who_has={"d": [P1]})) == []
    out = step(s, success("running"))
    assert [type(i) for i in out] == [ins.TaskFinished]  # no new task while paused
    e = ev.PauseChange(sid(), False)
    out = step(s, e)
    assert out[0] == ins.WorkerStatusChange(e.stimulus_id, "running")
    assert executes(out) == ["a"]
    assert one(out, ins.GatherDep).keys == ("d",)


# ---------------------------------------------------------------------- scatter


def test_update_data_new_keys():
    s = ws()
    out = step(
        s,
        ev.UpdateData(
            sid(),
            {("s", 0): 10, ("s", 1): 20},
            {("s", 0): 28, ("s", 1): 28},
            {("s", 0): "int", ("s", 1): "int"},
        ),
    )
    assert out == []
    assert states(s, ("s", 0), ("s", 1)) == ["memory", "memory"]
    assert s.data[("s", 1)] == 20
    out = step(s, compute("x", who_has={("s", 0): [ME]}))
    assert executes(out) == ["x"]
    step(s, success("x"))
    step(s, free(("s", 0), ("s", 1), "x"))
    assert_empty(s)


def test_update_data_makes_waiting_dependent_ready():
    s = ws(max_peers_in_flight=1)
    out = step(s, compute("x", who_has={"a": [P1]}, priority=(0,)))
    gd = one(out, ins.GatherDep)
    out = step(s, compute("y", who_has={"b": [P2]}, priority=(1,)))
    assert states(s, "b") == ["fetch"]  # only one peer at a time
    out = step(s, ev.UpdateData(sid(), {"b": 1}, {"b": 28}, {"b": "int"}))
    assert executes(out) == ["y"]
    assert s.data["b"] == 1
    out = step(s, gathered(gd))
    assert not of(out, ins.GatherDep)  # b is not fetched any more


def test_update_data_for_key_in_flight():
    s = ws()
    out = step(s, compute("x", who_has={"a": [P1]}))
    gd = one(out, ins.GatherDep)
    out = step(s, ev.UpdateData(sid(), {"a": 1}, {"a": 28}, {"a": "int"}))
    assert executes(out) == ["x"]
    out = step(s, gathered(gd))  # the late reply changes nothing
    assert executes(out) == [] and s.data["a"] == 1
    step(s, success("x"))
    step(s, free("x", "a"))
    assert_empty(s)


# ---------------------------------------------------------------------- acquire-replicas


def acquire(who_has: dict, nbytes: int = 10) -> ev.AcquireReplicas:
    return ev.AcquireReplicas(sid(), who_has, {k: nbytes for k in who_has})


def test_acquire_replicas_fetches_and_keeps_the_keys():
    s = ws()
    out = step(s, acquire({"a": [P1], "b": [P1, P2]}))
    gd = one(out, ins.GatherDep)
    assert (gd.worker, sorted(gd.keys)) == (P1, ["a", "b"])
    assert states(s, "a", "b") == ["flight", "flight"]
    e = gathered(gd, nbytes=7)
    out = step(s, e)
    assert out == [ins.AddKeys(e.stimulus_id, gd.keys)]
    assert states(s, "a", "b") == ["memory", "memory"]  # kept: no task here needs them
    assert s.nbytes == 14
    step(s, free("a", "b"))
    assert_empty(s)
    assert s.nbytes == 0


def test_acquire_replicas_of_keys_held_here_reports_them_at_once():
    s = ws()
    step(s, compute("x"))
    step(s, success("x", nbytes=5))
    e = acquire({"x": [P1]})
    assert step(s, e) == [ins.AddKeys(e.stimulus_id, ("x",))]
    assert s.nbytes == 5
    step(s, free("x"))
    assert_empty(s)


def test_acquire_replica_of_a_dependency_outlives_its_dependent():
    s = ws()
    gd = one(step(s, compute("x", who_has={"a": [P1]})), ins.GatherDep)
    assert step(s, acquire({"a": [P1]})) == []  # already on its way
    step(s, free("x"))
    assert states(s, "x", "a") == ["forgotten", "flight"]
    out = step(s, gathered(gd))
    assert one(out, ins.AddKeys).keys == ("a",)
    assert states(s, "a") == ["memory"]
    step(s, free("a"))
    assert_empty(s)


def test_acquire_replica_freed_while_in_flight():
    s = ws()
    gd = one(step(s, acquire({"a": [P1]})), ins.GatherDep)
    step(s, free("a"))
    assert states(s, "a") == ["cancelled"]
    assert step(s, gathered(gd)) == []  # dropped, not reported
    assert_empty(s)


def test_acquire_replica_again_while_cancelled_takes_the_transfer():
    s = ws()
    gd = one(step(s, acquire({"a": [P1]})), ins.GatherDep)
    step(s, free("a"))
    assert step(s, acquire({"a": [P1]})) == []
    assert states(s, "a") == ["flight"]
    assert one(step(s, gathered(gd)), ins.AddKeys).keys == ("a",)
    step(s, free("a"))
    assert_empty(s)


def test_acquire_replica_from_another_holder_then_give_up():
    s = ws()
    gd = one(step(s, acquire({"a": [P1, P2]})), ins.GatherDep)
    out = step(s, gather_failed(gd))
    assert one(out, ins.MissingData).errant_worker == gd.worker
    gd2 = one(out, ins.GatherDep)
    assert gd2.worker != gd.worker
    out = step(s, gathered(gd2, "a"))  # missing there too: no holder left
    assert one(out, ins.MissingData).errant_worker == gd2.worker
    assert not of(out, ins.AddKeys) and not of(out, ins.TaskRescheduled)
    assert_empty(s)


def test_acquire_replica_that_cannot_be_deserialized():
    s = ws()
    gd = one(step(s, acquire({"a": [P1]})), ins.GatherDep)
    error = RemoteError(TypeError("x"))
    assert step(s, ev.GatherDepError(sid(), P1, gd.keys, error)) == []  # nobody to fail
    assert_empty(s)


def test_acquire_replicas_of_no_other_holder_is_ignored():
    s = ws()
    assert step(s, acquire({"a": [ME], "b": []})) == []
    assert_empty(s)


def test_replicas_come_after_dependencies_and_wait_while_paused():
    s = ws(max_peers_in_flight=1)
    step(s, ev.PauseChange(sid(), True))
    assert step(s, acquire({"r": [P1]}), compute("x", who_has={"d": [P2]})) == []
    out = step(s, ev.PauseChange(sid(), False))
    assert one(out, ins.GatherDep).keys == ("d",)  # the task's dependency first
    assert states(s, "r") == ["fetch"]


# ---------------------------------------------------------------------- key kinds


@pytest.mark.parametrize(
    "kind",
    [
        lambda i: f"k-{i}",
        lambda i: f"k{i}".encode(),
        lambda i: i,
        lambda i: ("k", i),
        lambda i: ("k", (i, "nested"), b"b"),
    ],
    ids=["str", "bytes", "int", "tuple", "nested-tuple"],
)
def test_key_kinds(kind):
    s = ws(nthreads=2)
    a, b, c = kind(0), kind(1), kind(2)
    out = step(s, compute(a), compute(b, who_has={c: [P1]}))
    assert executes(out) == [a]
    gd = one(out, ins.GatherDep)
    assert gd.keys == (c,)
    assert executes(step(s, gathered(gd))) == [b]
    step(s, success(a), success(b))
    assert set(s.data) == {a, b, c}
    assert [t[:3] for t in s.story(b)] == [
        (b, "released", "waiting"),
        (b, "waiting", "ready"),
        (b, "ready", "executing"),
        (b, "executing", "memory"),
    ]
    assert [t[1:3] for t in s.story(c)] == [
        ("released", "fetch"),
        ("fetch", "flight"),
        ("flight", "memory"),
    ]
    step(s, free(a, b, c))
    assert_empty(s)


# ---------------------------------------------------------------------- batching bugs


def test_gather_dep_asks_each_key_once():
    # b is asked of P1 along with a, missing there, and waits for P2 (busy): it then has
    # two entries in the queue of keys to fetch
    s = ws(nthreads=3, transfer_batch_bytes=10_000, max_peers_in_flight=2)
    out = step(s, compute("z", who_has={"e": [P2]}, priority=(5,)))
    g2 = one(out, ins.GatherDep)
    out = step(
        s,
        compute("x1", who_has={"a": [P1]}, priority=(0,)),
        compute("x2", who_has={"b": [P1, P2]}, priority=(1,)),
    )
    g1 = one(out, ins.GatherDep)
    assert (g1.worker, g1.keys) == (P1, ("a", "b"))
    out = step(s, gathered(g1, "b"))
    assert not of(out, ins.GatherDep) and states(s, "b") == ["fetch"]
    step(s, compute("y", who_has={"c": [P2]}, priority=(-1,)))
    out = step(s, gathered(g2))
    gd = one(out, ins.GatherDep)
    assert gd.worker == P2
    assert sorted(gd.keys) == ["b", "c"]  # b once
    assert gd.total_nbytes == 20


# ---------------------------------------------------------------------- purity


_CORE = [
    pathlib.Path(ev.__file__).parent / name for name in ("state.py", "events.py", "instructions.py")
] + [pathlib.Path(transitions.__file__)]


@pytest.mark.parametrize("path", _CORE, ids=lambda p: p.name)
def test_core_modules_do_no_io(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    for name in names:
        for bad in ("asyncio", "socket", "selectors", "time", "distributary.comm"):
            assert name != bad and not name.startswith(bad + "."), (path.name, name)


# ---------------------------------------------------------------------- randomized


_PEERS = (P1, P2, P3)


class _Sim:
    """Plays the scheduler, the thread pool and the peers around one WorkerState."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.s = WorkerState(
            ME,
            nthreads=rng.choice([1, 2, 3]),
            resources={"R": 1},
            transfer_batch_bytes=rng.choice([1, 25, 100, 10_000]),
            max_peers_in_flight=rng.choice([1, 2, 3]),
            transition_log_length=1000,
            validate=True,
        )
        self.names = itertools.count()
        self.run_ids = itertools.count(1)
        # the peers and the scheduler's view of them
        self.peer_data: dict[str, set] = {p: set() for p in _PEERS}
        self.holders: dict = {}  # key -> peers the scheduler believes hold it
        self.here: set = set()  # keys the scheduler believes this worker holds
        self.assigned: dict = {}  # key -> run_id: the scheduler waits for this worker
        self.deps: dict = {}  # assigned key -> its dependencies
        self.lost: set = set()  # keys that existed and are nowhere now
        # the I/O under way
        # key -> [run_id, seceded]: Execute not yet answered; seceded is False (in a
        # thread slot), True, or "rejoining" (blocked until Rejoined)
        self.running: dict = {}
        self.requests: dict = {}  # peer -> GatherDep not yet answered
        self.paused = False

    # -- plumbing

    def handle(self, *events: ev.WorkerEvent) -> None:
        out = self.s.handle(*events)
        check(self.s)
        for i in out:
            self.receive(i)
        in_slots = sum(1 for _, seceded in self.running.values() if seceded is False)
        assert in_slots <= self.s.nthreads, self.running  # threads really taken

    def receive(self, i: ins.WorkerInstruction) -> None:
        s = self.s
        if isinstance(i, ins.Execute):
            assert i.key not in self.running, i  # never twice at once
            ts = s.tasks[i.key]
            assert ts.state == "executing" and i.run_id == ts.run_id, ts
            assert self.assigned.get(i.key) == i.run_id, i
            for dep in ts.dependencies:  # what the server hands the task
                assert s.data[dep.key] == ("v", dep.key), (ts, dep)
            self.running[i.key] = [i.run_id, False]
        elif isinstance(i, ins.GatherDep):
            assert i.worker != ME and i.worker not in self.requests, i
            assert len(set(i.keys)) == len(i.keys), i
            assert i.total_nbytes <= s.transfer_batch_bytes or len(i.keys) == 1, i
            assert i.total_nbytes == sum(s.tasks[k].nbytes for k in i.keys), i
            for key in i.keys:
                assert s.tasks[key].state == "flight" and i.worker in s.tasks[key].who_has
            self.requests[i.worker] = i
            assert len(self.requests) <= s.max_peers_in_flight
        elif isinstance(i, ins.TaskFinished):
            assert self.assigned.pop(i.key) == i.run_id, i
            assert s.data[i.key] == ("v", i.key)
            self.here.add(i.key)
        elif isinstance(i, (ins.TaskErred, ins.TaskRescheduled)):
            assert self.assigned.pop(i.key) == i.run_id, i
            if i.key not in self.holders and i.key not in self.here:
                self.lost.add(i.key)
        elif isinstance(i, ins.LongRunning):
            assert self.assigned[i.key] == i.run_id, i
        elif isinstance(i, ins.Rejoined):
            assert self.running[i.key][1] == "rejoining", i
            self.running[i.key][1] = False
        elif isinstance(i, ins.AddKeys):
            for key in i.keys:
                assert s.data[key] == ("v", key)
            self.here.update(i.keys)
            self.lost.difference_update(i.keys)
        elif isinstance(i, ins.MissingData):
            assert i.errant_worker in _PEERS
            holders = self.holders.get(i.key, set())
            holders.discard(i.errant_worker)
            if not holders and i.key in self.holders:
                del self.holders[i.key]
                if i.key not in self.here and i.key not in self.assigned:
                    self.lost.add(i.key)
        elif isinstance(i, ins.WorkerStatusChange):
            assert i.status == ("paused" if self.paused else "running")
        else:
            raise AssertionError(i)

    def key(self):
        return ("k", next(self.names))

    def needed(self) -> set:
        return {d for deps in self.deps.values() for d in deps}

    # -- the scheduler

    def on_peers(self) -> None:
        key = self.key()
        peers = self.rng.sample(_PEERS, self.rng.randint(1, 2))
        for p in peers:
            self.peer_data[p].add(key)
        self.holders[key] = set(peers)

    def compute(self) -> None:
        rng = self.rng
        if self.lost and rng.random() < 0.4:
            key = rng.choice(sorted(self.lost))
            self.lost.discard(key)
        else:
            key = self.key()
        available = sorted(set(self.holders) | self.here)
        deps = rng.sample(available, min(len(available), rng.randint(0, 3)))
        who_has = {
            d: sorted(self.holders.get(d, set()) | ({ME} if d in self.here else set()))
            for d in deps
        }
        run_id = next(self.run_ids)
        self.assigned[key] = run_id
        self.deps[key] = deps
        self.handle(
            ev.ComputeTask(
                sid(),
                key,
                run_id,
                ("payload", key),
                (rng.randint(0, 3), key[1]),
                who_has,
                {d: rng.choice([1, 10, 40]) for d in deps},
                {"R": 1} if rng.random() < 0.15 else None,
            )
        )

    def cancel(self) -> None:
        key = self.rng.choice(sorted(self.assigned))
        del self.assigned[key]
        self.deps.pop(key, None)
        self.lost.add(key)
        self.handle(free(key))

    def release(self) -> None:
        """A key in memory (here or on peers) that no task here needs is released."""
        candidates = sorted((set(self.holders) | self.here) - self.needed())
        if not candidates:
            return
        key = self.rng.choice(candidates)
        self.holders.pop(key, None)
        for data in self.peer_data.values():
            data.discard(key)
        if key in self.here:
            self.here.discard(key)
            self.handle(free(key))

    def peer_loses_a_key(self) -> None:
        peer = self.rng.choice(_PEERS)
        if self.peer_data[peer]:
            self.peer_data[peer].discard(self.rng.choice(sorted(self.peer_data[peer])))

    def scatter(self) -> None:
        key = self.key()
        self.here.add(key)
        self.handle(ev.UpdateData(sid(), {key: ("v", key)}, {key: 28}, {key: "tuple"}))

    def pause(self) -> None:
        self.paused = not self.paused
        self.handle(ev.PauseChange(sid(), self.paused))

    def replicate(self) -> None:
        """The scheduler wants copies here of keys held by peers."""
        keys = sorted(self.holders)
        if keys:
            wanted = self.rng.sample(keys, min(len(keys), self.rng.randint(1, 3)))
            self.handle(acquire({k: sorted(self.holders[k]) for k in wanted}))

    # -- the thread pool and the peers

    def finish(self, outcome: str | None = None) -> None:
        rng = self.rng
        free_to_go = sorted(k for k, (_, seceded) in self.running.items() if seceded != "rejoining")
        if not free_to_go:
            return
        key = rng.choice(free_to_go)
        run_id, seceded = self.running[key]
        roll = rng.random() if outcome is None else 1.0
        if roll < 0.07 and not seceded:
            self.running[key][1] = True
            self.handle(ev.Secede(sid(), key))
            return
        if roll < 0.12 and seceded is True:
            self.running[key][1] = "rejoining"
            self.handle(ev.Rejoin(sid(), key))
            return
        del self.running[key]
        if roll < 0.17:
            self.handle(failure(key, run_id))
        elif roll < 0.25:
            self.handle(ev.RescheduleTask(sid(), key, run_id))
        else:
            self.handle(success(key, run_id, nbytes=rng.choice([1, 10, 40])))

    def answer(self, outcome: str | None = None) -> None:
        rng = self.rng
        peer = rng.choice(sorted(self.requests))
        gd = self.requests.pop(peer)
        roll = rng.random() if outcome is None else 1.0
        if roll < 0.1:
            self.handle(gather_failed(gd))
        elif roll < 0.14:
            error = RemoteError(TypeError("x"), None, "TypeError('x')")
            self.handle(ev.GatherDepError(sid(), peer, gd.keys, error))
        else:
            has = self.peer_data[peer]
            missing = [k for k in gd.keys if k not in has or (roll < 0.2 and rng.random() < 0.5)]
            self.handle(gathered(gd, *missing))

    # -- driving

    def step(self) -> None:
        rng = self.rng
        actions = [
            (self.on_peers, 3),
            (self.compute, 6),
            (self.scatter, 0.5),
            (self.peer_loses_a_key, 0.5),
            (self.pause, 0.5),
            (self.release, 1.5),
            (self.replicate, 1),
        ]
        if self.assigned:
            actions.append((self.cancel, 1.5))
        if self.running:
            actions.append((self.finish, 6))
        if self.requests:
            actions.append((self.answer, 5))
        action = rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        action()

    def settle(self) -> None:
        """Unpause and answer everything under way, successfully, until nothing is left."""
        if self.paused:
            self.pause()
        for _ in range(10_000):
            if self.running:
                self.finish("success")
            elif self.requests:
                self.answer("success")
            else:
                return
        raise AssertionError("the work never ends")


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences(seed):
    sim = _Sim(seed)
    s = sim.s
    for _ in range(400):
        sim.step()

    # every task the scheduler gave this worker gets an answer
    sim.settle()
    assert not sim.assigned, {k: s.story(k) for k in sim.assigned}
    assert not s.executing and not s.long_running and s.busy_threads == 0
    for key, ts in s.tasks.items():
        assert ts.state == "memory", (ts, s.story(key))
    assert set(s.data) == sim.here

    # once the scheduler frees everything, nothing is left
    for _ in range(100):
        if not sim.here:
            break
        sim.handle(free(*sorted(sim.here)))
        sim.here.clear()
        sim.settle()
    assert_empty(s)


@pytest.mark.parametrize("seed", range(12, 20))
def test_random_sequences_freed_with_work_under_way(seed):
    sim = _Sim(seed)
    s = sim.s
    for _ in range(300):
        sim.step()
    # the scheduler frees everything while tasks run and transfers are under way
    sim.handle(free(*sorted(set(sim.assigned) | sim.here)))
    sim.assigned.clear()
    sim.deps.clear()
    sim.here.clear()
    for _ in range(100):
        sim.settle()
        if not sim.here:
            break
        sim.handle(free(*sorted(sim.here)))
        sim.here.clear()
    assert_empty(s)


def test_every_state_is_a_declared_worker_task_state():
    import ast
    import pathlib
    from typing import get_args

    from distributary.worker import state as worker_state

    declared = set(get_args(worker_state.WorkerTaskState))
    ws = worker_state.WorkerState("tcp://a:1", nthreads=1)
    assert {a for a, _ in ws._table} | {b for _, b in ws._table} <= declared
    assigned = {
        node.value.value
        for node in ast.walk(ast.parse(pathlib.Path(worker_state.__file__).read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Attribute) and t.attr == "state" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    }
    assert assigned and assigned <= declared
