"""Adaptive scaling: the decisions without I/O, then real clusters that grow under a
queue of slow tasks and shrink back when idle, losing and recomputing nothing."""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time

import pytest
from conftest import gen_cluster, poll

from distributary import Adaptive, Client, LocalCluster, Scheduler, SpecCluster, Worker
from distributary.deploy.adaptive_core import AdaptiveCore, check_bounds

SCHEDULER = {"cls": Scheduler, "options": {"dashboard_address": None}}
ONE_THREAD = {"cls": Worker, "options": {"nthreads": 1, "memory_limit": "1GiB"}}

# ---------------------------------------------------------------------- decisions


def test_bounds():
    core = AdaptiveCore(minimum=1, maximum=3)
    assert [core.safe(n) for n in (0, 1, 2, 3, 10)] == [1, 1, 2, 3, 3]
    assert AdaptiveCore().safe(10**6) == 10**6  # (maximum inf)
    check_bounds(0, math.inf)
    check_bounds(2, 2)
    with pytest.raises(ValueError, match="minimum=5 is more than maximum=2"):
        check_bounds(5, 2)
    for minimum, maximum, what in ((-1, 2, "minimum"), (1.5, 2, "minimum"), (0, "x", "maximum")):
        with pytest.raises(ValueError, match=f"{what} must be a whole number of workers"):
            check_bounds(minimum, maximum)
    with pytest.raises(ValueError, match="wait_count must be a whole number at least 1"):
        AdaptiveCore(wait_count=0)


def test_up_at_once_down_after_wait_count_votes():
    core = AdaptiveCore(minimum=0, maximum=10, wait_count=3)
    plan = requested = observed = {"a", "b", "c"}
    assert core.recommend(3, plan, requested, observed) == {"status": "same"}
    assert core.recommend(5, plan, requested, observed) == {"status": "up", "n": 5}
    assert core.wants_candidates(1, plan, requested, observed)
    for _ in range(2):
        assert core.recommend(1, plan, requested, observed, ["b", "c"]) == {"status": "same"}
    assert core.recommend(1, plan, requested, observed, ["b", "c"]) == {
        "status": "down",
        "workers": ["b", "c"],
    }
    assert core.close_counts == {}


def test_a_worker_needed_again_loses_its_votes():
    core = AdaptiveCore(wait_count=2)
    plan = {"a", "b"}
    assert core.recommend(1, plan, plan, plan, ["b"]) == {"status": "same"}
    assert core.recommend(1, plan, plan, plan, ["a"]) == {"status": "same"}  # b forgotten
    assert core.close_counts == {"a": 1}
    assert core.recommend(2, plan, plan, plan) == {"status": "same"}
    assert core.close_counts == {}


def test_workers_not_arrived_yet_are_closed_first():
    core = AdaptiveCore(wait_count=1)
    plan, requested, observed = {"a", "b", "c"}, {"a", "b", "c"}, {"a"}
    assert AdaptiveCore.to_close_first(1, plan, requested, observed) == {"b", "c"}
    assert not core.wants_candidates(1, plan, requested, observed)  # (enough without)
    assert core.recommend(1, plan, requested, observed) == {"status": "down", "workers": ["b", "c"]}
    assert core.wants_candidates(0, plan, requested, observed)


# ---------------------------------------------------------------------- the scheduler


def slow(x, delay=0.2):
    time.sleep(delay)
    return x


@gen_cluster(nthreads=(1, 1))
async def test_adaptive_target_and_workers_to_close(c, s, a, b):
    assert s.adaptive_target() == 0
    futures = c.map(slow, range(20), delay=0.5, pure=False)
    await asyncio.sleep(0)
    while len(s.state.tasks) < 20:
        await asyncio.sleep(0.01)
    # 20 tasks of 0.5 s (unknown: the default duration): 10 s of work, 2 s per worker
    assert s.adaptive_target(target_duration="2s") == 5
    assert s.adaptive_target(target_duration="10ms") == 20  # at most one per task
    assert s.workers_to_close() == []  # (both busy)
    await c.cancel(futures)
    held = await c.scatter([bytes(10_000)], workers=[a.address])
    while s.state.workers[a.address].nbytes == 0:
        await asyncio.sleep(0.01)
    assert s.workers_to_close(n=1) == [b.address]  # (the one holding less)
    assert s.workers_to_close(target=1, attribute="name") == [b.name]
    assert s.workers_to_close(minimum=2) == []
    assert s.workers_to_close(key=lambda ws: "same host") == []  # (a group holds data)
    # alone in their groups: not both, as a's data would have nowhere to go
    assert s.workers_to_close(key=lambda ws: ws.address) == [b.address]
    del held


# ---------------------------------------------------------------------- clusters

RUNS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()


def counted(x):
    with _LOCK:
        RUNS[x] += 1
    time.sleep(0.1)
    return x


def n_workers(cluster) -> int:
    return len(cluster.scheduler_info["workers"])


def test_adapt_grows_under_slow_tasks_and_shrinks_to_the_minimum():
    RUNS.clear()
    with (
        SpecCluster(scheduler=SCHEDULER, worker=ONE_THREAD) as cluster,
        Client(cluster) as client,
    ):
        adaptive = cluster.adapt(minimum=1, maximum=4, interval="20ms", wait_count=3)
        assert isinstance(adaptive, Adaptive)
        poll(lambda: n_workers(cluster) == 1)  # (the minimum)
        futures = client.map(counted, range(40))
        poll(lambda: n_workers(cluster) == 4, timeout=20)  # (the maximum)
        assert client.gather(futures) == list(range(40))
        # idle again, holding the results: back to one worker, which holds them all
        poll(lambda: n_workers(cluster) == 1, timeout=20)
        poll(lambda: len(cluster.workers) == 1 == len(cluster.worker_spec))
        assert [len(keys) for keys in client.has_what().values()] == [40]
        assert client.gather(futures) == list(range(40))
        assert sorted(RUNS) == list(range(40)) and set(RUNS.values()) == {1}  # none twice
        assert any(rec["status"] == "up" for _, rec in adaptive.log)
        assert any(rec["status"] == "down" for _, rec in adaptive.log)
        adaptive.stop()
        assert adaptive.state == "stopped"


def test_adapt_from_zero_to_zero_on_a_local_cluster():
    with (
        LocalCluster(n_workers=0, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        cluster.adapt(minimum=0, maximum=2, interval="20ms", wait_count=2)
        assert client.submit(slow, 7, 0.05).result(timeout=20) == 7
        assert n_workers(cluster) >= 1
        poll(lambda: n_workers(cluster) == 0 and not cluster.workers, timeout=20)


def test_adaptive_methods_and_bounds_from_cores_and_memory():
    async def main():
        async with SpecCluster(
            scheduler=SCHEDULER, worker=ONE_THREAD, workers={0: ONE_THREAD}, asynchronous=True
        ) as cluster:
            adaptive = Adaptive(cluster, interval=0, minimum=0, maximum=3, wait_count=1)
            assert adaptive.state == "inactive"  # (interval=0: nothing periodic)
            assert await adaptive.target() == 0
            assert await adaptive.safe_target() == 0
            assert await adaptive.workers_to_close(0) == [0]
            assert await adaptive.recommendations(0) == {"status": "down", "workers": [0]}
            await adaptive.adapt()
            assert cluster.workers == {} and n_workers(cluster) == 0
            await adaptive.scale_up(2)
            assert n_workers(cluster) == 2
            assert adaptive.plan == adaptive.requested == adaptive.observed == {0, 1}

            grouped = Adaptive(cluster, interval=0, worker_key=lambda ws: "one group")
            assert sorted(await grouped.workers_to_close(0)) == [0, 1]

            bounded = cluster.adapt(maximum_cores=3, minimum_memory="2GiB", interval="1h")
            assert (bounded.minimum, bounded.maximum) == (2, 3)
            assert cluster._adaptive is bounded
            again = cluster.adapt(minimum=1, maximum=1, interval="1h")
            assert bounded.state == "stopped" and again.state in ("starting", "running")
        assert again.state == "stopped"  # (closing the cluster stops it)

    asyncio.run(main())


def test_bad_input():
    with SpecCluster(scheduler=SCHEDULER, worker=ONE_THREAD) as cluster:
        with pytest.raises(ValueError, match="minimum=5 is more than maximum=2"):
            cluster.adapt(minimum=5, maximum=2)
        with pytest.raises(ValueError, match="minimum must be a whole number of workers"):
            cluster.adapt(minimum=-1)
        with pytest.raises(TypeError, match=r"unexpected keyword arguments \['minimun'\]"):
            cluster.adapt(minimun=1)
        with pytest.raises(TypeError, match="at most one positional argument"):
            cluster.adapt(Adaptive, 3)
        assert cluster._adaptive is None  # (none of these started one)
        cluster.scale(1)
        assert n_workers(cluster) == 1
