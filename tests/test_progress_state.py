"""Unit tests of the progress counters (scheduler/progress_state.py) and of the progress
extension on a scheduler that is not started: no event loop, no network.

The counters are fed the transitions of a real ``SchedulerState``; their counts are
checked against the state's own records after every step, by hand and through the
randomized model cluster of the key-lifecycle test (restarts, lost workers, cancels,
retries, work stealing).
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter

import pytest

from distributary import Scheduler
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.progress_state import (
    STATES,
    KeySetProgress,
    PrefixCounts,
    group_name,
)
from distributary.scheduler.state import SchedulerState

sys.path.insert(0, os.path.dirname(__file__))
from model_cluster import STEPS, ModelCluster  # noqa: E402
from test_key_lifecycle_model import actions_for  # noqa: E402
from test_scheduler_state import (  # noqa: E402
    add_worker,
    computes,
    erred,
    finished,
    graph,
    release,
    sid,
    spec,
)

SEEDS = int(os.environ.get("PROGRESS_MODEL_SEEDS", "300"))


def expected_counts(s: SchedulerState) -> dict[str, dict[str, int]]:
    """The tasks of ``s`` by prefix and state, read from its records."""
    found: dict[str, Counter] = {}
    for ts in s.tasks.values():
        found.setdefault(ts.prefix, Counter())[ts.state] += 1
    return {prefix: dict(counter) for prefix, counter in found.items()}


def active(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The non-zero counts of tasks the scheduler has (not ``forgotten``/``all``)."""
    out = {}
    for prefix, row in counts.items():
        kept = {state: n for state, n in row.items() if state in STATES and n}
        if kept:
            out[prefix] = kept
    return out


def watched_state() -> tuple[SchedulerState, PrefixCounts]:
    s = SchedulerState(validate=True, worker_saturation=1.0)
    counter = PrefixCounts(s.tasks)
    s.observers.append(counter.moved)
    return s, counter


def run_all(s: SchedulerState, out: list, check=lambda: True) -> None:
    """Finish every task sent to a worker, and those that follow; ``check()`` after each."""
    while cts := computes(out):
        out = []
        for ct in cts:
            out += s.handle(finished(ct))
            assert check()


# ---------------------------------------------------------------------- counts per prefix


def test_counts_follow_a_map_through_every_state():
    s, counter = watched_state()
    s.handle(ev.AddClient(sid(), "c"))
    out = s.handle(graph("c", *(spec(f"inc-{i}") for i in range(4)), spec("sum-0", "inc-0")))
    assert active(counter.counts()) == {"inc": {"no-worker": 4}, "sum": {"waiting": 1}}
    assert active(counter.counts()) == expected_counts(s)
    out = s.handle(add_worker("tcp://w:1", nthreads=2))
    assert active(counter.counts()) == expected_counts(s)
    assert counter.counts()["inc"]["processing"] == 2
    assert counter.counts()["inc"]["queued"] == 2
    run_all(s, out, check=lambda: active(counter.counts()) == expected_counts(s))
    counts = counter.counts()
    assert counts["inc"]["memory"] == 4 and counts["inc"]["all"] == 4
    assert counts["sum"] == {**dict.fromkeys(STATES, 0), "memory": 1, "forgotten": 0, "all": 1}
    s.handle(release("c", "inc-1", "inc-2"))
    counts = counter.counts()
    assert counts["inc"]["forgotten"] == 2 and counts["inc"]["memory"] == 2
    assert counts["inc"]["all"] == 4
    assert active(counts) == expected_counts(s)


def test_an_erred_task_and_its_dependents_count_erred():
    s, counter = watched_state()
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    out = s.handle(graph("c", spec("boom-1"), spec("after-1", "boom-1"), spec("after-2", "boom-1")))
    [ct] = computes(out)
    s.handle(erred(ct, ZeroDivisionError("no")))
    counts = counter.counts()
    assert counts["boom"]["erred"] == 1 and counts["after"]["erred"] == 2
    assert active(counts) == expected_counts(s)


def test_counting_begins_from_the_tasks_there_are():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"))
    s.handle(graph("c", spec("a-1"), spec("a-2"), spec("b-1", "a-1")))
    counter = PrefixCounts(s.tasks)
    assert active(counter.counts()) == expected_counts(s)
    assert counter.counts()["a"]["all"] == 2


def test_forgotten_counts_since_a_point():
    s, counter = watched_state()
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    out = s.handle(graph("c", spec("x-1")))
    s.handle(finished(computes(out)[0]))
    s.handle(release("c", "x-1"))
    since = counter.forgotten()
    assert since == {"x": 1}
    assert counter.counts()["x"]["forgotten"] == 1
    assert counter.counts(since) == {}  # (nothing left, nothing forgotten since)
    version = counter.version
    s.handle(graph("c", spec("x-2")))
    assert counter.version != version
    assert counter.counts(since)["x"]["all"] == 1


def test_a_restart_counts_every_task_forgotten():
    s, counter = watched_state()
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    s.handle(graph("c", spec("x-1"), spec("x-2")))
    out = s.handle(ev.Restart(sid()))
    assert any(isinstance(i, ins.ClusterRestarted) for i in out)
    counter.restarted()
    assert active(counter.counts()) == {} == expected_counts(s)
    assert counter.counts()["x"]["forgotten"] == 2


def test_a_task_moved_without_a_transition_is_counted_right_at_its_next():
    s, counter = watched_state()
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    s.handle(graph("c", spec("x-1")))
    ts = s.tasks["x-1"]
    assert counter.counts()["x"]["processing"] == 1
    # (as a work-stealing victim's answer does: the state moves, unlogged)
    s.unassign(ts)
    ts.state = "waiting"
    s.handle(ev.Transitions(sid(), recommendations={"x-1": "processing"}))
    assert active(counter.counts()) == expected_counts(s) == {"x": {"processing": 1}}


# ---------------------------------------------------------------------- a set of keys


def test_a_key_set_counts_the_unfinished_tasks_it_needs():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    run_all(s, s.handle(graph("c", spec("a-1"), spec("a-2"))))
    s.handle(graph("c", spec("b-1", "a-1", "a-2"), spec("b-2", "a-1"), spec("c-1", "b-1", "b-2")))
    progress = KeySetProgress(s.tasks, ["c-1"], complete=False)
    assert progress.all == {"b": 2, "c": 1}  # (a-1 and a-2 finished: not counted)
    assert set(progress.remaining) == {"b-1", "b-2", "c-1"}
    complete = KeySetProgress(s.tasks, ["c-1", "unknown-key"], complete=True)
    assert complete.all == {"a": 2, "b": 2, "c": 1}
    assert complete.done == {"a": 2, "b": 0, "c": 0}
    assert complete.status == "running"


def test_with_complete_what_is_behind_a_finished_task_counts_done():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    run_all(s, s.handle(graph("c", spec("x-1"), spec("y-1", "x-1"), wanted=["y-1"])))
    assert s.tasks["x-1"].state == "released"  # (kept for lineage only)
    progress = KeySetProgress(s.tasks, ["y-1"], complete=True)
    assert progress.all == {"x": 1, "y": 1} and progress.done == {"x": 1, "y": 1}
    assert progress.status == "finished" and not progress.remaining
    assert KeySetProgress(s.tasks, ["y-1"], complete=False).all == {}


def test_a_key_set_follows_its_tasks_to_the_end():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"), add_worker("tcp://w:1"))
    out = s.handle(graph("c", spec("a-1"), spec("boom-1"), spec("b-1", "boom-1")))
    progress = KeySetProgress(s.tasks, ["a-1", "b-1"], complete=True)

    def observer(key, start, finish, stimulus_id):
        if key in progress.remaining:
            progress.moved(key, finish, s.tasks.get(key))

    s.observers.append(observer)
    for ct in computes(out):
        if ct.key == "boom-1":
            s.handle(erred(ct, ZeroDivisionError("boom")))
        else:
            s.handle(finished(ct))
    assert progress.status == "error"
    assert progress.done == {"a": 1, "boom": 0, "b": 0}
    assert progress.erred == {"a": 0, "boom": 1, "b": 1}
    assert progress.error_key == "boom-1"
    assert "ZeroDivisionError" in progress.exception_text


def test_a_key_set_counts_a_task_forgotten_before_it_finished_as_cancelled():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"))
    s.handle(graph("c", spec("a-1"), spec("a-2")))
    progress = KeySetProgress(s.tasks, ["a-1", "a-2"])
    assert progress.version == 0
    assert progress.moved("a-1", "forgotten", None)
    assert not progress.moved("a-2", "processing", s.tasks["a-2"])
    assert progress.moved("a-2", "memory", s.tasks["a-2"])
    assert progress.status == "cancelled" and progress.version == 2
    assert progress.cancelled == {"a": 1} and progress.done == {"a": 1}


def test_groups_by_a_function_of_the_key():
    s = SchedulerState(validate=True)
    s.handle(ev.AddClient(sid(), "c"))
    s.handle(graph("c", spec("a-1"), spec("a-2"), spec("b-1")))
    progress = KeySetProgress(s.tasks, ["a-1", "a-2", "b-1"], group=lambda ts: ts.key[-1])
    assert progress.all == {"1": 2, "2": 1}


def test_group_names():
    assert group_name("inc") == "inc"
    assert group_name(b"inc") == "inc"
    assert group_name(("inc", 3)) == "inc"
    assert group_name(7) == "7"


# ---------------------------------------------------------------------- randomized


class WatchedModel(ModelCluster):
    """The model cluster, with the scheduler's restarts told to the counters, as the
    progress extension is told by the ClusterRestarted instruction."""

    counter: PrefixCounts | None = None
    progress: KeySetProgress | None = None

    def _to_scheduler_state(self, event):
        super()._to_scheduler_state(event)
        if isinstance(event, ev.Restart):
            if self.counter is not None:
                self.counter.restarted()
            if self.progress is not None:
                for key in [k for k in self.progress.remaining if k not in self.scheduler.tasks]:
                    self.progress.moved(key, "forgotten", None)


def check_bar(s: SchedulerState, progress: KeySetProgress) -> None:
    for key in progress.remaining:
        assert key in s.tasks and s.tasks[key].state not in ("memory", "erred"), key
    for name, total in progress.all.items():
        left = sum(1 for group in progress.remaining.values() if group == name)
        finished_ = progress.done[name] + progress.erred[name] + progress.cancelled[name]
        assert total == finished_ + left, (name, progress.all, progress.remaining)


@pytest.mark.timeout(120)
def test_counts_match_the_state_after_every_step_of_random_runs():
    for seed in range(SEEDS):
        rng = random.Random(seed)
        actions = actions_for(seed)
        attach_at = rng.randrange(len(actions))
        bar_at = rng.randrange(len(actions))
        cluster = WatchedModel()
        s = cluster.scheduler
        progress = None
        for step, action in enumerate(actions):
            if step == attach_at:
                cluster.counter = PrefixCounts(s.tasks)
                s.observers.append(cluster.counter.moved)
            if step == bar_at:
                keys = list(cluster.clients["alice"].core.futures)
                progress = cluster.progress = KeySetProgress(s.tasks, keys, bool(seed % 2))

                def observer(key, start, finish, stimulus_id, progress=progress, s=s):
                    if key in progress.remaining:
                        progress.moved(key, finish, s.tasks.get(key))

                s.observers.append(observer)
            STEPS[action.kind](cluster, action)
            if cluster.counter is not None:
                assert active(cluster.counter.counts()) == expected_counts(s), (seed, step)
            if progress is not None:
                check_bar(s, progress)
        cluster.settle()
        if cluster.counter is not None:
            assert active(cluster.counter.counts()) == expected_counts(s), seed
        if progress is not None:
            check_bar(s, progress)
            # (what is left can only be a task released while nobody needs it to run)
            assert all(s.tasks[k].state == "released" for k in progress.remaining), seed
        cluster.release_everything()
        cluster.settle()
        if cluster.counter is not None:
            counts = cluster.counter.counts()
            assert active(counts) == {}, seed
            assert all(row["all"] == row["forgotten"] for row in counts.values()), seed


# ---------------------------------------------------------------------- the extension


def test_observers_are_attached_only_while_someone_wants_progress():
    s = Scheduler()
    observers = s.state.observers
    assert observers == []
    first = s.progress.acquire()
    second = s.progress.acquire()
    assert len(observers) == 1 and s.progress.watching == 2
    first.release()
    first.release()  # (idempotent)
    assert len(observers) == 1
    with pytest.raises(RuntimeError, match="released"):
        first.counts()
    with second:
        pass
    assert observers == [] and s.progress.watching == 0


def test_the_extension_counts_and_follows_a_bar():
    s = Scheduler()
    s.handle(ev.AddClient(sid(), "c"))
    s.handle(graph("c", spec("a-1"), spec("a-2")))
    with s.progress.acquire() as watch:
        assert active(watch.counts()) == {"a": {"no-worker": 2}}
        report = s.progress.start_bar(["a-1", "a-2"], client="c")
        assert report.state == "running" and report.all == {"a": 2}
        assert len(s.state.observers) == 2
        out = s.state.handle(add_worker("tcp://w:1", nthreads=2))
        for ct in computes(out):
            s.handle(finished(ct))
        assert watch.counts()["a"]["memory"] == 2
        final = s.progress._report(s.progress._bars[report.id])
        assert final.state == "finished" and final.done == {"a": 2}
        assert report.id not in s.progress._bars  # (dropped as it reported its end)
        assert len(s.state.observers) == 1
        s.handle(ev.Restart(sid()))
        assert watch.counts()["a"]["forgotten"] == 2
    assert s.state.observers == []


def test_the_bars_of_a_client_go_with_it():
    s = Scheduler()
    s.handle(ev.AddClient(sid(), "c"))
    s.handle(graph("c", spec("a-1")))
    report = s.progress.start_bar(["a-1"], client="c")
    assert report.id in s.progress._bars and s.state.observers
    s.handle(ev.RemoveClient(sid(), "c"))
    assert not s.progress._bars and s.state.observers == []
