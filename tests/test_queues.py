"""Queue: put and get with timeouts, maxsize, batches, futures as items kept alive, from
asynchronous and blocking clients and from tasks, on real clusters over TCP."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading

import numpy as np
import pytest
from conftest import apoll, gen_cluster, poll, second_client

from distributary import Client, Future, LocalCluster, Queue
from distributary.protocol import shared as sh


def inc(x):
    return x + 1


def real_clients(s) -> set:
    """The clients the scheduler knows that are not pseudo-clients holding values."""
    return {c for c in s.state.clients if not c.startswith(("queue-", "variable-", "receipt-"))}


def waiters_on(s, name, kind: str = "getters") -> int:
    """How many gets (or puts) wait on the queue ``name``."""
    queue = s.queues.queues.get(name)
    return 0 if queue is None else len(getattr(queue, kind))


# ---------------------------------------------------------------------- puts and gets


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_put_get_in_order_and_qsize(c, s, a, b):
    q = await Queue("q")
    big = np.arange(100_000)  # past the out-of-band threshold: travels as its own frame
    for item in (1, "two", {"three": [3]}, big):
        await q.put(item)
    assert await q.qsize() == 4
    assert await q.get() == 1
    assert await q.get() == "two"
    assert await q.get() == {"three": [3]}
    np.testing.assert_array_equal(await q.get(), big)
    assert await q.qsize() == 0
    assert not s.tasks  # plain values involve no key


@pytest.mark.timeout(30)
@gen_cluster()
async def test_get_on_an_empty_queue_times_out_with_timeout_error(c, s, a, b):
    q = Queue("empty", client=c)
    with pytest.raises(TimeoutError, match="empty"):
        await q.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        await q.get(timeout="50ms")
    await q.put(1)  # and the queue works on
    assert await q.get(timeout=1) == 1
    assert not s.queues.queues  # an empty unbounded queue nobody waits on is forgotten


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_waiting_get_is_answered_by_a_put_from_another_client(c, s, a, b):
    q = Queue("q", client=c)
    got = asyncio.ensure_future(q.get(timeout=10))
    await apoll(lambda: waiters_on(s, "q"))
    async with second_client(s) as c2:
        await Queue("q", client=c2).put("hello")
    assert await got == "hello"


@pytest.mark.timeout(30)
@gen_cluster()
async def test_gets_are_served_first_come_first_served(c, s, a, b):
    q = Queue("q", client=c)
    first = asyncio.ensure_future(q.get())
    await apoll(lambda: waiters_on(s, "q") == 1)
    second = asyncio.ensure_future(q.get())
    await apoll(lambda: waiters_on(s, "q") == 2)
    await q.put("a")
    await q.put("b")
    assert (await first, await second) == ("a", "b")


@pytest.mark.timeout(30)
@gen_cluster()
async def test_maxsize_makes_puts_wait_or_time_out(c, s, a, b):
    q = await Queue("bounded", client=c, maxsize=2)
    await q.put(1)
    await q.put(2)
    with pytest.raises(TimeoutError, match="full"):
        await q.put(3, timeout=0.05)
    assert await q.qsize() == 2
    waiting = asyncio.ensure_future(q.put(3))
    await apoll(lambda: waiters_on(s, "bounded", "putters"))
    assert not waiting.done()
    assert await q.get() == 1
    await waiting  # let in by the get
    assert [await q.get(), await q.get()] == [2, 3]
    # The bound belongs to the queue: a handle without one puts into the same queue.
    other = Queue("bounded", client=c)
    await other.put(4)
    await other.put(5)
    with pytest.raises(TimeoutError):
        await other.put(6, timeout=0.05)
    assert "bounded" in s.queues.queues


@pytest.mark.timeout(30)
def test_maxsize_is_fixed_when_a_blocking_client_makes_the_queue(c):
    Queue("q", maxsize=1)
    by_name = Queue("q")  # as a task would make it: no bound of its own
    by_name.put(1)
    with pytest.raises(TimeoutError):
        by_name.put(2, timeout=0.05)
    assert by_name.get() == 1


@pytest.mark.timeout(30)
@gen_cluster()
async def test_batches(c, s, a, b):
    q = await Queue("q", client=c, maxsize=5)
    assert await q.get(batch=True) == []  # at once, even empty
    for i in range(4):
        await q.put(i)
    assert await q.get(batch=2) == [0, 1]
    assert await q.get(batch=True) == [2, 3]
    assert await q.get(batch=0) == []
    await q.put(10)
    with pytest.raises(TimeoutError):
        await q.get(batch=2, timeout=0.05)
    assert await q.qsize() == 1  # all or nothing: the timed-out get took none
    waiting = asyncio.ensure_future(q.get(batch=2))
    await apoll(lambda: waiters_on(s, "q"))
    await q.put(11)
    assert await waiting == [10, 11]
    with pytest.raises(ValueError, match="at most 5"):
        await q.get(batch=6)
    with pytest.raises(ValueError, match="batch"):
        q.get(batch=-1)
    with pytest.raises(TypeError, match="batch"):
        q.get(batch="all")


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_get_given_up_by_its_caller_takes_nothing(c, s, a, b):
    q = Queue("q", client=c)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)  # the caller gives up, not the scheduler
    await q.put("kept")
    assert await q.get(timeout=5) == "kept"


# ---------------------------------------------------------------------- futures as items


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_a_future_keeps_its_data_while_queued_and_comes_out_working(c, s, a, b):
    q = Queue("q", client=c)
    future = c.submit(inc, 1)
    await q.put(future)  # at once: the task is still on the stream when the put is sent
    key = future.key
    del future
    gc.collect()
    await apoll(lambda: key in s.tasks and c.id not in s.tasks[key].who_wants)
    assert s.tasks[key].who_wants  # the queue's pseudo-client
    async with second_client(s) as c2:
        got = await Queue("q", client=c2).get()
        assert isinstance(got, Future) and got.client is c2 and got.key == key
        assert await got == 2
        await apoll(lambda: s.tasks[key].who_wants == (c2.id,))  # (once it confirmed)
        assert not s.shared_values.receipts
        del got
        gc.collect()
        await apoll(lambda: key not in s.tasks)
    assert real_clients(s) == set(s.state.clients)


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_future_dropped_as_its_client_gets_it_back_stays(c, s, a, b):
    q = Queue("q", client=c)
    for i in range(20):
        await q.put(c.submit(inc, i))  # dropped at once: its release races the get
        got = await q.get()
        assert await got == i + 1


@pytest.mark.timeout(30)
@gen_cluster()
async def test_what_is_held_for_a_client_that_leaves_before_it_confirms_goes(c, s, a, b):
    future = c.submit(inc, 1)
    await Queue("q", client=c).put(future)
    key = future.key
    del future
    gc.collect()
    c2 = await second_client(s)
    # the request alone, as a client that leaves before making its futures sends it
    (reply,) = await c2._call_scheduler(sh.QueueGet("q", client=c2.id))
    assert reply.keys == (key,) and s.shared_values.receipts == {c2.id: {reply.receipt}}
    await apoll(lambda: s.tasks[key].who_wants == (reply.receipt,))
    await c2.close()
    await apoll(lambda: key not in s.tasks)
    assert not s.shared_values.receipts and set(s.state.clients) == {c.id}


@pytest.mark.timeout(30)
@gen_cluster()
async def test_futures_nested_in_items_and_in_batches(c, s, a, b):
    q = Queue("q", client=c)
    x, y = c.map(inc, [1, 2])
    await q.put({"x": x, "again": x})
    await q.put([y, "text"])
    first, second = await q.get(batch=2)
    assert first["x"] is first["again"]
    assert await first["x"] == 2 and await second[0] == 3 and second[1] == "text"


@pytest.mark.timeout(30)
@gen_cluster()
async def test_putting_a_released_future_fails_and_names_its_key(c, s, a, b):
    q = Queue("q", client=c)
    future = c.submit(inc, 1)
    await future
    await c.cancel([future])
    await apoll(lambda: future.key not in s.tasks)
    with pytest.raises(ValueError, match=future.key):
        await q.put(future)
    assert await q.qsize() == 0


def produce(n):
    from distributary import get_client

    client = get_client()
    q = Queue("work")
    for i in range(n):
        q.put(client.submit(inc, i))
    q.put(None)
    return n


def consume(q):
    total = 0
    while (future := q.get(timeout=20)) is not None:
        total += future.result()
    return total


@pytest.mark.timeout(60)
def test_producer_and_consumer_tasks_pass_futures_through_a_queue():
    with (
        LocalCluster(processes=False, n_workers=2, threads_per_worker=2) as cluster,
        Client(cluster) as client,
    ):
        q = Queue("work")
        consumer = client.submit(consume, q)  # the Queue travels pickled
        producer = client.submit(produce, 10)
        assert producer.result(timeout=30) == 10
        assert consumer.result(timeout=30) == sum(range(1, 11))
        poll(lambda: real_clients(cluster.scheduler) == set(cluster.scheduler.state.clients))


def put_squares(n):
    q = Queue("squares")
    for i in range(n):
        q.put(i * i)
    return n


@pytest.mark.timeout(60)
def test_tasks_in_worker_processes_put_into_a_queue():
    with (
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(put_squares, [3, 4])
        assert client.gather(futures) == [3, 4]
        got = Queue("squares").get(batch=7, timeout=10)
        assert sorted(got) == sorted([0, 1, 4, 0, 1, 4, 9])


# ---------------------------------------------------------------------- the objects


@pytest.mark.timeout(30)
def test_names_pickling_and_bad_arguments(c):
    assert Queue().name != Queue().name
    assert Queue().name.startswith("queue-")
    q = pickle.loads(pickle.dumps(Queue("x", maxsize=3)))
    assert (q.name, q.maxsize) == ("x", 3)
    assert repr(q) == "<Queue: 'x'>"
    assert Queue(["a", 1]).name == ("a", 1)
    with pytest.raises(TypeError, match="maxsize"):
        Queue("x", maxsize="3")
    with pytest.raises(TypeError, match="name"):
        Queue({"a": 1})
    with pytest.raises(TypeError, match="colour"):
        Queue("x", colour="red")
    with pytest.raises(TypeError, match="block"):
        Queue("x").get(block=True)
    with pytest.raises(ValueError, match="negative"):
        Queue("x").get(timeout=-1)
    with pytest.raises(TypeError, match="serialize"):
        Queue("x").put(threading.Lock())
    Queue("x").put(1)
    assert Queue("x").get() == 1  # the queue works on after the mistakes


@pytest.mark.timeout(30)
def test_a_queue_of_a_closed_client_raises_a_clear_error(cluster):
    with Client(cluster) as client:
        q = Queue("x", client=client)
        q.put(1)
    with pytest.raises(RuntimeError, match="closed"):
        q.put(2)
    with pytest.raises(RuntimeError, match="closed"):
        q.get(timeout=1)


@pytest.mark.timeout(30)
@gen_cluster()
async def test_an_asynchronous_queue_of_a_closed_client_raises_a_clear_error(c, s, a, b):
    c2 = await second_client(s)
    q = Queue("x", client=c2)
    await c2.close()
    with pytest.raises(RuntimeError, match="closed"):
        await q.put(1)


@pytest.mark.timeout(30)
def test_no_client_is_a_clear_error():
    q = Queue("x")
    with pytest.raises(RuntimeError, match="no client"):
        q.qsize()


@pytest.mark.timeout(30)
@gen_cluster()
async def test_the_waits_of_a_client_that_leaves_are_dropped(c, s, a, b):
    future = c.submit(inc, 1)
    await Queue("full", client=c, maxsize=1).put(0)
    c2 = await second_client(s)
    q2 = Queue("empty", client=c2)
    full2 = Queue("full", client=c2, maxsize=1)
    get = asyncio.ensure_future(q2.get())
    put = asyncio.ensure_future(full2.put(future))
    await apoll(lambda: waiters_on(s, "empty") and waiters_on(s, "full", "putters"))
    assert len(s.state.clients) == 3  # two clients, and the pseudo-client of the waiting put
    await c2.close()
    for task in (get, put):
        with pytest.raises((OSError, RuntimeError)):  # (its connection closed)
            await task
    await apoll(lambda: "empty" not in s.queues.queues)
    await apoll(lambda: not waiters_on(s, "full", "putters"))
    assert set(s.state.clients) == {c.id}  # the waiting put's hold is gone too
    assert await Queue("full", client=c).get() == 0
    assert not s.queues.queues["full"].items
