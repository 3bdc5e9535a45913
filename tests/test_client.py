"""End-to-end tests of Client, Future, wait, as_completed and friends on a real cluster.

Most tests run an asynchronous Client against an in-process Scheduler and Workers
(``@gen_cluster``, over TCP on 127.0.0.1 and some over inproc); the blocking tests use
``LocalCluster(processes=False)``.  Workers run in this process, so tasks coordinate
with the test through the module-level ``EVENTS`` and ``ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import re
import threading
import time
import traceback
import types
import uuid

import numpy as np
import pytest
from conftest import apoll, gen_cluster, poll

from distributary import (
    CancelledError,
    Client,
    Future,
    FutureCancelledError,
    LocalCluster,
    Reschedule,
    TimeoutError,
    Worker,
    as_completed,
    fire_and_forget,
    futures_of,
    get_worker,
    secede,
    wait,
)

EVENTS: collections.defaultdict[str, threading.Event] = collections.defaultdict(threading.Event)
ATTEMPTS: collections.Counter[str] = collections.Counter()
TOKEN = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def release_events():
    """Unblock any task still waiting on an event when the test ends."""
    yield
    for event in list(EVENTS.values()):
        event.set()
    EVENTS.clear()


def new_event() -> str:
    return f"event-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------- task functions


def inc(x):
    return x + 1


def add(x, y=0, z=0):
    return x + y + z


def describe(*args, **kwargs):
    return args, kwargs


class CustomError(Exception):
    pass


def failing_task(x):
    raise ValueError(f"boom {x}")


def raise_custom(x):
    raise CustomError(f"custom {x}")


def wait_for(name, value=None):
    """Block until the test sets ``EVENTS[name]`` (at most 20 s)."""
    assert EVENTS[name].wait(20), f"{name} never set"
    return value


def set_event(name, value=None):
    EVENTS[name].set()
    return value


def fail_once(name):
    ATTEMPTS[name] += 1
    if ATTEMPTS[name] == 1:
        raise RuntimeError(f"first attempt of {name}")
    return "second time lucky"


def reschedule_once(name):
    ATTEMPTS[name] += 1
    if ATTEMPTS[name] == 1:
        raise Reschedule()
    return ATTEMPTS[name]


def worker_address(_=None):
    return get_worker().address


def secede_and_wait(started, gate):
    EVENTS[started].set()
    secede()
    return EVENTS[gate].wait(20)


def checksum(arr):
    return float(arr.sum()), float(arr[-1]), arr.shape, arr.dtype.str


async def roundtrip(c, worker: str) -> None:
    """Two sequential tasks on an idle ``worker``: what the client sent before them has
    reached the scheduler."""
    for _ in range(2):
        await c.submit(inc, 0, pure=False, workers=[worker])


def everywhere(key, s, *workers) -> bool:
    """Whether the key is known to the scheduler or held by any worker."""
    return key in s.tasks or any(key in w.data for w in workers)


# ---------------------------------------------------------------------- submit, map, gather


@gen_cluster(protocols=("tcp", "inproc"))
async def test_submit_args_kwargs(c, s, a, b):
    f = c.submit(add, 1, 2, z=3)
    assert await f == 6
    assert isinstance(f, Future)
    assert await c.submit(describe, 1, (2, 3), k={"v": [4]}) == ((1, (2, 3)), {"k": {"v": [4]}})


@gen_cluster()
async def test_submit_keys(c, s, a, b):
    x, y = c.submit(inc, 1), c.submit(inc, 1)
    assert x.key == y.key
    assert x.key.startswith("inc-") and TOKEN.fullmatch(x.key[4:])
    assert c.submit(inc, 2).key != x.key
    assert c.submit(add, 1, y=2).key != c.submit(add, 1, y=3).key
    p, q = c.submit(inc, 1, pure=False), c.submit(inc, 1, pure=False)
    assert p.key != q.key and p.key.startswith("inc-") and x.key not in (p.key, q.key)
    z = c.submit(inc, 1, key="my-key")
    assert z.key == "my-key"
    assert await c.gather([x, y, p, q, z]) == [2] * 5


@gen_cluster()
async def test_map(c, s, a, b):
    futures = c.map(inc, range(5))
    assert await c.gather(futures) == [1, 2, 3, 4, 5]
    assert len({f.key for f in futures}) == 5
    assert all(f.key.startswith("inc-") for f in futures)
    assert [f.key for f in c.map(inc, range(5))] == [f.key for f in futures]
    assert len({f.key for f in c.map(inc, [1, 1], pure=False)}) == 2

    several = c.map(add, [1, 2, 3], [10, 20, 30], z=100)
    assert await c.gather(several) == [111, 122, 133]
    assert c.map(add, [1], z=1)[0].key != c.map(add, [1], z=2)[0].key

    keyed = c.map(inc, [1, 2], key=["k-1", "k-2"])
    assert [f.key for f in keyed] == ["k-1", "k-2"]
    assert await c.gather(keyed) == [2, 3]


@gen_cluster()
async def test_gather_nested_and_skip(c, s, a, b):
    x, y, z = c.map(inc, [1, 2, 3])
    result = await c.gather({"a": [x, (y, 7)], "b": {"c": z}, "d": "plain"})
    assert result == {"a": [2, (3, 7)], "b": {"c": 4}, "d": "plain"}
    assert type(result["a"][1]) is tuple

    bad = c.submit(failing_task, 1)
    assert await c.gather([x, bad, y], errors="skip") == [2, 3]
    assert await c.gather({"x": x, "bad": bad}, errors="skip") == {"x": 2}
    with pytest.raises(ValueError, match="boom 1"):
        await c.gather([x, bad])
    assert futures_of([x, {"k": (y, bad)}]) == [x, y, bad]


@gen_cluster(protocols=("tcp", "inproc"))
async def test_futures_as_nested_arguments(c, s, a, b):
    x, y = c.submit(inc, 1), c.submit(inc, 2)
    f = c.submit(describe, [x, [y, 10]], {"k": x}, extra={"y": y, "t": (x,)})
    assert await f == (([2, [3, 10]], {"k": 2}), {"extra": {"y": 3, "t": (2,)}})
    assert {d.key for d in s.tasks[f.key].dependencies} == {x.key, y.key}
    g = c.submit(add, x, y=y, z=y)
    assert await g == 8


@gen_cluster()
async def test_chain_of_100(c, s, a, b):
    x = c.submit(inc, 0)
    for _ in range(99):
        x = c.submit(inc, x)
    assert await x == 100
    del x
    gc.collect()
    await apoll(lambda: not s.tasks and not a.data and not b.data)


@gen_cluster()
async def test_large_numpy_result_and_argument(c, s, a, b):
    big = c.submit(np.ones, 8 * 2**20, workers=[a.address])
    result = await big
    assert result.nbytes == 64 * 2**20 and result.sum() == 8 * 2**20
    # the dependency travels from a to b over the transport
    assert await c.submit(checksum, big, workers=[b.address]) == (
        8.0 * 2**20,
        1.0,
        (8 * 2**20,),
        "<f8",
    )
    arg = np.arange(4 * 2**20, dtype="f8")  # 32 MiB
    n = arg.size
    assert await c.submit(checksum, arg) == (n * (n - 1) / 2, n - 1.0, (n,), "<f8")
    np.testing.assert_array_equal(await c.submit(np.negative, arg), -arg)


@gen_cluster(nthreads=(1,), protocols=("tcp", "inproc"))
async def test_an_argument_changed_after_submit_is_not_seen_by_the_task(c, s, a):
    arg = np.zeros(2**20)  # 8 MiB: pickled out of band
    blocker = c.submit(time.sleep, 0.3)  # the one thread is busy: the next task waits
    futures = []
    for value in range(3):
        arg[:] = value
        futures.append(c.submit(np.max, arg, key=f"max-{value}"))
    arg[:] = -1
    assert await c.gather(futures) == [0, 1, 2]
    await blocker


# ---------------------------------------------------------------------- Future


@gen_cluster()
async def test_result_timeout_then_result(c, s, a, b):
    name = new_event()
    f = c.submit(wait_for, name, 42)
    with pytest.raises(TimeoutError):
        await f.result(timeout=0.05)
    assert not f.done() and f.status == "pending"
    EVENTS[name].set()
    assert await f.result(timeout=10) == 42
    assert f.done() and f.status == "finished"


@gen_cluster()
async def test_exception_and_traceback(c, s, a, b):
    f = c.submit(failing_task, 1)
    exc = await f.exception()
    assert type(exc) is ValueError and str(exc) == "boom 1"
    tb = await f.traceback()
    assert isinstance(tb, types.TracebackType)
    assert "failing_task" in "".join(traceback.format_tb(tb))
    assert f.status == "error" and f.done() and not f.cancelled()
    ok = c.submit(inc, 1)
    assert await ok.exception() is None and await ok.traceback() is None


@gen_cluster(protocols=("tcp", "inproc"))
async def test_remote_error_reraised_with_remote_frame(c, s, a, b):
    with pytest.raises(ValueError, match="^boom 2$") as info:
        await c.submit(failing_task, 2)
    text = "".join(traceback.format_exception(info.value))
    assert "failing_task" in text and "ValueError: boom 2" in text

    with pytest.raises(CustomError, match="custom 3") as info:
        await c.gather([c.submit(raise_custom, 3)])
    assert "raise_custom" in "".join(traceback.format_exception(info.value))
    # the cluster carries on
    assert await c.submit(inc, 1) == 2


@gen_cluster()
async def test_cancel(c, s, a, b):
    name = new_event()
    f = c.submit(wait_for, name, 1)
    await apoll(lambda: f.key in s.tasks and s.tasks[f.key].state == "processing")
    await f.cancel()
    assert f.cancelled() and f.done() and f.status == "cancelled"
    with pytest.raises(CancelledError):
        await f
    with pytest.raises(CancelledError):
        await f.result()
    with pytest.raises(CancelledError):
        await c.gather([f])
    assert await c.gather([f, c.submit(inc, 1)], errors="skip") == [2]
    await apoll(lambda: f.key not in s.tasks)
    EVENTS[name].set()
    # the same key can be submitted again
    g = c.submit(wait_for, name, 1)
    assert g.key == f.key
    assert await g == 1


@gen_cluster()
async def test_add_done_callback(c, s, a, b):
    seen = []
    called = threading.Event()

    def callback(future):
        seen.append((future, future.status))
        if len(seen) == 2:
            called.set()

    f = c.submit(inc, 1)
    f.add_done_callback(callback)
    await f
    f.add_done_callback(callback)  # already finished: called anyway
    await apoll(called.is_set)
    assert seen == [(f, "finished"), (f, "finished")]


@gen_cluster()
async def test_retry(c, s, a, b):
    name = new_event()
    f = c.submit(fail_once, name)
    with pytest.raises(RuntimeError, match="first attempt"):
        await f
    assert f.status == "error"
    await f.retry()
    assert await f == "second time lucky"
    assert ATTEMPTS[name] == 2 and f.status == "finished"
    # retries= on submit does the same on the cluster
    other = new_event()
    assert await c.submit(fail_once, other, retries=1) == "second time lucky"


@gen_cluster()
async def test_future_repr_and_status(c, s, a, b):
    name = new_event()
    f = c.submit(wait_for, name, 1)
    assert f.key in repr(f) and "pending" in repr(f)
    EVENTS[name].set()
    assert await f == 1
    assert f.key in repr(f) and "finished" in repr(f) and "int" in repr(f)
    assert f.client is c and f.executor is c


# ---------------------------------------------------------------------- scatter


@gen_cluster(protocols=("tcp", "inproc"))
async def test_scatter(c, s, a, b):
    many = await c.scatter([1, 2, 3])
    assert isinstance(many, list) and await c.gather(many) == [1, 2, 3]
    named = await c.scatter({"x": 10, "y": 20})
    assert set(named) == {"x", "y"} and named["x"].key == "x"
    assert await c.gather(named) == {"x": 10, "y": 20}
    one = await c.scatter(np.arange(5))
    assert isinstance(one, Future)
    np.testing.assert_array_equal(await one, np.arange(5))
    # scattered futures as arguments
    assert await c.submit(add, many[0], named["x"], z=named["y"]) == 31
    assert await c.submit(lambda arr: arr.sum(), one) == 10

    assert (await c.scatter(5)).key == (await c.scatter(5)).key
    assert (await c.scatter(5, hash=False)).key != (await c.scatter(5, hash=False)).key


@gen_cluster()
async def test_scatter_broadcast_and_workers(c, s, a, b):
    [x] = await c.scatter([7], broadcast=True)
    # the scheduler learns of scattered data through the client's stream, not at once
    await apoll(lambda: x.key in s.tasks)
    who_has = await c.who_has([x])
    assert set(who_has[x.key]) == {a.address, b.address}
    assert x.key in a.data and x.key in b.data

    [y] = await c.scatter([8], workers=[b.address])
    await apoll(lambda: y.key in s.tasks)
    assert set((await c.who_has([y]))[y.key]) == {b.address}
    assert y.key in b.data and y.key not in a.data
    # used on the other worker: fetched from b
    assert await c.submit(inc, y, workers=[a.address]) == 9


# ---------------------------------------------------------------------- reference counting


@gen_cluster()
async def test_release_forgets_key(c, s, a, b):
    f = c.submit(inc, 1)
    assert await f == 2
    key = f.key
    assert key in s.tasks and (key in a.data or key in b.data)
    del f
    gc.collect()
    await apoll(lambda: not everywhere(key, s, a, b))


@gen_cluster()
async def test_two_futures_same_key(c, s, a, b):
    x, y = c.submit(inc, 10), c.submit(inc, 10)
    key = x.key
    assert await x == 11
    del x
    gc.collect()
    await roundtrip(c, a.address)
    assert s.tasks[key].state == "memory"
    assert await y == 11
    del y
    gc.collect()
    await apoll(lambda: not everywhere(key, s, a, b))


@gen_cluster()
async def test_release_dependency_while_dependent_waits(c, s, a, b):
    name = new_event()
    x = c.submit(inc, 1, workers=[a.address])
    await x
    block = c.submit(wait_for, name, 10, workers=[b.address])
    y = c.submit(add, x, block, workers=[b.address])
    keys = [x.key, block.key, y.key]
    del x
    gc.collect()
    await roundtrip(c, a.address)
    assert keys[0] in s.tasks and keys[0] in a.data
    EVENTS[name].set()
    assert await y == 12
    del block, y
    gc.collect()
    await apoll(lambda: not any(everywhere(k, s, a, b) for k in keys))


@gen_cluster()
async def test_fire_and_forget(c, s, a, b):
    gate, flag = new_event(), new_event()
    x = c.submit(wait_for, gate, 1, workers=[a.address])
    y = c.submit(set_event, flag, x)
    keys = [x.key, y.key]
    fire_and_forget(y)
    del x, y
    gc.collect()
    await roundtrip(c, b.address)
    assert all(k in s.tasks for k in keys)
    EVENTS[gate].set()
    await apoll(EVENTS[flag].is_set)
    await apoll(lambda: not any(everywhere(k, s, a, b) for k in keys))


# ---------------------------------------------------------------------- wait, as_completed


@gen_cluster()
async def test_wait(c, s, a, b):
    futures = c.map(inc, range(3))
    done, not_done = await wait(futures)
    assert done == set(futures) and not not_done

    gate = new_event()
    slow = c.submit(wait_for, gate, 0, workers=[a.address])
    fast = c.submit(inc, 5, workers=[b.address])
    done, not_done = await wait([slow, fast], return_when="FIRST_COMPLETED")
    assert done == {fast} and not_done == {slow}

    bad = c.submit(failing_task, 3, workers=[b.address])
    done, not_done = await wait([slow, bad], return_when="FIRST_EXCEPTION")
    assert done == {bad} and not_done == {slow}

    with pytest.raises(TimeoutError):
        await wait([slow, fast], timeout=0.05)
    EVENTS[gate].set()
    done, not_done = await wait([slow, fast, bad], timeout=10)
    assert done == {slow, fast, bad} and not not_done


@gen_cluster()
async def test_as_completed_async(c, s, a, b):
    ac = as_completed(c.map(inc, range(3)))
    seen = []
    async for future in ac:
        seen.append(await future)
        if len(seen) == 1:
            ac.add(c.submit(inc, 100))
    assert sorted(seen) == [1, 2, 3, 101]

    pairs = [(f.key, r) async for f, r in as_completed(c.map(inc, [5, 6]), with_results=True)]
    assert sorted(r for _, r in pairs) == [6, 7]

    with pytest.raises(ValueError, match="boom 4"):
        async for _ in as_completed([c.submit(failing_task, 4)], with_results=True):
            pass


# ---------------------------------------------------------------------- clients


@gen_cluster()
async def test_two_clients_share_a_key(c, s, a, b):
    async with Client(s.address, asynchronous=True) as c2:
        assert Client.current() is c2
        x, y = c.submit(inc, 1), c2.submit(inc, 1)
        assert x.key == y.key
        assert await x == 2
        del x
        gc.collect()
        await roundtrip(c, a.address)
        assert await y == 2
        assert s.tasks[y.key].state == "memory"
        z, z2 = c.submit(inc, 3), c2.submit(inc, 3)
        assert await z2 == 4
    # c2 is gone: what c shares with it stays, and c is the default client again
    await apoll(lambda: not set(s.tasks[z.key].who_wants) - {c.id})
    assert s.tasks[z.key].state == "memory"
    assert await z == 4
    assert Client.current() is c
    assert await c.submit(inc, 2) == 3


@gen_cluster()
async def test_get_worker_in_task(c, s, a, b):
    addresses = await c.gather(c.map(worker_address, range(4)))
    assert set(addresses) <= {a.address, b.address}
    assert await c.submit(worker_address, workers=[b.address]) == b.address
    with pytest.raises(ValueError):
        get_worker()


@gen_cluster(nthreads=(1,))
async def test_secede_frees_the_thread(c, s, a):
    started, gate = new_event(), new_event()
    x = c.submit(secede_and_wait, started, gate)
    await apoll(EVENTS[started].is_set)
    y = c.submit(set_event, gate, "other")
    assert await y == "other"
    assert await x is True


@gen_cluster(protocols=("tcp", "inproc"))
async def test_tuple_keys(c, s, a, b):
    x = c.submit(inc, 1, key=("x", 1))
    y = c.submit(inc, x, key=("y", 1))
    [z] = c.map(inc, [10], key=[("z", 0, "a")])
    assert await c.gather({"x": x, "y": [y, z]}) == {"x": 2, "y": [3, 11]}
    assert x.key == ("x", 1) and ("x", 1) in s.tasks
    who_has = await c.who_has([x, y, z])
    assert set(who_has) == {("x", 1), ("y", 1), ("z", 0, "a")}
    assert all(set(v) <= {a.address, b.address} and v for v in who_has.values())


# ---------------------------------------------------------------------- blocking client


def test_blocking_basics(c):
    assert c.submit(add, 1, y=2).result() == 3
    futures = c.map(inc, range(4))
    assert c.gather(futures) == [1, 2, 3, 4]
    assert list(c.gather(iter(futures))) == [1, 2, 3, 4]
    assert c.gather([c.scatter(5), {"k": futures[0]}]) == [5, {"k": 1}]
    with pytest.raises(ValueError, match="boom 5") as info:
        c.submit(failing_task, 5).result()
    assert "failing_task" in "".join(traceback.format_exception(info.value))


def test_blocking_result_timeout(c):
    name = new_event()
    f = c.submit(wait_for, name, "done")
    with pytest.raises(TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        wait([f], timeout=0.05)
    EVENTS[name].set()
    assert f.result(timeout=10) == "done"


def test_blocking_as_completed(c):
    ac = as_completed(c.map(inc, range(3)))
    seen = []
    for future in ac:
        seen.append(future.result())
        if len(seen) == 1:
            ac.add(c.submit(inc, 100))
    assert sorted(seen) == [1, 2, 3, 101]
    pairs = list(as_completed(c.map(inc, [5, 6]), with_results=True))
    assert sorted(r for _, r in pairs) == [6, 7]
    assert all(f.result() == r for f, r in pairs)


def test_as_completed_has_ready_timeout_and_batches(c):
    gate = new_event()
    slow = c.submit(wait_for, gate, "slow")
    ac = as_completed([c.submit(inc, 1)], timeout=0.2)
    poll(ac.has_ready)
    assert [f.result() for f in ac.next_batch(block=False)] == [2]
    assert not ac.has_ready() and ac.is_empty()
    ac.add(slow)
    with pytest.raises(TimeoutError, match="nothing finished within 0.2 s"):
        next(ac)
    EVENTS[gate].set()
    assert [f.result() for batch in ac.batches() for f in batch] == ["slow"]


def test_wait_takes_the_futures_as_one_argument(c):
    a, b = c.submit(inc, 1), c.submit(inc, 2)
    with pytest.raises(TypeError, match=r"wait\(\[a, b\]\), not wait\(a, b\)"):
        wait(a, b)
    done, not_done = wait([a, b], timeout=10)
    assert done == {a, b} and not not_done


def test_futures_of_with_a_client_raises_for_a_cancelled_future(c):
    gate = new_event()
    kept, cancelled = c.submit(inc, 1), c.submit(wait_for, gate)
    c.cancel([cancelled], reason="not wanted")
    poll(cancelled.cancelled)
    assert futures_of([kept, cancelled]) == [kept, cancelled]
    with pytest.raises(FutureCancelledError, match="not wanted"):
        futures_of([kept, cancelled], client=c)
    assert futures_of([kept], client=c) == [kept]


def test_a_task_raising_reschedule_runs_again(c):
    name = new_event()
    assert c.submit(reschedule_once, name).result() == 2
    assert ATTEMPTS[name] == 2


def test_fire_and_forget_runs_after_its_client_closed(cluster):
    gate, flag = new_event(), new_event()
    with Client(cluster, set_as_default=False) as gone:
        fire_and_forget(gone.submit(set_event, flag, gone.submit(wait_for, gate)))
    EVENTS[gate].set()  # the tasks can finish only now, with no client left
    poll(EVENTS[flag].is_set)
    poll(lambda: not cluster.scheduler.tasks)


def test_blocking_refcount_and_fire_and_forget(c, cluster):
    s = cluster.scheduler
    f = c.submit(inc, 1)
    assert f.result() == 2
    key = f.key
    del f
    gc.collect()
    poll(lambda: key not in s.tasks)

    gate, flag = new_event(), new_event()
    x = c.submit(wait_for, gate, 1)
    fire_and_forget(c.submit(set_event, flag, x))
    del x
    gc.collect()
    EVENTS[gate].set()
    assert EVENTS[flag].wait(10)
    poll(lambda: not s.tasks)


def test_blocking_add_done_callback(c):
    called = threading.Event()
    f = c.submit(inc, 1)
    f.add_done_callback(lambda fut: called.set() if fut.status == "finished" else None)
    assert called.wait(10)


def test_current_and_closed_client(cluster):
    c = Client(cluster)
    assert Client.current() is c
    f = c.submit(inc, 1)
    assert f.result() == 2
    c.close()
    assert c.status == "closed"
    with pytest.raises(ValueError):
        Client.current()
    with pytest.raises(RuntimeError, match="closed"):
        c.submit(inc, 2)
    with pytest.raises(RuntimeError, match="closed"):
        c.gather([f])
    with pytest.raises(RuntimeError, match="closed"):
        c.scatter([1])
    c.close()  # idempotent


def test_client_context_manager(cluster):
    with Client(cluster) as c:
        assert c.status == "running"
        assert c.submit(inc, 1).result() == 2
    assert c.status == "closed"


@gen_cluster(nthreads=(1,))
async def test_wait_for_workers_is_answered_when_they_join(c, s, a):
    """The scheduler answers as the workers arrive (nothing polls), or with TimeoutError."""
    await c.wait_for_workers(1)
    with pytest.raises(TimeoutError, match="Only 1/2 workers arrived"):
        await c.wait_for_workers(2, timeout=0.2)
    waiting = asyncio.ensure_future(c.wait_for_workers(2, timeout=20))
    await asyncio.sleep(0)
    assert not waiting.done()
    async with Worker(s.address, nthreads=1):
        await asyncio.wait_for(waiting, 10)


@gen_cluster(nthreads=(1,))
async def test_retire_workers_names_a_keyword_it_does_not_know(c, s, a):
    with pytest.raises(TypeError, match="not_an_option"):
        await c.retire_workers([a.address], not_an_option=1)
    assert a.address in s.state.workers  # nothing retired


def test_asynchronous_true_on_a_blocking_client_gives_awaitables_for_its_loop():
    """As in dask.distributed: ``asynchronous=True`` on a call returns what to await in
    the client's own event loop (where its other machinery runs)."""
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(inc, 1)

        async def in_the_loop():
            assert await client.gather(future, asynchronous=True) == 2
            [scattered] = await client.scatter([5], asynchronous=True)
            assert await client.get({"y": (inc, 9)}, "y", asynchronous=True) == 10
            await client.cancel([scattered], asynchronous=True)
            return True

        assert asyncio.run_coroutine_threadsafe(in_the_loop(), client.loop).result(10)
