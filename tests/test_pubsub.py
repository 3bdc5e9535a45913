"""Pub and Sub: messages from clients and tasks to clients and tasks through the
scheduler, get with timeouts, iteration, the bounded buffer, and subscribers leaving."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading

import pytest
from conftest import apoll, gen_cluster, poll, second_client

from distributary import Client, LocalCluster, Pub, Sub
from distributary.scheduler.pubsub import BUFFER_LENGTH


def subscribers(s, name) -> int:
    return len(s.pubsub.topics.get(name, {}))


def only_subscriber(s, name):
    (subscriber,) = s.pubsub.topics[name].values()
    return subscriber


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_client_to_client(c, s, a, b):
    async with second_client(s) as c2:
        sub = Sub("topic", client=c2)
        await apoll(lambda: subscribers(s, "topic") == 1)
        pub = Pub("topic", client=c)
        for msg in (1, "two", {"three": 3}):
            pub.put(msg)
        assert await sub.get(timeout=5) == 1
        assert await sub.get() == "two"
        assert await sub.get(timeout="1s") == {"three": 3}


@pytest.mark.timeout(30)
@gen_cluster()
async def test_every_subscriber_gets_every_message_in_order(c, s, a, b):
    subs = [Sub("t", client=c) for _ in range(3)]
    pub = Pub("t", client=c)  # (the subscriptions went first on the same stream)
    for i in range(20):
        pub.put(i)
    for sub in subs:
        assert [await sub.get(timeout=5) for _ in range(20)] == list(range(20))
    Pub("other", client=c).put("not for them")
    with pytest.raises(TimeoutError):
        await subs[0].get(timeout=0.05)


@pytest.mark.timeout(30)
@gen_cluster()
async def test_get_times_out_with_timeout_error_and_waits_for_a_message(c, s, a, b):
    sub = Sub("t", client=c)
    with pytest.raises(TimeoutError, match="'t'"):
        await sub.get(timeout=0.05)
    got = asyncio.ensure_future(sub.get(timeout=10))
    await apoll(lambda: subscribers(s, "t") == 1)
    await apoll(lambda: only_subscriber(s, "t").getters)
    Pub("t", client=c).put("late")
    assert await got == "late"


@pytest.mark.timeout(30)
@gen_cluster()
async def test_async_for(c, s, a, b):
    sub = Sub("t", client=c)
    pub = Pub("t", client=c)
    for i in range(5):
        pub.put(i)
    received = []
    async for msg in sub:
        received.append(msg)
        if len(received) == 5:
            break
    assert received == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="async for"):
        iter(sub)


@pytest.mark.timeout(30)
def test_for_loop_and_a_blocking_get(c):
    sub = Sub("t")
    pub = Pub("t")
    for i in range(5):
        pub.put(i * 10)
    received = []
    for msg in sub:
        received.append(msg)
        if len(received) == 5:
            break
    assert received == [0, 10, 20, 30, 40]
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.05)
    with pytest.raises(TypeError, match="'for'"):
        sub.__aiter__()


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_full_buffer_drops_the_oldest_messages(c, s, a, b):
    sub = Sub("t", client=c)
    pub = Pub("t", client=c)
    extra = 5
    for i in range(BUFFER_LENGTH + extra):
        pub.put(i)
    await apoll(lambda: subscribers(s, "t") == 1)
    await apoll(lambda: only_subscriber(s, "t").dropped == extra)
    assert await sub.get(timeout=5) == extra  # the oldest went
    rest = [await sub.get(timeout=5) for _ in range(BUFFER_LENGTH - 1)]
    assert rest[-1] == BUFFER_LENGTH + extra - 1


def publish(n):
    pub = Pub("from-tasks")
    for i in range(n):
        pub.put(("task", i))
    return n


def receive(sub, n):
    return [sub.get(timeout=20) for _ in range(n)]


@pytest.mark.timeout(60)
def test_tasks_publish_to_a_client_and_receive_from_it(c, cluster):
    sub = Sub("from-tasks")
    assert c.submit(publish, 3).result(timeout=10) == 3
    assert [sub.get(timeout=5) for _ in range(3)] == [("task", i) for i in range(3)]
    to_task = Sub("to-task")  # pickled into the task, where it subscribes anew
    received = c.submit(receive, to_task, 2)
    poll(lambda: subscribers(cluster.scheduler, "to-task") == 2)
    pub = Pub("to-task")
    pub.put("a")
    pub.put("b")
    assert received.result(timeout=20) == ["a", "b"]


@pytest.mark.timeout(60)
def test_tasks_in_worker_processes_publish_to_a_client():
    with (
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        sub = Sub("from-tasks")
        assert client.gather(client.map(publish, [2, 2], pure=False)) == [2, 2]
        got = [sub.get(timeout=10) for _ in range(4)]
        assert sorted(got) == [("task", 0), ("task", 0), ("task", 1), ("task", 1)]


@pytest.mark.timeout(30)
@gen_cluster()
async def test_subscribers_go_with_their_client_and_their_sub(c, s, a, b):
    c2 = await second_client(s)
    waiting = asyncio.ensure_future(Sub("t", client=c2).get())
    kept = Sub("kept", client=c2)
    await apoll(lambda: subscribers(s, "t") == 1 and subscribers(s, "kept") == 1)
    gone = Sub("gc", client=c)
    await apoll(lambda: subscribers(s, "gc") == 1)
    del gone
    gc.collect()
    await apoll(lambda: subscribers(s, "gc") == 0)
    await c2.close()
    with pytest.raises((OSError, RuntimeError)):  # (its connection closed)
        await waiting
    await apoll(lambda: not s.pubsub.subscribers and not s.pubsub.topics)
    del kept
    Pub("t", client=c).put("nobody listens")  # and the scheduler goes on


@pytest.mark.timeout(30)
def test_pickling_names_and_bad_arguments(c):
    sub = pickle.loads(pickle.dumps(Sub("t")))
    pub = pickle.loads(pickle.dumps(Pub("t")))
    assert (sub.name, pub.name) == ("t", "t")
    assert (repr(sub), repr(pub)) == ("<Sub: 't'>", "<Pub: 't'>")
    with pytest.raises(NotImplementedError, match="worker"):
        Pub("t", worker=object())
    with pytest.raises(NotImplementedError, match="worker"):
        Sub("t", worker=object())
    with pytest.raises(TypeError, match="name"):
        Pub({"t"})
    with pytest.raises(TypeError):
        Sub()
    with pytest.raises(TypeError, match="serialize"):
        pub.put(threading.Lock())
    with pytest.raises(ValueError, match="negative"):
        sub.get(timeout=-1)
    pub.put("still works")
    assert sub.get(timeout=5) == "still works"


@pytest.mark.timeout(30)
def test_pub_and_sub_of_a_closed_client_raise_a_clear_error(cluster):
    with Client(cluster) as client:
        pub = Pub("t", client=client)
        sub = Sub("t", client=client)
    with pytest.raises(RuntimeError, match="closed"):
        pub.put(1)
    with pytest.raises(RuntimeError, match="closed"):
        sub.get(timeout=1)


@pytest.mark.timeout(30)
def test_no_client_is_a_clear_error():
    with pytest.raises(ValueError, match="No clients"):
        Sub("t")
