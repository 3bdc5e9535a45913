"""Unit tests of the scheduler's sans-I/O state machine: events in, instructions out.

No event loop and no network: every test builds events, hands them to
``SchedulerState.handle`` and looks at the instructions that come back.  The state is
built with ``validate=True`` so that its invariants are checked after every event.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import os
import pathlib
import random
import subprocess
import sys
import textwrap

import pytest

from distributary.exceptions import FutureLostError, KilledWorker
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.retirement import retirement_done
from distributary.scheduler.state import SchedulerState

_sids = itertools.count()

A, B, C = "tcp://10.0.0.1:4001", "tcp://10.0.0.2:4002", "tcp://10.0.0.3:4003"


# ---------------------------------------------------------------------- helpers


def sid() -> str:
    return f"stim-{next(_sids)}"


def state(**kwargs) -> SchedulerState:
    kwargs.setdefault("worker_saturation", 1.0)
    return SchedulerState(validate=True, **kwargs)


def add_worker(address: str, nthreads: int = 1, **kwargs) -> ev.AddWorker:
    return ev.AddWorker(sid(), address=address, nthreads=nthreads, **kwargs)


def spec(key, *deps, **kwargs) -> ev.TaskSpec:
    return ev.TaskSpec(key, payload=("payload", key), dependencies=tuple(deps), **kwargs)


def graph(client: str, *specs: ev.TaskSpec, wanted=None) -> ev.UpdateGraph:
    if wanted is None:
        wanted = tuple(s.key for s in specs)
    return ev.UpdateGraph(sid(), client=client, tasks=tuple(specs), wanted=tuple(wanted))


def finished(ct: ins.ComputeTask, nbytes: int = 8, worker: str | None = None, run_id=None):
    return ev.TaskFinished(
        sid(),
        worker=worker or ct.worker,
        key=ct.key,
        run_id=ct.run_id if run_id is None else run_id,
        nbytes=nbytes,
        type="int",
    )


def erred(ct: ins.ComputeTask, exc: BaseException, worker: str | None = None, run_id=None):
    return ev.TaskErred(
        sid(),
        worker=worker or ct.worker,
        key=ct.key,
        run_id=ct.run_id if run_id is None else run_id,
        exception=exc,
        traceback="tb",
        exception_text=repr(exc),
    )


def release(client: str, *keys) -> ev.ClientReleasesKeys:
    return ev.ClientReleasesKeys(sid(), client=client, keys=tuple(keys))


def remove_worker(address: str, safe: bool = False) -> ev.RemoveWorker:
    return ev.RemoveWorker(sid(), address=address, safe=safe)


def of(out: list, cls: type) -> list:
    return [i for i in out if type(i) is cls]


def acts(out: list) -> list:
    """The instructions that ask something of someone (not the notices for plugins)."""
    return [i for i in out if not isinstance(i, ins.Notice)]


def computes(out: list) -> list[ins.ComputeTask]:
    return of(out, ins.ComputeTask)


def one_compute(out: list) -> ins.ComputeTask:
    cts = computes(out)
    assert len(cts) == 1, out
    return cts[0]


def freed(out: list) -> set[tuple]:
    """``(worker, key)`` pairs of every FreeKeys in ``out``."""
    return {(i.worker, k) for i in of(out, ins.FreeKeys) for k in i.keys}


def states(s: SchedulerState, *keys) -> list[str]:
    return [s.tasks[k].state if k in s.tasks else "forgotten" for k in keys]


# ---------------------------------------------------------------------- one task


def test_single_task_lifecycle():
    s = state()
    key = ("x-abc", 0, 1)
    assert acts(s.handle(add_worker(A, nthreads=2))) == []
    out = s.handle(graph("c", spec(key, priority=(5, 3))))
    ct = one_compute(out)
    assert ct.worker == A
    assert ct.key == key
    assert ct.payload == ("payload", key)
    assert ct.run_id == 1
    assert ct.priority[0] == 5 and ct.priority[-1] == 3  # the client's priority, forwarded
    assert ct.priority == s.tasks[key].priority
    assert ct.who_has == {} and ct.nbytes == {}
    assert ct.resources is None
    assert states(s, key) == ["processing"]

    done = finished(ct, nbytes=123)
    out = s.handle(done)
    assert out == [ins.KeyInMemory(done.stimulus_id, key, "int", (A,), client="c")]
    assert states(s, key) == ["memory"]
    assert s.tasks[key].nbytes == 123
    assert s.workers[A].nbytes == 123

    stim = sid()
    out = s.handle(ev.ClientReleasesKeys(stim, client="c", keys=(key,)))
    assert out == [ins.FreeKeys(stim, (key,), worker=A)]
    assert key not in s.tasks
    assert not s.workers[A].has_what and s.workers[A].nbytes == 0
    assert not s.clients["c"].wants_what


def test_story_lists_transitions():
    s = state()
    key = ("x-abc", 0, 1)
    g = graph("c", spec(key))
    s.handle(add_worker(A))
    ct = one_compute(s.handle(g))
    f = finished(ct)
    s.handle(f)
    r = release("c", key)
    s.handle(r)
    story = s.story(key)
    assert [(start, finish) for _, start, finish, _ in story] == [
        ("released", "waiting"),
        ("waiting", "processing"),
        ("processing", "memory"),
        ("memory", "released"),
        ("released", "forgotten"),
    ]
    assert all(entry[0] == key for entry in story)
    assert [entry[3] for entry in story] == [
        g.stimulus_id,
        g.stimulus_id,
        f.stimulus_id,
        r.stimulus_id,
        r.stimulus_id,
    ]
    assert s.story(("other", 0)) == []


def test_story_of_several_keys():
    s = state()
    s.handle(add_worker(A, nthreads=2))
    s.handle(graph("c", spec("a"), spec("b", "a"), wanted=["b"]))
    story = s.story("a", "b")
    assert {entry[0] for entry in story} == {"a", "b"}
    assert ("b", "released", "waiting") in [entry[:3] for entry in story]


# ---------------------------------------------------------------------- chains and diamonds


def test_chain():
    s = state()
    a, b, c = ("a", 0), ("b", 0), ("c", 0)
    s.handle(add_worker(A))
    out = s.handle(graph("cl", spec(a), spec(b, a), spec(c, b), wanted=[c]))
    ct = one_compute(out)
    assert ct.key == a
    assert states(s, a, b, c) == ["processing", "waiting", "waiting"]

    out = s.handle(finished(ct, nbytes=10))
    assert not of(out, ins.KeyInMemory)  # nobody wants a
    ct = one_compute(out)
    assert ct.key == b
    assert ct.who_has == {a: (A,)}
    assert ct.nbytes == {a: 10}
    assert states(s, a) == ["memory"]  # b needs it until it is done

    out = s.handle(finished(ct, nbytes=20))
    assert freed(out) == {(A, a)}  # a is not needed any more
    ct = one_compute(out)
    assert ct.key == c
    assert ct.who_has == {b: (A,)} and ct.nbytes == {b: 20}
    assert states(s, a, b) == ["released", "memory"]  # a kept for lineage

    out = s.handle(finished(ct))
    assert freed(out) == {(A, b)}
    assert [(i.client, i.key) for i in of(out, ins.KeyInMemory)] == [("cl", c)]
    assert states(s, a, b, c) == ["released", "released", "memory"]

    out = s.handle(release("cl", c))
    assert freed(out) == {(A, c)}
    assert s.tasks == {}


def test_diamond():
    s = state()
    a, b, c, d = ("a", 0), ("b", 0), ("c", 0), ("d", 0)
    s.handle(add_worker(A, nthreads=2))
    out = s.handle(graph("cl", spec(a), spec(b, a), spec(c, a), spec(d, b, c), wanted=[d]))
    ct_a = one_compute(out)
    out = s.handle(finished(ct_a, nbytes=1))
    cts = {ct.key: ct for ct in computes(out)}
    assert set(cts) == {b, c}
    assert all(ct.who_has == {a: (A,)} for ct in cts.values())

    out = s.handle(finished(cts[b], nbytes=2))
    assert not computes(out) and not freed(out)  # a is still needed by c
    out = s.handle(finished(cts[c], nbytes=3))
    assert freed(out) == {(A, a)}
    ct_d = one_compute(out)
    assert ct_d.key == d
    assert ct_d.who_has == {b: (A,), c: (A,)}
    assert ct_d.nbytes == {b: 2, c: 3}

    out = s.handle(finished(ct_d))
    assert freed(out) == {(A, b), (A, c)}
    assert states(s, a, b, c, d) == ["released", "released", "released", "memory"]
    # the records stay while a dependent exists, so that d could be recomputed
    assert s.tasks[b].dependents == {s.tasks[d]}

    out = s.handle(release("cl", d))
    assert freed(out) == {(A, d)}
    assert s.tasks == {}


_KEY_KINDS = {
    "str": lambda n: f"{n}-abc",
    "bytes": lambda n: f"{n}-abc".encode(),
    "int": lambda n: {"a": 1, "b": 2, "c": 3, "d": 4}[n],
    "tuple": lambda n: (f"{n}-abc", 0, 1),
    "nested": lambda n: ((f"{n}-abc", 0), (1, b"x")),
}


@pytest.mark.parametrize("kind", sorted(_KEY_KINDS))
def test_key_kinds(kind):
    """Keys are str, bytes, int or tuples of these: each is passed through unchanged."""
    k = _KEY_KINDS[kind]
    a, b, c, d = k("a"), k("b"), k("c"), k("d")
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    out = s.handle(graph("cl", spec(a), spec(b, a), spec(c, a, workers=(B,)), spec(d, b, c)))
    ct = one_compute(out)
    assert ct.key == a
    out = s.handle(finished(ct))
    everything = list(out)
    cts = {ct.key: ct for ct in computes(out)}
    assert set(cts) == {b, c}
    assert all(ct.who_has == {a: (A,)} for ct in cts.values())
    out = s.handle(*[finished(ct) for ct in cts.values()])
    ct = one_compute(out)
    assert ct.key == d and set(ct.who_has) == {b, c}
    everything += out + s.handle(finished(ct))
    assert {i.key for i in of(everything, ins.KeyInMemory)} == {a, b, c, d}
    assert [entry[0] for entry in s.story(d)] == [d] * 3
    out = s.handle(ev.CancelKeys(sid(), client="cl", keys=(a, b, c, d)))
    assert {i.key for i in of(out, ins.KeyCancelled)} == {a, b, c, d}
    assert s.tasks == {}


@pytest.mark.parametrize("big", [A, B])
def test_dependent_placed_with_larger_dependency(big):
    s = state()
    x, y, z = ("x", 0), ("y", 0), ("z", 0)
    s.handle(add_worker(A), add_worker(B))
    out = s.handle(graph("cl", spec(x, priority=(0,)), spec(y, priority=(1,)), spec(z, x, y)))
    cts = {ct.key: ct for ct in computes(out)}
    assert {cts[x].worker, cts[y].worker} == {A, B}
    out = []
    for ct in cts.values():
        out += s.handle(finished(ct, nbytes=10**9 if ct.worker == big else 10))
    ct_z = one_compute(out)
    assert ct_z.key == z
    assert ct_z.worker == big
    assert set(ct_z.who_has) == {x, y}


def test_dependency_in_memory_from_an_earlier_graph():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    s.handle(finished(ct, nbytes=5))
    ct = one_compute(s.handle(graph("c", spec("b", "a"))))
    assert ct.who_has == {"a": (A,)} and ct.nbytes == {"a": 5}
    out = s.handle(finished(ct))
    assert not freed(out)  # the client still wants a
    out = s.handle(release("c", "a"))
    assert freed(out) == {(A, "a")}
    assert states(s, "a", "b") == ["released", "memory"]
    s.handle(release("c", "b"))
    assert s.tasks == {}


def test_tasks_keep_the_priorities_their_clients_gave():
    """The client says each task's place in line (user priority, submission window,
    graph order), so the parts of a graph and the graphs of several clients compare."""
    s = state()
    s.handle(graph("c", spec("a", priority=(0, 1.5, 0))))
    s.handle(graph("other", spec("o", priority=(0, 1.5, 1))))
    s.handle(graph("c", spec("b", "a", priority=(0, 1.5, 2)), spec("n", priority=(-1, 9.0, 0))))
    a, o, b, n = (s.tasks[k].priority for k in "aobn")
    assert (a, o, b, n) == ((0, 1.5, 0), (0, 1.5, 1), (0, 1.5, 2), (-1, 9.0, 0))
    assert n < a < o < b


# ---------------------------------------------------------------------- queuing


def test_queuing_root_tasks():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A), add_worker(B))
    keys = [("r", i) for i in range(10)]
    specs = [spec(k, priority=(i,)) for i, k in enumerate(keys)]
    rng = random.Random(0)
    rng.shuffle(specs)
    out = s.handle(graph("c", *specs))
    cts = computes(out)
    assert [ct.key for ct in cts] == keys[:2]
    assert {ct.worker for ct in cts} == {A, B}
    assert states(s, *keys[2:]) == ["queued"] * 8

    sent = keys[:2]
    running = {ct.key: ct for ct in cts}
    while running:
        key = min(running)
        ct = running.pop(key)
        out = s.handle(finished(ct))
        new = computes(out)
        assert len(new) == (1 if len(sent) < 10 else 0)
        for n in new:
            assert n.worker == ct.worker  # the slot that was freed
            sent.append(n.key)
            running[n.key] = n
    assert sent == keys
    assert states(s, *keys) == ["memory"] * 10


def test_queuing_more_threads():
    s = state(worker_saturation=1.5)
    s.handle(add_worker(A, nthreads=2))
    out = s.handle(graph("c", *[spec(("r", i), priority=(i,)) for i in range(10)]))
    assert [ct.key for ct in computes(out)] == [("r", i) for i in range(3)]  # ceil(2 * 1.5)


def test_queued_task_nobody_needs_does_not_take_the_slot():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A))
    specs = [
        spec(("r", 0), priority=(0,)),
        spec(("u", 0), priority=(1,)),
        spec(("w", 0), priority=(2,)),
    ]
    out = s.handle(graph("c", *specs, wanted=[("r", 0), ("w", 0)]))
    assert [ct.key for ct in computes(out)] == [("r", 0)]
    out = s.handle(add_worker(B))  # u comes first in the queue, but nobody wants it
    ct = one_compute(out)
    assert ct.key == ("w", 0) and ct.worker == B
    assert ("u", 0) not in s.tasks


def test_slot_refilled_when_queued_task_is_released_in_the_same_step():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A))
    r1, q1, q2, d = ("r1", 0), ("q1", 0), ("q2", 0), ("d", 0)
    specs = [spec(r1, priority=(0,)), spec(q1, priority=(1,)), spec(q2, priority=(2,))]
    out = s.handle(graph("c", *specs, spec(d, r1, q1), wanted=[r1, q2, d]))
    ct = one_compute(out)
    assert ct.key == r1
    assert states(s, q1, q2) == ["queued", "queued"]
    # r1's slot is counted for q1; then d errs, so nobody needs q1 any more
    out = s.handle(erred(ct, ValueError()))
    assert [ct.key for ct in computes(out)] == [q2]
    assert sorted(i.key for i in of(out, ins.KeyErred)) == [d, r1]


def test_no_queuing_with_infinite_saturation():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    keys = [("r", i) for i in range(10)]
    out = s.handle(graph("c", *[spec(k, priority=(i,)) for i, k in enumerate(keys)]))
    cts = computes(out)
    assert sorted(ct.key for ct in cts) == keys
    assert {ct.worker for ct in cts} == {A, B}
    assert "queued" not in states(s, *keys)


def test_non_root_tasks_are_not_queued():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    s.handle(finished(ct))
    out = s.handle(graph("c", *[spec(("d", i), "a") for i in range(5)]))
    assert len(computes(out)) == 5


# ---------------------------------------------------------------------- no workers


def test_no_workers_then_add_worker():
    s = state(worker_saturation=1.0)
    keys = [("r", i) for i in range(4)]
    out = s.handle(graph("c", *[spec(k, priority=(i,)) for i, k in enumerate(keys)]))
    assert not computes(out)
    assert set(states(s, *keys)) <= {"no-worker", "queued"}
    assert s.tasks[keys[0]].processing_on is None

    out = s.handle(add_worker(A))
    ct = one_compute(out)
    assert ct.key == keys[0]  # priority order survives the wait
    assert set(states(s, *keys[1:])) == {"queued"}
    out = s.handle(add_worker(B))
    assert one_compute(out).key == keys[1]
    out = s.handle(finished(ct))
    assert one_compute(out).key == keys[2]


def test_no_workers_non_root_task():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    s.handle(finished(ct))
    s.handle(remove_worker(A))  # a's data is gone: it is recomputed when a worker comes
    assert states(s, "a") == ["no-worker"]
    out = s.handle(graph("c", spec("b", "a")))
    assert not computes(out)
    out = s.handle(add_worker(B))
    ct = one_compute(out)
    assert ct.key == "a" and ct.worker == B
    ct = one_compute(s.handle(finished(ct)))
    assert ct.key == "b" and ct.who_has == {"a": (B,)}


# ---------------------------------------------------------------------- errors


def test_task_erred_reported_with_exception():
    s = state()
    s.handle(add_worker(A))
    key = ("x-abc", 0, 1)
    ct = one_compute(s.handle(graph("c", spec(key))))
    exc = ValueError("boom")
    out = s.handle(erred(ct, exc))
    [ke] = of(out, ins.KeyErred)
    assert (ke.client, ke.key, ke.exception, ke.traceback) == ("c", key, exc, "tb")
    assert ke.exception_text == repr(exc)
    assert states(s, key) == ["erred"]
    assert s.workers[A].processing == set()
    out = s.handle(release("c", key))
    assert s.tasks == {}


def test_erred_task_reported_to_client_that_wants_it_later():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    exc = ValueError("boom")
    s.handle(erred(ct, exc))
    out = s.handle(ev.ClientDesiresKeys(sid(), client="d", keys=("a",)))
    [ke] = of(out, ins.KeyErred)
    assert (ke.client, ke.exception) == ("d", exc)
    out = s.handle(graph("e", spec("a")))  # resubmitting the key keeps its result
    assert not computes(out)
    assert [(i.client, i.exception) for i in of(out, ins.KeyErred)] == [("e", exc)]


def test_dependents_erred_with_original_exception():
    s = state()
    s.handle(add_worker(A))
    a, b, c, d = ("a", 0), ("b", 0), ("c", 0), ("d", 0)
    out = s.handle(
        graph(
            "cl",
            spec(a, priority=(0,)),
            spec(b, a, priority=(1,)),
            spec(c, b, priority=(2,)),
            spec(d, priority=(3,)),
            wanted=[a, c, d],
        )
    )
    cts = {ct.key: ct for ct in computes(out)}
    assert set(cts) == {a}  # d is queued behind a
    exc = ZeroDivisionError("x")
    out = s.handle(erred(cts[a], exc))
    errs = {i.key: i for i in of(out, ins.KeyErred)}
    assert set(errs) == {a, c}
    assert errs[c].exception is exc and errs[c].traceback == "tb"
    assert errs[c].exception_text == repr(exc)
    assert states(s, a, b, c) == ["erred"] * 3
    assert s.tasks[c].exception_blame is s.tasks[a]
    assert [ct.key for ct in computes(out)] == [d]  # the freed slot goes to d
    # a later dependent of an erred task errs at once, without running
    out = s.handle(graph("cl", spec(("e", 0), c)))
    assert not computes(out)
    assert [i.exception for i in of(out, ins.KeyErred)] == [exc]


def test_retries():
    s = state()
    s.handle(add_worker(A))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c", spec(key, retries=2))))
    run_ids = [ct.run_id]
    for _ in range(2):
        out = s.handle(erred(ct, ValueError("flaky")))
        assert not of(out, ins.KeyErred)
        ct = one_compute(out)
        run_ids.append(ct.run_id)
    out = s.handle(erred(ct, ValueError("third")))
    [ke] = of(out, ins.KeyErred)
    assert str(ke.exception) == "third"
    assert run_ids == [1, 2, 3]
    assert not computes(out)


def test_retries_then_success():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("x", retries=2))))
    ct = one_compute(s.handle(erred(ct, ValueError())))
    out = s.handle(finished(ct))
    assert of(out, ins.KeyInMemory)


def test_retry_of_dependent_keeps_dependency_data():
    """A task that errs and is retried needs its dependencies' data again."""
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"), spec("b", "a", retries=1), wanted=["b"])))
    ct = one_compute(s.handle(finished(ct, nbytes=7)))
    assert ct.key == "b"
    out = s.handle(erred(ct, ValueError()))
    assert (A, "a") not in freed(out)  # the retry still needs a
    ct = one_compute(out)
    assert ct.key == "b" and ct.who_has == {"a": (A,)}
    assert states(s, "a") == ["memory"]
    out = s.handle(finished(ct))
    assert freed(out) == {(A, "a")}
    assert of(out, ins.KeyInMemory)


def test_rescheduled_task_keeps_dependency_data():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("a"), spec("b", "a"), wanted=["b"])))
    ct = one_compute(s.handle(finished(ct)))
    out = s.handle(ev.TaskRescheduled(sid(), worker=ct.worker, key="b", run_id=ct.run_id))
    assert freed(out) == {(ct.worker, "b")}
    assert states(s, "a") == ["memory"]
    ct2 = one_compute(out)
    assert ct2.key == "b" and ct2.run_id > ct.run_id
    assert ct2.who_has == {"a": (A,)}


def test_retry_with_two_erred_roots():
    """The dependent waits for both roots: no error is reported while they are retried."""
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A))
    x1, x2, y, z = ("x1", 0), ("x2", 0), ("y", 0), ("z", 0)
    out = s.handle(graph("c", spec(x1), spec(x2), spec(y, x1, x2), spec(z, y), wanted=[x1, x2, z]))
    cts = {ct.key: ct for ct in computes(out)}
    s.handle(erred(cts[x1], ValueError("one")))
    s.handle(erred(cts[x2], ValueError("two")))
    assert states(s, x1, x2, y, z) == ["erred"] * 4
    out = s.handle(ev.RetryKeys(sid(), client="c", keys=(z,)))
    assert not of(out, ins.KeyErred)
    assert sorted(ct.key for ct in computes(out)) == [x1, x2]
    assert states(s, y, z) == ["waiting", "waiting"]


def test_erred_dependent_reports_exception_of_root_being_retried():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A))
    x1, x2, y = ("x1", 0), ("x2", 0), ("y", 0)
    out = s.handle(graph("c", spec(x1), spec(x2), spec(y, x1, x2), wanted=[x1, x2, y]))
    cts = {ct.key: ct for ct in computes(out)}
    s.handle(erred(cts[x1], ValueError("one")))
    s.handle(erred(cts[x2], ValueError("two")))
    s.handle(ev.RetryKeys(sid(), client="c", keys=(x1,)))  # y still erred: x2 failed
    assert states(s, y) == ["erred"]
    out = s.handle(ev.ClientDesiresKeys(sid(), client="d", keys=(y,)))
    [ke] = of(out, ins.KeyErred)
    assert isinstance(ke.exception, ValueError)


def test_unwanted_erred_task_is_forgotten():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("side"), wanted=[])))
    s.handle(erred(ct, ValueError()))
    assert s.tasks == {}


def test_lost_worker_keeps_data_of_restricted_dependent():
    """A dependent that must wait for its worker still needs its dependency's data."""
    s = state()
    s.handle(add_worker(A), add_worker(B))
    out = s.handle(graph("c", spec("a", workers=(A,)), spec("b", "a", workers=(B,)), wanted=["b"]))
    ct = one_compute(s.handle(finished(one_compute(out))))
    assert ct.key == "b" and ct.worker == B
    out = s.handle(remove_worker(B))
    assert not freed(out)
    assert states(s, "a", "b") == ["memory", "no-worker"]
    ct = one_compute(s.handle(add_worker(B)))
    assert ct.key == "b" and ct.who_has == {"a": (A,)}


def test_chain_lost_with_its_worker_is_recomputed_in_order():
    """No task is sent while a dependency it needs is gone too."""
    s = state()
    s.handle(add_worker(A))
    out = s.handle(graph("c", spec("a"), spec("b", "a"), spec("x", "b"), wanted=["a", "b", "x"]))
    for _ in range(2):
        out = s.handle(finished(one_compute(out)))
    s.handle(add_worker(B))
    out = s.handle(remove_worker(A))
    assert sorted(i.key for i in of(out, ins.KeyLost)) == ["a", "b"]
    assert [ct.key for ct in computes(out)] == ["a"]
    ct = one_compute(s.handle(finished(one_compute(out))))
    assert ct.key == "b" and ct.who_has == {"a": (B,)}


@pytest.mark.parametrize("retry", ["root", "leaf"])
def test_retry_keys(retry):
    s = state()
    s.handle(add_worker(A))
    a, b = ("a", 0), ("b", 0)
    ct = one_compute(s.handle(graph("c", spec(a), spec(b, a), wanted=[b])))
    s.handle(erred(ct, ValueError("first")))
    assert states(s, a, b) == ["erred", "erred"]
    out = s.handle(ev.RetryKeys(sid(), client="c", keys=(a if retry == "root" else b,)))
    ct = one_compute(out)
    assert ct.key == a and ct.run_id == 2
    assert not of(out, ins.KeyErred)
    assert states(s, b) == ["waiting"]
    ct = one_compute(s.handle(finished(ct)))
    assert ct.key == b
    out = s.handle(finished(ct))
    assert [i.key for i in of(out, ins.KeyInMemory)] == [b]


def test_retry_keys_ignores_keys_not_erred():
    """A retry reruns nothing that has not erred; a key in memory is reported again (the
    client reset its future), and a key the scheduler forgot is answered as lost, so that
    the client's future does not wait for ever."""
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    out = s.handle(ev.RetryKeys(sid(), client="c", keys=("a", "unknown")))
    assert [(type(i), i.key) for i in out] == [(ins.KeyCancelled, "unknown")]
    s.handle(finished(ct))
    out = s.handle(ev.RetryKeys(sid(), client="c", keys=("a",)))
    assert [(type(i), i.key) for i in out] == [(ins.KeyInMemory, "a")]
    assert states(s, "a") == ["memory"]


def test_releasing_erred_dependency_does_not_rerun_it():
    """Dropping the future of a failed task must not run it again for its erred dependents."""
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"), spec("b", "a"))))
    s.handle(erred(ct, ValueError()))
    out = s.handle(release("c", "a"))
    assert not computes(out)
    assert not of(out, ins.KeyErred)
    assert states(s, "b") == ["erred"]
    s.handle(release("c", "b"))
    assert s.tasks == {}


def test_unknown_dependency():
    """A task on a key the scheduler does not know (its future was cancelled) is cancelled
    with its dependents, "lost dependencies", as in dask.distributed; nothing is kept."""
    s = state()
    s.handle(add_worker(A))
    missing = ("gone", 7)
    out = s.handle(graph("c", spec(("t", 0), missing), spec(("u", 0), ("t", 0)), wanted=[("u", 0)]))
    assert not computes(out)
    assert not of(out, ins.FreeKeys) and not of(out, ins.KeyErred)
    [kc] = of(out, ins.KeyCancelled)
    assert (kc.key, kc.reason) == (("u", 0), "lost dependencies")
    assert s.tasks == {}
    out = s.handle(graph("c", spec(("v", 0), missing)))
    [kc] = of(out, ins.KeyCancelled)
    assert (kc.key, kc.reason) == (("v", 0), "lost dependencies")
    # retrying does not help, and does not hang
    out = s.handle(ev.RetryKeys(sid(), client="c", keys=(("v", 0), ("u", 0))))
    assert not computes(out)
    assert {i.key for i in of(out, ins.KeyCancelled)} == {("v", 0), ("u", 0)}
    s.handle(ev.RemoveClient(sid(), client="c"))
    assert s.tasks == {}


def test_unknown_dependency_leaves_the_rest_of_the_graph_running():
    s = state()
    s.handle(add_worker(A))
    out = s.handle(graph("c", spec("ok"), spec("bad", "nope")))
    assert [ct.key for ct in computes(out)] == ["ok"]
    assert [i.key for i in of(out, ins.KeyCancelled)] == ["bad"]
    assert set(s.tasks) == {"ok"}


def test_unknown_wanted_key():
    s = state()
    out = s.handle(ev.UpdateGraph(sid(), client="c", tasks=(), wanted=("nope",)))
    assert [(type(i), i.key) for i in acts(out)] == [(ins.KeyCancelled, "nope")]
    out = s.handle(ev.ClientDesiresKeys(sid(), client="c", keys=("nope",)))
    assert [(type(i), i.key) for i in out] == [(ins.KeyCancelled, "nope")]
    assert s.tasks == {}


# ---------------------------------------------------------------------- worker loss


def test_remove_worker_while_processing():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c", spec(key))))
    other = B if ct.worker == A else A
    out = s.handle(remove_worker(ct.worker))
    ct2 = one_compute(out)
    assert ct2.worker == other and ct2.key == key and ct2.run_id > ct.run_id
    assert not of(out, ins.FreeKeys)  # nothing is sent to a worker that is gone
    assert s.tasks[key].suspicious == 1
    out = s.handle(finished(ct))  # the dead worker's report is ignored
    assert out == []
    assert states(s, key) == ["processing"]


def test_remove_worker_holding_data_a_dependent_needs():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    a, c, b = ("a", 0), ("c", 0), ("b", 0)
    out = s.handle(
        graph(
            "cl",
            spec(a, workers=(A,), allow_other_workers=True),
            spec(c, workers=(B,)),
            spec(b, a, c),
            wanted=[a, b],
        )
    )
    cts = {ct.key: ct for ct in computes(out)}
    assert (cts[a].worker, cts[c].worker) == (A, B)
    ct_a = cts[a]
    s.handle(finished(ct_a))
    assert s.tasks[a].who_has == (s.workers[A],)
    holder = A

    out = s.handle(remove_worker(holder))
    assert [(i.client, i.key) for i in of(out, ins.KeyLost)] == [("cl", a)]
    assert states(s, b) == ["waiting"]
    assert s.tasks[b].waiting_on == {s.tasks[a], s.tasks[c]}
    ct_a2 = one_compute(out)
    assert ct_a2.key == a and ct_a2.run_id > ct_a.run_id
    assert ct_a2.worker != holder
    out = s.handle(finished(ct_a2))
    assert [(i.client, i.key) for i in of(out, ins.KeyInMemory)] == [("cl", a)]


def test_remove_worker_holding_data_of_a_processing_dependent():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("a"), spec("b", "a", workers=(B,)), wanted=["b"])))
    assert ct.worker == A
    ct_b = one_compute(s.handle(finished(ct)))
    assert ct_b.worker == B and ct_b.who_has == {"a": (A,)}
    out = s.handle(remove_worker(A))
    assert (B, "b") in freed(out)  # b cannot get a: it is stopped and waits again
    ct = one_compute(out)
    assert ct.key == "a" and ct.worker == B
    assert states(s, "b") == ["waiting"]
    ct_b2 = one_compute(s.handle(finished(ct)))
    assert ct_b2.key == "b" and ct_b2.run_id > ct_b.run_id
    out = s.handle(finished(ct_b))  # the stopped run reports late: ignored
    assert not of(out, ins.KeyInMemory)
    assert states(s, "b") == ["processing"]


def test_killed_worker():
    s = state(allowed_failures=2)
    key = ("x-abc", 0, 1)
    s.handle(add_worker("tcp://w0"))
    ct = one_compute(s.handle(graph("c", spec(key))))
    for i in range(1, 3):
        out = s.handle(remove_worker(ct.worker))
        assert not of(out, ins.KeyErred)
        ct = one_compute(s.handle(add_worker(f"tcp://w{i}")))
        assert ct.key == key
    out = s.handle(remove_worker(ct.worker))
    [ke] = of(out, ins.KeyErred)
    assert isinstance(ke.exception, KilledWorker)
    assert ke.exception.task == key
    assert ke.exception.last_worker == "tcp://w2"
    assert repr(key) in str(ke.exception) and "tcp://w2" in str(ke.exception)
    assert states(s, key) == ["erred"]
    assert not computes(s.handle(add_worker("tcp://w3")))


def test_killed_worker_blames_dependents():
    s = state(allowed_failures=0)
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("a"), spec("b", "a"), wanted=["b"])))
    out = s.handle(remove_worker(A))
    [ke] = of(out, ins.KeyErred)
    assert ke.key == "b" and isinstance(ke.exception, KilledWorker)
    assert ke.exception.task == "a"
    assert ct.key == "a"


def test_safe_removal_does_not_count():
    s = state(allowed_failures=0)
    key = ("x", 0)
    s.handle(add_worker("tcp://w0"))
    ct = one_compute(s.handle(graph("c", spec(key))))
    for i in range(1, 6):
        out = s.handle(remove_worker(ct.worker, safe=True))
        assert not of(out, ins.KeyErred)
        ct = one_compute(s.handle(add_worker(f"tcp://w{i}")))
    assert s.tasks[key].suspicious == 0
    out = s.handle(finished(ct))
    assert of(out, ins.KeyInMemory)


def test_remove_unknown_worker_is_harmless():
    s = state()
    assert s.handle(remove_worker("tcp://nobody")) == []


def test_missing_data():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("a"))))
    other = B if ct.worker == A else A
    s.handle(finished(ct))
    out = s.handle(ev.AddKeys(sid(), worker=other, keys=("a", "junk")))
    assert out == [ins.FreeKeys(out[0].stimulus_id, ("junk",), worker=other)]
    assert {ws.address for ws in s.tasks["a"].who_has} == {A, B}
    out = s.handle(ev.MissingData(sid(), worker=other, key="a", errant_worker=ct.worker))
    assert out == [] and {ws.address for ws in s.tasks["a"].who_has} == {other}
    out = s.handle(ev.MissingData(sid(), worker=ct.worker, key="a", errant_worker=other))
    assert [i.key for i in of(out, ins.KeyLost)] == ["a"]
    assert one_compute(out).key == "a"


# ---------------------------------------------------------------------- stale reports


def test_stale_run_id_on_another_worker():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    key = ("x", 0)
    ct1 = one_compute(s.handle(graph("c", spec(key, workers=(A,)))))
    assert ct1.worker == A
    s.handle(release("c", key))
    ct2 = one_compute(s.handle(graph("c", spec(key, workers=(B,)))))
    assert ct2.worker == B and ct2.run_id > ct1.run_id
    stim = sid()
    out = s.handle(ev.TaskFinished(stim, worker=A, key=key, run_id=ct1.run_id, nbytes=1))
    assert out == [ins.FreeKeys(stim, (key,), worker=A)]
    assert states(s, key) == ["processing"]
    assert s.tasks[key].processing_on.address == B


def test_stale_run_id_on_the_same_worker_is_ignored():
    """The worker is running the key again: freeing it there would lose the new run."""
    s = state()
    s.handle(add_worker(A))
    key = ("x", 0)
    ct1 = one_compute(s.handle(graph("c", spec(key))))
    s.handle(release("c", key))
    ct2 = one_compute(s.handle(graph("c", spec(key))))
    assert ct2.worker == A and ct2.run_id > ct1.run_id
    out = s.handle(finished(ct1))
    assert out == []
    assert states(s, key) == ["processing"]
    out = s.handle(finished(ct2))
    assert of(out, ins.KeyInMemory)


def test_report_from_wrong_worker():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c", spec(key, workers=(A,)))))
    stim = sid()
    out = s.handle(ev.TaskFinished(stim, worker=B, key=key, run_id=ct.run_id, nbytes=1))
    assert out == [ins.FreeKeys(stim, (key,), worker=B)]
    assert states(s, key) == ["processing"]
    out = s.handle(erred(ct, ValueError(), worker=B))
    assert out == []
    out = s.handle(ev.LongRunning(sid(), worker=B, key=key, run_id=ct.run_id))
    assert out == [] and not s.workers[B].long_running
    assert s.handle(ev.TaskRescheduled(sid(), worker=B, key=key, run_id=ct.run_id)) == []
    assert states(s, key) == ["processing"]


def test_stale_error_is_ignored():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("x"))))
    s.handle(finished(ct))
    assert s.handle(erred(ct, ValueError())) == []
    assert states(s, "x") == ["memory"]


def test_stale_finished_report_is_no_replica():
    """A report of a run the scheduler did not give that worker (or ended already) is
    freed there: the worker drops that result, so it must not count as a replica."""
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c", spec(key, workers=(A,)))))
    s.handle(finished(ct, nbytes=50))
    out = s.handle(finished(ct, worker=B, nbytes=50))
    assert freed(out) == {(B, key)}
    assert {ws.address for ws in s.tasks[key].who_has} == {A}
    assert s.workers[B].nbytes == 0
    out = s.handle(finished(ct, nbytes=50))  # the same report twice changes nothing
    assert out == [] and s.workers[A].nbytes == 50
    out = s.handle(release("c", key))
    assert freed(out) == {(A, key)}


def test_report_for_forgotten_key():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("x"))))
    s.handle(release("c", "x"))
    assert s.tasks == {}
    out = s.handle(finished(ct))
    assert freed(out) == {(A, "x")}
    assert s.tasks == {}
    assert s.handle(finished(ct, worker="tcp://unknown")) == []


# ---------------------------------------------------------------------- restrictions


def _three_workers(s):
    s.handle(
        add_worker(A, name="alpha", host="10.0.0.1"),
        add_worker(B, name="beta", host="10.0.0.2", resources={"GPU": 2}),
        add_worker(C, name="gamma", host="10.0.0.3"),
    )


@pytest.mark.parametrize(
    "restriction, expected",
    [((B,), B), (("beta",), B), (("10.0.0.3",), C), (("gamma", "alpha"), {A, C})],
)
def test_worker_restrictions(restriction, expected):
    s = state(worker_saturation=math.inf)
    _three_workers(s)
    out = s.handle(graph("c", *[spec(("t", i), workers=restriction) for i in range(4)]))
    cts = computes(out)
    assert len(cts) == 4
    expected = {expected} if isinstance(expected, str) else expected
    assert {ct.worker for ct in cts} == expected


def test_restricted_tasks_are_not_queued():
    s = state(worker_saturation=1.0)
    _three_workers(s)
    out = s.handle(graph("c", *[spec(("t", i), workers=(A,)) for i in range(3)]))
    assert [ct.worker for ct in computes(out)] == [A, A, A]


def test_resource_restrictions():
    s = state(worker_saturation=math.inf)
    _three_workers(s)
    out = s.handle(graph("c", spec("gpu", resources={"GPU": 1}), spec("big", resources={"GPU": 3})))
    ct = one_compute(out)
    assert ct.key == "gpu" and ct.worker == B and ct.resources == {"GPU": 1}
    assert states(s, "big") == ["no-worker"]
    out = s.handle(add_worker("tcp://gpus", resources={"GPU": 4}))
    ct = one_compute(out)
    assert ct.key == "big" and ct.worker == "tcp://gpus"


def test_allow_other_workers():
    s = state(worker_saturation=math.inf)
    _three_workers(s)
    out = s.handle(graph("c", spec("t", workers=("tcp://nowhere",), allow_other_workers=True)))
    assert one_compute(out).worker in {A, B, C}
    out = s.handle(graph("c", spec("u", workers=("beta",), allow_other_workers=True)))
    assert one_compute(out).worker == B  # the preferred worker when it exists


def test_restricted_to_missing_worker_waits():
    s = state()
    s.handle(add_worker(A, name="alpha"))
    out = s.handle(graph("c", spec(("t", 0), workers=(C,)), spec(("u", 0), workers=("gamma",))))
    assert not computes(out)
    assert states(s, ("t", 0), ("u", 0)) == ["no-worker", "no-worker"]
    out = s.handle(add_worker(B))
    assert not computes(out)
    out = s.handle(add_worker(C, name="gamma"))
    cts = computes(out)
    assert sorted(ct.key for ct in cts) == [("t", 0), ("u", 0)]
    assert {ct.worker for ct in cts} == {C}


def test_restricted_worker_leaves():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("t", workers=(B,)))))
    assert ct.worker == B
    out = s.handle(remove_worker(B))
    assert not computes(out)
    assert states(s, "t") == ["no-worker"]
    assert one_compute(s.handle(add_worker(B))).worker == B


# ---------------------------------------------------------------------- clients


def test_two_clients_want_the_same_key():
    s = state()
    s.handle(add_worker(A))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c1", spec(key))))
    out = s.handle(graph("c2", spec(key)))
    assert not computes(out)  # already being computed
    out = s.handle(finished(ct))
    assert sorted(i.client for i in of(out, ins.KeyInMemory)) == ["c1", "c2"]
    out = s.handle(ev.ClientDesiresKeys(sid(), client="c3", keys=(key,)))
    assert [(i.client, i.workers) for i in of(out, ins.KeyInMemory)] == [("c3", (A,))]
    assert s.handle(release("c1", key)) == []
    assert s.handle(release("c3", key)) == []
    assert states(s, key) == ["memory"]
    out = s.handle(release("c2", key))
    assert freed(out) == {(A, key)}
    assert s.tasks == {}


def test_release_of_key_not_wanted_is_harmless():
    s = state()
    s.handle(add_worker(A))
    s.handle(graph("c1", spec("x")))
    assert s.handle(release("c2", "x"), release("c1", "zzz")) == []
    assert states(s, "x") == ["processing"]


def test_cancel_keys():
    s = state()
    s.handle(add_worker(A))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c1", spec(key))))
    s.handle(ev.ClientDesiresKeys(sid(), client="c2", keys=(key,)))
    out = s.handle(ev.CancelKeys(sid(), client="c1", keys=(key,)))
    assert [(type(i), i.client, i.key) for i in out] == [(ins.KeyCancelled, "c1", key)]
    assert states(s, key) == ["processing"]
    out = s.handle(finished(ct))
    assert [i.client for i in of(out, ins.KeyInMemory)] == ["c2"]


def test_cancel_keys_force():
    s = state()
    s.handle(add_worker(A))
    key = ("x", 0)
    ct = one_compute(s.handle(graph("c1", spec(key))))
    s.handle(ev.ClientDesiresKeys(sid(), client="c2", keys=(key,)))
    out = s.handle(ev.CancelKeys(sid(), client="c1", keys=(key,), force=True))
    assert sorted(i.client for i in of(out, ins.KeyCancelled)) == ["c1", "c2"]
    assert all(i.key == key for i in of(out, ins.KeyCancelled))
    assert freed(out) == {(A, key)}
    assert s.tasks == {}
    assert freed(s.handle(finished(ct))) == {(A, key)}


def test_cancel_queued_and_waiting():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A))
    out = s.handle(
        graph(
            "c",
            spec("a", priority=(0,)),
            spec("b", priority=(1,)),
            spec("x", "a", priority=(2,)),
            wanted=["b", "x"],
        )
    )
    ct = one_compute(out)
    assert states(s, "a", "b", "x") == ["processing", "queued", "waiting"]
    out = s.handle(ev.CancelKeys(sid(), client="c", keys=("b", "x")))
    assert sorted(i.key for i in of(out, ins.KeyCancelled)) == ["b", "x"]
    assert freed(out) == {(A, "a")}  # nobody needs a any more
    assert s.tasks == {}
    out = s.handle(finished(ct))
    assert not computes(out)
    assert s.tasks == {}


def test_remove_client_releases_everything():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A))
    out = s.handle(graph("c", spec("a"), spec("b", "a"), spec("q")))
    cts = {ct.key: ct for ct in computes(out)}
    s.handle(finished(cts["a"]))
    s.handle(graph("other", spec("z")))
    out = s.handle(ev.RemoveClient(sid(), client="c"))
    assert freed(out) == {(A, "a"), (A, "b"), (A, "q")}
    assert set(s.tasks) == {"z"}
    assert "c" not in s.clients
    assert s.handle(ev.RemoveClient(sid(), client="c")) == []


# ---------------------------------------------------------------------- slots


def test_long_running_frees_a_slot():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A))
    out = s.handle(graph("c", spec("lr", priority=(0,)), spec("q", priority=(1,))))
    ct = one_compute(out)
    assert ct.key == "lr"
    out = s.handle(ev.LongRunning(sid(), worker=A, key="lr", run_id=ct.run_id))
    ct_q = one_compute(out)
    assert ct_q.key == "q"
    assert s.workers[A].occupied == 1
    out = s.handle(finished(ct))  # the seceded task ends: no slot was taken by it
    assert not computes(out)
    assert not s.workers[A].long_running


def test_paused_worker_gets_no_new_tasks():
    s = state(worker_saturation=1.0)
    s.handle(add_worker(A, name="alpha"))
    s.handle(ev.WorkerStatusChange(sid(), worker=A, status="paused"))
    out = s.handle(
        graph(
            "c",
            spec("r0", priority=(0,)),
            spec("r1", priority=(1,)),
            spec("pinned", workers=("alpha",)),
        )
    )
    assert not computes(out)
    assert states(s, "pinned") == ["no-worker"]
    out = s.handle(ev.WorkerStatusChange(sid(), worker=A, status="running"))
    assert sorted(ct.key for ct in computes(out)) == ["pinned", "r0"]
    assert s.handle(ev.WorkerStatusChange(sid(), worker="tcp://nobody", status="paused")) == []


def test_paused_worker_keeps_its_tasks_and_data():
    s = state(worker_saturation=math.inf)
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("a", workers=(A,)))))
    s.handle(ev.WorkerStatusChange(sid(), worker=A, status="paused"))
    out = s.handle(finished(ct))
    assert of(out, ins.KeyInMemory)
    ct = one_compute(s.handle(graph("c", spec("b", "a"))))
    assert ct.worker == B and ct.who_has == {"a": (A,)}  # not the paused holder


# ---------------------------------------------------------------------- scatter


def test_scatter():
    s = state()
    s.handle(add_worker(A))
    key = ("data", 0)
    out = s.handle(
        ev.ScatterData(sid(), client="c", who_has={key: (A,)}, nbytes={key: 100}, types={})
    )
    assert out == []
    assert states(s, key) == ["memory"]
    assert s.workers[A].nbytes == 100
    ct = one_compute(s.handle(graph("c", spec("f", key))))
    assert ct.who_has == {key: (A,)} and ct.nbytes == {key: 100}
    s.handle(finished(ct))
    out = s.handle(release("c", key))
    assert freed(out) == {(A, key)}
    assert states(s, key) == ["released"]  # lineage for f, but it cannot be recomputed


def test_scattered_data_lost():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    key = ("data", 0)
    s.handle(ev.ScatterData(sid(), client="c", who_has={key: (A,)}, nbytes={key: 100}))
    s.handle(graph("c", spec("f", key, workers=(A,))))  # only A may run f
    out = s.handle(remove_worker(A))
    errs = {i.key: i for i in of(out, ins.KeyErred)}
    assert set(errs) == {key, "f"}
    assert isinstance(errs[key].exception, FutureLostError)
    assert errs[key].exception.key == key
    assert errs["f"].exception is errs[key].exception
    assert not computes(out)
    s.handle(ev.RemoveClient(sid(), client="c"))
    assert s.tasks == {}


def test_scattered_data_with_replica_survives():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    s.handle(ev.ScatterData(sid(), client="c", who_has={"d": (A, B)}, nbytes={"d": 1}))
    out = s.handle(remove_worker(A))
    assert acts(out) == []
    assert states(s, "d") == ["memory"]


def test_scatter_again_after_loss():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    key = ("data", 0)
    s.handle(ev.ScatterData(sid(), client="c", who_has={key: (A,)}, nbytes={key: 1}))
    s.handle(graph("c", spec(("f", 0), key)))
    s.handle(remove_worker(A))
    assert states(s, key, ("f", 0)) == ["erred", "erred"]
    out = s.handle(ev.ScatterData(sid(), client="c", who_has={key: (B,)}, nbytes={key: 1}))
    assert states(s, key) == ["memory"]
    ct = one_compute(out)  # the dependent that erred for the lost data runs again
    assert ct.key == ("f", 0) and ct.who_has == {key: (B,)}


def test_scatter_to_unknown_worker():
    s = state()
    key = ("data", 0)
    out = s.handle(ev.ScatterData(sid(), client="c", who_has={key: ("tcp://gone",)}, nbytes={}))
    [ke] = of(out, ins.KeyErred)
    assert ke.key == key and isinstance(ke.exception, FutureLostError)
    s.handle(release("c", key))
    assert s.tasks == {}


# ---------------------------------------------------------------------- purity


_CORE_FILES = (
    "state.py",
    "events.py",
    "instructions.py",
    "records.py",
    "placement.py",
    "validation.py",
    "retirement.py",
)
_FORBIDDEN = ("asyncio", "socket", "selectors", "time", "distributary.comm", "distributary.core")


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("filename", _CORE_FILES)
def test_core_modules_do_no_io(filename):
    path = pathlib.Path(ev.__file__).parent / filename
    for name in _imported_modules(path):
        for bad in _FORBIDDEN:
            assert name != bad and not name.startswith(bad + "."), (filename, name)


# Import the core in a fresh interpreter without running ``distributary/__init__.py``
# (which re-exports the client and the servers): what gets loaded is the core's doing.
_LOAD_CORE = textwrap.dedent(
    """
    import importlib.util, sys, types
    import dask.utils  # a dependency: whatever it loads is not the core's doing
    before = set(sys.modules)
    spec = importlib.util.find_spec("distributary")
    package = types.ModuleType("distributary")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["distributary"] = package
    import distributary.scheduler.state
    print(" ".join(sorted(set(sys.modules) - before)))
    """
)


@functools.cache
def _modules_loaded_by_core() -> frozenset[str]:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_CORE], capture_output=True, text=True, check=True
    )
    return frozenset(out.stdout.split())


def test_importing_the_core_loads_no_server_code():
    loaded = _modules_loaded_by_core()
    assert "distributary.scheduler.state" in loaded
    servers = ("distributary.comm", "distributary.core", "distributary.worker")
    servers += ("distributary.client", "distributary.scheduler.server", "distributary.node")
    assert not {m for m in loaded if m.startswith(servers)}


def test_importing_the_core_loads_no_io_modules():
    io = ("asyncio", "socket", "selectors", "ssl")
    assert not {m for m in _modules_loaded_by_core() if m.split(".")[0] in io}


# Placement in a fresh interpreter: a graph of 200 tasks on 4 workers, finished in
# run order, a worker lost half way.  Records hash by id() and addresses by the
# process's string hash: nothing may depend on the order of a set.
_PLACE_A_GRAPH = textwrap.dedent(
    """
    import itertools, random
    from distributary.scheduler import events as ev
    from distributary.scheduler import instructions as ins
    from distributary.scheduler.state import SchedulerState
    sid = (f"s{i}" for i in itertools.count())
    W = [f"tcp://10.0.0.{i}:1" for i in range(4)]
    s = SchedulerState(worker_saturation=1.0)
    s.handle(*(ev.AddWorker(next(sid), a, nthreads=2, host=a) for a in W))
    # a graph of 60 roots and layers of dependents, each depending on 2 earlier tasks
    rng = random.Random(0)
    specs = []
    for i in range(200):
        deps = () if i < 60 else tuple(f"t{j}" for j in rng.sample(range(i), 2))
        specs.append(ev.TaskSpec(f"t{i}", payload=i, dependencies=deps, priority=(0, i)))
    wanted = tuple(s.key for s in specs[-20:])
    out = s.handle(ev.UpdateGraph(next(sid), tuple(specs), wanted=wanted, client="c"))
    placed = []
    running = {}
    def take(out):
        for i in out:
            if isinstance(i, ins.ComputeTask):
                placed.append((i.key, i.worker)); running[i.run_id] = i
    take(out)
    while running:
        rid = min(running)
        ct = running.pop(rid)
        size = 100 + len(ct.key)
        take(s.handle(ev.TaskFinished(next(sid), ct.key, ct.run_id, nbytes=size, worker=ct.worker)))
        if len(placed) == 100:  # lose a worker midway
            take(s.handle(ev.RemoveWorker(next(sid), W[1])))
            running = {r: c for r, c in running.items() if c.worker != W[1]}
    print(placed)
    """
)


def test_placement_is_the_same_in_every_process():
    def placements(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _PLACE_A_GRAPH], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = placements("1")
    assert first.count("tcp://") > 150  # (it placed the graph)
    for seed in ("2", "3", "4"):
        assert placements(seed) == first


# ---------------------------------------------------------------------- workers leaving


def test_killed_worker_names_the_reason():
    s = state(allowed_failures=0)
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("x"))))
    out = s.handle(ev.RemoveWorker(sid(), ct.worker, reason="exceeded 95% of its memory limit"))
    (err,) = of(out, ins.KeyErred)
    assert isinstance(err.exception, KilledWorker)
    assert err.exception.last_worker == ct.worker
    assert "exceeded 95% of its memory limit" in str(err.exception)


def test_heartbeat_records_memory_and_time():
    s = state()
    s.handle(add_worker(A, memory_limit=1000))
    beat = {"process": 900, "managed": 300, "spilled": 50}
    assert s.handle(ev.WorkerHeartbeat(sid(), worker=A, time=12.5, memory=beat)) == []
    ws = s.workers[A]
    assert ws.last_seen == 12.5
    assert (ws.memory.process, ws.memory.managed, ws.memory.spilled) == (900, 300, 50)
    assert ws.memory.unmanaged == 600
    s.handle(ev.WorkerHeartbeat(sid(), worker="tcp://gone:1", time=13.0, memory=beat))  # ignored


def _retire_setup():
    """Workers A and B; x on A only, y on both A and B; both wanted by client c."""
    s = state()
    s.handle(add_worker(A), add_worker(B))
    x = one_compute(s.handle(graph("c", spec("x", workers=(A,)))))
    s.handle(finished(x, nbytes=100))
    y = one_compute(s.handle(graph("c", spec("y", workers=(A,)))))
    s.handle(finished(y, nbytes=10))
    s.handle(ev.AddKeys(sid(), ("y",), worker=B))
    return s


def test_retire_copies_unique_data_then_is_done():
    s = _retire_setup()
    out = s.handle(ev.RetireWorkers(sid(), (A,)))
    (acquire,) = of(out, ins.AcquireReplicas)
    assert acquire.worker == B
    assert acquire.who_has == {"x": (A,)} and acquire.nbytes == {"x": 100}
    assert s.workers[A].status == "closing_gracefully"
    assert A not in s.idle
    assert not retirement_done(s, A)
    # asked again while the copy is under way: not asked twice, unless replanned
    assert of(s.handle(ev.RetireWorkers(sid(), (A,))), ins.AcquireReplicas) == []
    assert of(s.handle(ev.RetireWorkers(sid(), (A,), replan=True)), ins.AcquireReplicas)
    # no new task goes to the retiring worker
    ct = one_compute(s.handle(graph("c", spec("z"))))
    assert ct.worker == B
    s.handle(finished(ct))
    s.handle(ev.AddKeys(sid(), ("x",), worker=B))
    assert retirement_done(s, A)
    out = s.handle(ev.RemoveWorker(sid(), A, safe=True))
    assert of(out, ins.KeyLost) == [] and computes(out) == []
    assert states(s, "x", "y") == ["memory", "memory"]
    assert s.retiring == {}


def test_retirement_waits_for_running_tasks():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    ct = one_compute(s.handle(graph("c", spec("x", workers=(A,)))))
    s.handle(ev.RetireWorkers(sid(), (A,)))
    assert not retirement_done(s, A)
    out = s.handle(finished(ct))
    assert not retirement_done(s, A)  # its result is only there now
    out = s.handle(ev.RetireWorkers(sid(), (A,)))
    assert of(out, ins.AcquireReplicas)[0].worker == B


def test_cancelled_retirement_runs_tasks_again():
    s = state()
    s.handle(add_worker(A))
    x = one_compute(s.handle(graph("c", spec("x"))))
    s.handle(finished(x))
    assert of(s.handle(ev.RetireWorkers(sid(), (A,))), ins.AcquireReplicas) == []  # nowhere
    out = s.handle(graph("c", spec("y")))
    assert computes(out) == [] and states(s, "y") == ["queued"]
    out = s.handle(ev.CancelRetirement(sid(), (A,)))
    assert one_compute(out).worker == A
    assert s.workers[A].status == "running" and s.retiring == {}


def test_fire_and_forget_leaves_no_record_once_its_tasks_finished():
    s = state()
    s.handle(add_worker(A))
    ct = one_compute(s.handle(graph("c", spec("x"))))
    s.handle(ev.FireAndForget(sid(), ("x",), client="c"))
    s.handle(release("c", "x"))
    assert "fire-and-forget" in s.clients and states(s, "x") == ["processing"]
    s.handle(finished(ct))
    assert set(s.clients) == {"c"} and s.tasks == {}
    # a task that finished already is not kept for fire-and-forget
    s.handle(finished(one_compute(s.handle(graph("c", spec("y"))))))
    s.handle(ev.FireAndForget(sid(), ("y",), client="c"))
    s.handle(release("c", "y"))
    assert set(s.clients) == {"c"} and s.tasks == {}


def test_ticks_tell_when_a_retirement_is_done():
    s = _retire_setup()
    s.handle(ev.RetireWorkers(sid(), (A,), time=100.0))
    assert of(s.handle(ev.Tick(sid(), 100.5)), ins.WorkerRetired) == []  # x not copied yet
    s.handle(ev.AddKeys(sid(), ("x",), worker=B))
    (retired,) = of(s.handle(ev.Tick(sid(), 100.6)), ins.WorkerRetired)
    assert retired.address == A and s.retiring == {}
    assert s.workers[A].status == "closing_gracefully"  # (until the server removes it)
    assert s.handle(ev.Tick(sid(), 100.7)) == []  # told once


def test_ticks_ask_again_for_copies_not_made():
    s = _retire_setup()
    s.handle(ev.RetireWorkers(sid(), (A,), time=100.0))
    assert of(s.handle(ev.Tick(sid(), 101.0)), ins.AcquireReplicas) == []
    (again,) = of(s.handle(ev.Tick(sid(), 102.5)), ins.AcquireReplicas)
    assert again.worker == B and again.who_has == {"x": (A,)}
    assert of(s.handle(ev.Tick(sid(), 103.0)), ins.AcquireReplicas) == []  # planned anew


def test_a_retirement_past_its_deadline_is_given_up():
    s = _retire_setup()
    s.handle(ev.RetireWorkers(sid(), (A,), time=100.0, deadline=101.0))
    assert s.handle(ev.Tick(sid(), 100.9)) == []
    (failed,) = of(s.handle(ev.Tick(sid(), 101.1)), ins.RetirementFailed)
    assert failed.addresses == (A,) and failed.reason == "timed out"
    assert s.workers[A].status == "running" and s.retiring == {}


def test_a_retirement_with_nowhere_to_go_is_given_up_at_once():
    s = state()
    s.handle(add_worker(A))
    s.handle(finished(one_compute(s.handle(graph("c", spec("x"))))))
    s.handle(ev.RetireWorkers(sid(), (A,), time=100.0))
    (failed,) = of(s.handle(ev.Tick(sid(), 100.0)), ins.RetirementFailed)
    assert "no other running worker" in failed.reason
    assert s.workers[A].status == "running"


def test_a_retiring_worker_that_leaves_is_retired():
    s = _retire_setup()
    s.handle(ev.RetireWorkers(sid(), (A,), time=100.0))
    (retired,) = of(s.handle(ev.RemoveWorker(sid(), A)), ins.WorkerRetired)
    assert retired.address == A and s.retiring == {}


def test_ticks_tell_of_silent_workers():
    s = state(worker_ttl=10.0)
    s.handle(add_worker(A, time=100.0), add_worker(B, time=105.0))
    assert s.handle(ev.Tick(sid(), 110.0)) == []
    (silent,) = s.handle(ev.Tick(sid(), 112.0))
    assert silent == ins.WorkerSilent(silent.stimulus_id, A, 12.0)
    s.handle(ev.WorkerHeartbeat(sid(), worker=A, time=112.0))
    assert s.handle(ev.Tick(sid(), 114.0)) == []


def test_ticks_tell_when_the_scheduler_is_idle():
    s = state(idle_timeout=5.0)
    s.handle(add_worker(A))
    assert s.handle(ev.Tick(sid(), 100.0)) == []
    s.handle(ev.AddClient(sid(), "c"))
    assert s.handle(ev.Tick(sid(), 110.0)) == []  # a client: busy
    s.handle(ev.RemoveClient(sid(), "c"))
    assert s.handle(ev.Tick(sid(), 114.0)) == []
    (idle,) = s.handle(ev.Tick(sid(), 116.0))
    assert isinstance(idle, ins.SchedulerIdle) and idle.idle_for == 6.0


def test_retiring_worker_status_is_not_undone_by_the_worker():
    s = state()
    s.handle(add_worker(A), add_worker(B))
    s.handle(ev.RetireWorkers(sid(), (A,)))
    s.handle(ev.WorkerStatusChange(sid(), "running", worker=A))
    assert s.workers[A].status == "closing_gracefully"
    s.handle(ev.WorkerStatusChange(sid(), "closing", worker=B))  # not the worker's to say
    assert s.workers[B].status == "running"


def test_restart_forgets_everything_and_tells_clients():
    s = state()
    s.handle(add_worker(A), add_worker(B), ev.AddClient(sid(), "c2"))
    x = one_compute(s.handle(graph("c", spec("x"))))
    s.handle(finished(x))
    s.handle(graph("c", spec("y", "x"), spec("q1"), spec("q2"), spec("q3")))
    out = s.handle(ev.Restart(sid()))
    assert {i.client for i in of(out, ins.Restarted)} == {"c", "c2"}
    assert computes(out) == [] and freed(out) == set()
    assert s.tasks == {} and not s.idle and not s.unrunnable
    for ws in s.workers.values():
        assert ws.status == "closing" and not ws.processing and not ws.has_what
        assert ws.nbytes == 0
    # late reports from the old workers are harmless; new work waits for new workers
    s.handle(finished(x))
    assert states(s, "x") == ["forgotten"]
    assert computes(s.handle(graph("c", spec("x")))) == []
    s.handle(remove_worker(A), remove_worker(B))
    assert one_compute(s.handle(add_worker(C))).key == "x"


# ---------------------------------------------------------------------- randomized


_CLIENTS = ("c1", "c2", "c3")
_NWORKERS = 4  # worker i is named w{i} on host 10.1.0.{i}; the even ones have 2 GPUs


class _Cluster:
    """Plays the workers and the clients around a SchedulerState, at random."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.s = SchedulerState(
            validate=True,
            allowed_failures=rng.choice([0, 1, 3]),
            worker_saturation=rng.choice([1.0, 1.1, 2.0, math.inf]),
        )
        self.ports = itertools.count(5000)
        self.live: dict[int, str] = {}  # worker index -> address
        self.running: dict[tuple, int] = {}  # (address, key) -> run_id the worker runs
        self.late: list[tuple] = []  # reports held back: (address, key, run_id)
        self.wanted: dict[str, set] = {c: set() for c in _CLIENTS}
        self.last: dict[tuple, type] = {}  # (client, key) -> last instruction type
        self.graphs = itertools.count()
        self.acquiring: list[tuple] = []  # (worker, key) copies asked for a retirement
        self.retired: list[str] = []  # workers the state says may leave
        self.steals: list[tuple] = []  # steal requests not answered: (address, key, run_id)
        self.clock = 0.0

    # -- plumbing

    def handle(self, event: ev.SchedulerEvent) -> list:
        out = self.s.handle(event)
        for i in out:
            self.receive(i)
        self.check()
        return out

    def receive(self, i: ins.SchedulerInstruction) -> None:
        s = self.s
        if isinstance(i, ins.ComputeTask):
            assert i.worker in s.workers and s.workers[i.worker].status == "running", i
            assert all(i.who_has.values()), i  # every dependency is somewhere
            self.running[(i.worker, i.key)] = i.run_id
        elif isinstance(i, ins.FreeKeys):
            for key in i.keys:
                run_id = self.running.pop((i.worker, key), None)
                if run_id is not None and self.rng.random() < 0.3:
                    self.late.append((i.worker, key, run_id))  # it finished meanwhile
        elif isinstance(i, ins.StealRequest):
            assert self.running.get((i.worker, i.key)) == i.run_id, i  # asked of its worker
            thief = s.stealing.in_flight[s.tasks[i.key]][0]
            assert thief.status == "running" and thief is not s.workers[i.worker], i
            self.steals.append((i.worker, i.key, i.run_id))
        elif isinstance(i, ins.AcquireReplicas):
            assert s.workers[i.worker].status == "running", i
            self.acquiring.extend((i.worker, key) for key in i.who_has)
        elif isinstance(i, ins.KeyCancelled):
            self.wanted[i.client].discard(i.key)
            self.last[(i.client, i.key)] = type(i)
        elif isinstance(i, ins.WorkerRetired):
            assert i.address not in s.retiring, i
            if i.address in s.workers:
                self.retired.append(i.address)
        elif isinstance(i, ins.RetirementFailed):
            assert all(s.workers[a].status == "running" for a in i.addresses), i
        elif isinstance(i, ins.ClientRemoved):
            assert i.client not in s.clients, i
        elif isinstance(i, ins.Notice):
            pass  # (what happened, for the server's plugins)
        else:
            assert i.key in self.wanted[i.client], i  # only clients that want a key hear of it
            if isinstance(i, ins.KeyInMemory):
                assert i.workers and all(w in s.workers for w in i.workers), i
            elif isinstance(i, ins.KeyErred):
                assert i.exception is not None, i
            self.last[(i.client, i.key)] = type(i)

    def check(self) -> None:
        s = self.s
        for key, ts in s.tasks.items():
            if ts.state == "processing":  # the worker knows it is running this
                assert self.running.get((ts.processing_on.address, key)) == ts.run_id, ts
            elif ts.state == "memory":
                assert all(ws.address in s.workers for ws in ts.who_has), ts
            elif ts.state == "queued":  # it waits for room that no worker has
                assert ts.is_queueable, ts
                assert not s.idle, (ts, list(s.idle.values()))
        for ws in s.workers.values():
            assert ws.long_running <= ws.processing, ws

    # -- the workers

    def add_worker(self, index: int) -> None:
        address = f"tcp://10.1.0.{index}:{next(self.ports)}"
        self.live[index] = address
        self.handle(
            ev.AddWorker(
                sid(),
                address=address,
                nthreads=self.rng.choice([1, 1, 2, 4]),
                name=f"w{index}",
                host=f"10.1.0.{index}",
                resources={"GPU": 2} if index % 2 == 0 else {},
            )
        )

    def remove_worker(self) -> None:
        index = self.rng.choice(sorted(self.live))
        address = self.live.pop(index)
        for w, key in [k for k in self.running if k[0] == address]:
            run_id = self.running.pop((w, key))
            if self.rng.random() < 0.2:
                self.late.append((w, key, run_id))  # from a worker that is gone
        self.handle(remove_worker(address, safe=self.rng.random() < 0.3))

    def report(self) -> None:
        rng = self.rng
        (address, key), run_id = rng.choice(sorted(self.running.items(), key=repr))
        roll = rng.random()
        if roll < 0.05:  # a long-running task keeps running
            self.handle(ev.LongRunning(sid(), worker=address, key=key, run_id=run_id))
            return
        if roll < 0.08 and len(self.live) > 1:  # a report from the wrong worker
            other = rng.choice([a for a in self.live.values() if a != address])
            self.handle(ev.TaskFinished(sid(), worker=other, key=key, run_id=run_id, nbytes=1))
            return
        del self.running[(address, key)]
        if roll < 0.18:
            exc = ValueError(f"failed {key!r}")
            self.handle(
                ev.TaskErred(
                    sid(), worker=address, key=key, run_id=run_id, exception=exc, traceback=None
                )
            )
        elif roll < 0.21:
            self.handle(ev.TaskRescheduled(sid(), worker=address, key=key, run_id=run_id))
        else:
            nbytes = rng.choice([8, 1000, 10**6, 10**8])
            self.handle(
                ev.TaskFinished(sid(), worker=address, key=key, run_id=run_id, nbytes=nbytes)
            )

    def answer_steal(self) -> None:
        """A worker answers a steal request: it gives the task back if it has not
        started it (still that run, and at random)."""
        address, key, run_id = self.steals.pop(self.rng.randrange(len(self.steals)))
        accepted = self.running.get((address, key)) == run_id and self.rng.random() < 0.7
        if accepted:
            del self.running[(address, key)]
        self.handle(ev.StealResponse(sid(), key, run_id, accepted, worker=address))

    def report_late(self) -> None:
        address, key, run_id = self.late.pop(self.rng.randrange(len(self.late)))
        self.handle(ev.TaskFinished(sid(), worker=address, key=key, run_id=run_id, nbytes=8))

    def pause_or_resume(self) -> None:
        address = self.live[self.rng.choice(sorted(self.live))]
        status = "paused" if self.s.workers[address].status == "running" else "running"
        self.handle(ev.WorkerStatusChange(sid(), worker=address, status=status))

    def replicas(self) -> None:
        rng, s = self.rng, self.s
        in_memory = [k for k, ts in s.tasks.items() if ts.state == "memory"]
        address = self.live[rng.choice(sorted(self.live))]
        roll = rng.random()
        if roll < 0.4 or not in_memory:
            keys = rng.sample(in_memory, min(2, len(in_memory))) + [("junk", rng.random())]
            self.handle(ev.AddKeys(sid(), worker=address, keys=tuple(keys)))
            return
        key = rng.choice(in_memory)
        holder = rng.choice(sorted(ws.address for ws in s.tasks[key].who_has))
        self.handle(ev.MissingData(sid(), worker=address, key=key, errant_worker=holder))

    def retire(self) -> None:
        rng, s = self.rng, self.s
        roll = rng.random()
        if roll < 0.4 and self.acquiring:  # a copy arrives
            worker, key = self.acquiring.pop(rng.randrange(len(self.acquiring)))
            if worker in s.workers:
                self.handle(ev.AddKeys(sid(), worker=worker, keys=(key,)))
            return
        if self.retired:  # the server removes a worker the state let go
            address = self.retired.pop(0)
            if address in s.workers:
                index = next(i for i, a in self.live.items() if a == address)
                del self.live[index]
                self.handle(remove_worker(address, safe=True))
            return
        retiring = sorted(s.retiring)
        if roll < 0.6 or not retiring:
            address = self.live[rng.choice(sorted(self.live))]
            self.clock += rng.random()
            replan = rng.random() < 0.3
            deadline = self.clock + 5 if rng.random() < 0.3 else None
            self.handle(ev.RetireWorkers(sid(), (address,), replan, self.clock, deadline))
            return
        address = rng.choice(retiring)
        if retirement_done(s, address) and roll < 0.65:
            index = next(i for i, a in self.live.items() if a == address)
            del self.live[index]
            self.handle(remove_worker(address, safe=True))
        elif roll < 0.7:
            self.handle(ev.CancelRetirement(sid(), (address,)))
        elif roll < 0.85:
            self.handle(ev.RetireWorkers(sid(), (address,)))
        else:
            self.clock += rng.random() * 3
            self.handle(ev.Tick(sid(), self.clock))

    # -- the clients

    def submit(self) -> None:
        rng = self.rng
        client = rng.choice(_CLIENTS)
        g = next(self.graphs)
        held = sorted((k for k in self.wanted[client] if k in self.s.tasks), key=repr)
        keys: list = []
        specs = []
        for i in range(rng.randint(1, 30)):
            key = rng.choice([(f"g{g}-x", i), f"g{g}-{i}", (f"g{g}", i, 0)])
            deps = rng.sample(keys, rng.randint(0, min(3, len(keys))))
            if held and rng.random() < 0.15:
                deps.append(rng.choice(held))  # a future from an earlier graph
            if rng.random() < 0.01:
                deps.append(("never-submitted", g))
            kwargs: dict = {"priority": (rng.choice([0, 0, 0, -1, 1]), i)}
            if rng.random() < 0.1:
                kwargs["retries"] = rng.randint(1, 2)
            roll = rng.random()
            if roll < 0.04:
                kwargs["workers"] = (f"w{rng.randrange(_NWORKERS)}",)
            elif roll < 0.06:
                kwargs["workers"] = (f"10.1.0.{rng.randrange(_NWORKERS)}",)
            elif roll < 0.08 and self.live:  # an address may vanish: allow others
                kwargs["workers"] = (rng.choice(sorted(self.live.values())),)
                kwargs["allow_other_workers"] = True
            if "workers" in kwargs and rng.random() < 0.3:
                kwargs["allow_other_workers"] = True
            elif "workers" not in kwargs and rng.random() < 0.05:
                kwargs["resources"] = {"GPU": 1}  # (w1 and w3 have none: never both)
            specs.append(spec(key, *deps, **kwargs))
            keys.append(key)
        wanted = {k for k in keys if rng.random() < 0.5} | {keys[-1]}
        self.wanted[client] |= wanted
        rng.shuffle(specs)
        self.handle(graph(client, *specs, wanted=sorted(wanted, key=repr)))

    def scatter(self) -> None:
        if not self.live:
            return
        client = self.rng.choice(_CLIENTS)
        key = ("scattered", next(self.graphs))
        holders = self.rng.sample(sorted(self.live.values()), min(2, len(self.live)))
        self.wanted[client].add(key)
        self.last[(client, key)] = ins.KeyInMemory  # the client put it there itself
        self.handle(
            ev.ScatterData(sid(), client=client, who_has={key: tuple(holders)}, nbytes={key: 100})
        )

    def client_keys(self) -> tuple[str, list]:
        client = self.rng.choice(_CLIENTS)
        keys = sorted(self.wanted[client], key=repr)
        return client, self.rng.sample(keys, min(len(keys), self.rng.randint(1, 5)))

    def release(self) -> None:
        client, keys = self.client_keys()
        self.wanted[client].difference_update(keys)
        self.handle(release(client, *keys))

    def cancel(self) -> None:
        client, keys = self.client_keys()
        self.wanted[client].difference_update(keys)
        force = self.rng.random() < 0.3
        self.handle(ev.CancelKeys(sid(), client=client, keys=tuple(keys), force=force))

    def desire(self) -> None:
        client = self.rng.choice(_CLIENTS)
        others = sorted(set().union(*self.wanted.values()) - self.wanted[client], key=repr)
        keys = self.rng.sample(others, min(len(others), 3))
        self.wanted[client].update(keys)
        self.handle(ev.ClientDesiresKeys(sid(), client=client, keys=tuple(keys)))

    def retry(self) -> None:
        client = self.rng.choice(_CLIENTS)
        keys = [
            k for k in sorted(self.wanted[client], key=repr) if self.s.tasks[k].state == "erred"
        ]
        if keys:
            self.handle(ev.RetryKeys(sid(), client=client, keys=tuple(keys[:3])))

    def remove_client(self) -> None:
        client = self.rng.choice(_CLIENTS)
        self.wanted[client] = set()
        self.handle(ev.RemoveClient(sid(), client=client))

    # -- the run

    def step(self) -> None:
        rng = self.rng
        actions = [
            (6, self.submit),
            (40 if self.running else 0, self.report),
            (4 if self.late else 0, self.report_late),
            (10 if self.steals else 0, self.answer_steal),
            (4 if len(self.live) < _NWORKERS else 0, self.add_free_worker),
            (3 if self.live else 0, self.remove_worker),
            (3 if self.live else 0, self.pause_or_resume),
            (3 if self.live else 0, self.replicas),
            (3 if self.live else 0, self.retire),
            (9, self.release),
            (2, self.cancel),
            (2, self.desire),
            (3, self.retry),
            (1, self.scatter),
            (0.5, self.remove_client),
        ]
        weights = [w for w, _ in actions]
        action = rng.choices([a for _, a in actions], weights)[0]
        action()

    def add_free_worker(self) -> None:
        self.add_worker(self.rng.choice([i for i in range(_NWORKERS) if i not in self.live]))

    def drain(self) -> None:
        """Bring back every worker, run everything to the end."""
        for index in range(_NWORKERS):
            if index not in self.live:
                self.add_worker(index)
        self.handle(ev.CancelRetirement(sid(), tuple(self.s.retiring)))
        while self.retired:  # let go of: removed, and back afresh
            address = self.retired.pop(0)
            if address in self.s.workers:
                index = next(i for i, a in self.live.items() if a == address)
                self.handle(remove_worker(address, safe=True))
                del self.live[index]
                self.add_worker(index)
        for address in self.live.values():
            if self.s.workers[address].status != "running":
                self.handle(ev.WorkerStatusChange(sid(), worker=address, status="running"))
        for _ in range(100_000):
            while self.late:
                self.report_late()
            while self.steals:
                self.answer_steal()
            if not self.running:
                break
            (address, key), run_id = next(iter(self.running.items()))
            del self.running[(address, key)]
            self.handle(ev.TaskFinished(sid(), worker=address, key=key, run_id=run_id, nbytes=8))
        else:
            raise AssertionError("the work never ends")


@pytest.mark.parametrize("seed", range(10))
def test_random_sequences(seed):
    cluster = _Cluster(seed)
    s = cluster.s
    for _ in range(300):
        cluster.step()
    cluster.drain()

    # every key that is still wanted ended in memory or erred, and its clients know it
    for client, keys in cluster.wanted.items():
        for key in keys:
            ts = s.tasks[key]
            assert ts.state in ("memory", "erred"), (key, ts.state, s.story(key))
            expected = ins.KeyInMemory if ts.state == "memory" else ins.KeyErred
            assert cluster.last[(client, key)] is expected, (client, key, s.story(key))

    # once nobody wants anything, nothing is left
    for client in _CLIENTS:
        if cluster.rng.random() < 0.5:
            cluster.handle(release(client, *sorted(cluster.wanted[client], key=repr)))
        else:
            cluster.handle(ev.RemoveClient(sid(), client=client))
        cluster.wanted[client] = set()
    assert not cluster.running
    assert s.tasks == {}
    assert not s.unrunnable
    for ws in s.workers.values():
        assert not ws.processing and not ws.long_running and not ws.has_what
        assert ws.nbytes == 0
    assert all(not cs.wants_what for cs in s.clients.values())


# ---------------------------------------------------------------------- typed states


def _assigned_states(path: pathlib.Path) -> set[str]:
    """The states the module's code assigns: ``<x>.state = "..."``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "state"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    found.add(value.value)
    return found


def test_every_state_is_a_declared_task_state():
    from typing import get_args

    from distributary.scheduler import records

    declared = set(get_args(records.TaskState))
    s = state()
    assert {a for a, _ in s._table} | {b for _, b in s._table} <= declared
    package = pathlib.Path(records.__file__).parent
    assert len(_assigned_states(package / "state.py")) >= 6
    for name in ("state.py", "records.py", "graph.py"):
        assert _assigned_states(package / name) <= declared, name


def test_an_impossible_transition_names_the_key_and_its_story():
    import pickle

    from distributary.transitions import InvalidTransition

    s = state()
    s.handle(graph("c", spec("x")))  # no worker: it waits
    assert states(s, "x") == ["no-worker"]
    with pytest.raises(InvalidTransition) as info:
        s._run({"x": "memory"}, "stim-bad")  # (no path leads from released to memory)
    exc = info.value
    assert (exc.key, exc.start, exc.finish) == ("x", "released", "memory")
    assert [(a, b) for _, a, b, _ in exc.story][-2:] == [
        ("waiting", "no-worker"),
        ("no-worker", "released"),
    ]
    assert "'x': no transition released -> memory" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert (again.key, again.start, again.finish, again.story) == (
        exc.key,
        exc.start,
        exc.finish,
        exc.story,
    )
