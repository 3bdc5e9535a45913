"""Where tasks run, on real clusters: restrictions, resources, priorities, the place in
line of later submissions (``fifo_timeout``), and work stealing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from conftest import apoll, gen_cluster

from distributary import Scheduler, Worker, get_worker

pytestmark = pytest.mark.timeout(60)

_runs: Counter = Counter()  # key -> times run, for the in-process workers of a test
_running: dict[str, int] = {"now": 0, "most": 0}
_running_lock = threading.Lock()
_order: list = []


def where(i: int, seconds: float = 0.02) -> str:
    """Count this run, sleep, and say which worker ran it."""
    worker = get_worker()
    _runs[worker.get_current_task()] += 1
    time.sleep(seconds)
    return worker.address


def exclusive(i: int) -> int:
    """Note how many of these run at once."""
    with _running_lock:
        _running["now"] += 1
        _running["most"] = max(_running["most"], _running["now"])
    time.sleep(0.02)
    with _running_lock:
        _running["now"] -= 1
    return i


def note(name: str) -> str:
    _order.append(name)
    return name


_go = threading.Event()  # (the workers of these tests run in this process)


def blocked(name: str) -> str:
    _go.wait(timeout=20)
    return name


@gen_cluster(nthreads=(1, 1, 1))
async def test_an_unevenly_placed_map_runs_on_every_worker_and_each_task_once(c, s, a, b, w3):
    _runs.clear()
    futures = c.map(where, range(40), workers=[a.address], allow_other_workers=True)
    ran_on = await c.gather(futures)
    assert Counter(ran_on).keys() == {a.address, b.address, w3.address}
    assert min(Counter(ran_on).values()) >= 5  # (40 tasks of 20 ms: the others took their part)
    assert set(_runs.values()) == {1} and len(_runs) == 40  # none ran twice


@gen_cluster(nthreads=(1, 1))
async def test_strict_restrictions_keep_tasks_on_their_worker_while_another_is_idle(c, s, a, b):
    futures = c.map(where, range(10), workers=[a.address], pure=False)
    assert set(await c.gather(futures)) == {a.address}


@gen_cluster(nthreads=(1, 1))
async def test_restrictions_by_name_and_host(c, s, a, b):
    named = await Worker(s.address, nthreads=1, name="bee")
    try:
        assert set(await c.gather(c.map(where, range(4), workers="bee"))) == {named.address}
        host = a.address.split("://")[1].rsplit(":", 1)[0]
        assert await c.submit(where, 5, workers=[host]) in (a.address, b.address, named.address)
    finally:
        await named.close()


def test_resources_limit_where_and_how_many_at_once():
    async def main() -> None:
        async with Scheduler() as s:
            gpu = await Worker(s.address, nthreads=4, resources={"GPU": 1})
            plain = await Worker(s.address, nthreads=4)
            try:
                from distributary import Client

                async with Client(s.address, asynchronous=True) as c:
                    _running.update(now=0, most=0)
                    futures = c.map(exclusive, range(8), resources={"GPU": 1})
                    assert await c.gather(futures) == list(range(8))
                    assert _running["most"] == 1  # one GPU: one at a time, on 4 threads
                    who = await c.who_has(futures)
                    assert {w for holders in who.values() for w in holders} == {gpu.address}
                    # nobody has two GPUs: the task waits, and runs when such a worker joins
                    big = c.submit(exclusive, 99, resources={"GPU": 2})
                    await asyncio.sleep(0)  # (let it reach the scheduler)
                    await apoll(lambda: big.key in s.state.tasks)
                    assert s.state.tasks[big.key].state == "no-worker" and big.status == "pending"
                    late = await Worker(s.address, nthreads=1, resources={"GPU": 2})
                    try:
                        assert await big == 99
                        assert (await c.who_has([big]))[big.key] == (late.address,)
                    finally:
                        await late.close()
            finally:
                await gpu.close()
                await plain.close()

    asyncio.run(asyncio.wait_for(main(), 45))


def test_a_task_for_a_worker_that_does_not_exist_waits_until_it_joins():
    async def main() -> None:
        async with Scheduler() as s:
            a = await Worker(s.address, nthreads=1)
            try:
                from distributary import Client

                async with Client(s.address, asynchronous=True) as c:
                    future = c.submit(where, 1, workers="later")
                    loose = c.submit(where, 2, workers="nowhere", allow_other_workers=True)
                    assert await loose == a.address  # (allowed elsewhere: runs at once)
                    assert s.state.tasks[future.key].state == "no-worker"
                    b = await Worker(s.address, nthreads=1, name="later")
                    try:
                        assert await future == b.address
                    finally:
                        await b.close()
            finally:
                await a.close()

    asyncio.run(asyncio.wait_for(main(), 45))


@gen_cluster(nthreads=(1,))
async def test_priority_decides_which_waiting_task_runs_first(c, s, a):
    _order.clear()
    _go.clear()
    # (one runs, one waits on the worker: the rest wait on the scheduler, in line)
    blockers = c.map(blocked, ["blocker-1", "blocker-2"])
    await apoll(lambda: a.state.executing and len(a.state.tasks) == 2)
    low = c.submit(note, "low", priority=-1)
    normal = c.submit(note, "normal")
    high = c.submit(note, "high", priority=10)
    await apoll(lambda: len(s.state.tasks) == 5)
    _go.set()
    await c.gather([*blockers, low, normal, high])
    assert _order == ["high", "normal", "low"]


@pytest.mark.parametrize(
    "fifo_timeout, order",
    [
        ("0 ms", ["a0", "a1", "a2", "b0", "b1", "b2"]),  # b comes later: it waits its turn
        ("1 hour", ["a0", "b0", "a1", "b1", "a2", "b2"]),  # one window: graph order only
    ],
)
def test_fifo_timeout_decides_whether_later_work_waits_its_turn(fifo_timeout, order):
    @gen_cluster(nthreads=(1,))
    async def check(c, s, a):
        _order.clear()
        _go.clear()
        blockers = c.map(blocked, ["blocker-1", "blocker-2"], fifo_timeout=fifo_timeout)
        await apoll(lambda: a.state.executing and len(a.state.tasks) == 2)
        first = c.map(note, ["a0", "a1", "a2"], fifo_timeout=fifo_timeout)
        second = c.map(note, ["b0", "b1", "b2"], fifo_timeout=fifo_timeout)
        await apoll(lambda: len(s.state.tasks) == 8)
        _go.set()
        await c.gather([*blockers, *first, *second])
        assert _order == order

    check("tcp")


@gen_cluster(nthreads=(1,))
async def test_actors_are_refused_with_a_clear_error(c, s, a):
    with pytest.raises(NotImplementedError, match="actors"):
        c.submit(note, "x", actor=True)
    with pytest.raises(NotImplementedError, match="actors"):
        c.map(note, ["x"], actors=True)
    assert await c.submit(note, "still-fine") == "still-fine"


@gen_cluster(nthreads=(1, 1))
async def test_get_takes_the_older_restrictions_per_key(c, s, a, b):
    graph = {"on-b": (where, 1), "loose": (where, 2), "free": (where, 3)}
    restrictions = {"on-b": [b.address], "loose": ["nowhere"]}
    got = c.get(
        graph,
        ["on-b", "loose", "free"],
        restrictions=restrictions,
        loose_restrictions=["loose"],
        sync=False,
    )
    assert (await c.gather(got))[0] == b.address
    with pytest.raises(TypeError, match="restrictions= is a dict"):
        c.get(graph, ["free"], restrictions=[a.address])
    with pytest.raises(ValueError, match="loose_restrictions="):
        c.get(graph, ["free"], loose_restrictions=["free"])
