"""Event: set, clear, is_set and wait(timeout) across clients and tasks, on real
clusters over TCP."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from conftest import apoll, gen_cluster, poll, second_client

from distributary import Client, Event, LocalCluster


def waits_on(s, name) -> int:
    event = s.named_events.events.get(name)
    return 0 if event is None else len(event.waiters)


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_set_clear_is_set_and_wait(c, s, a, b):
    event = await Event("e", client=c)
    assert await event.is_set() is False
    assert await event.wait(timeout=0.05) is False
    assert await event.wait(timeout="10ms") is False
    await event.set()
    assert await event.is_set() is True
    assert await event.wait() is True
    assert await event.wait(timeout=0) is True
    await event.set()  # setting twice is no error
    await event.clear()
    assert await event.is_set() is False
    assert await event.wait(timeout=0.05) is False
    await event.clear()
    assert not s.named_events.events  # a cleared event nobody waits on is forgotten


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_set_from_another_client_releases_every_wait(c, s, a, b):
    event = Event("go", client=c)
    waits = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await apoll(lambda: waits_on(s, "go") == 3)
    async with second_client(s) as c2:
        await Event("go", client=c2).set()
    assert await asyncio.gather(*waits) == [True, True, True]
    assert waits_on(s, "go") == 0


def wait_for_event(event, i):
    if not event.wait(timeout=20):
        raise TimeoutError("never set")
    return i


@pytest.mark.timeout(60)
def test_an_event_set_by_one_client_releases_waiting_tasks():
    with (
        LocalCluster(processes=False, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        event = Event("start")
        futures = client.map(wait_for_event, [event] * 4, range(4))
        poll(lambda: waits_on(cluster.scheduler, "start") == 4)  # (the waits free their threads)
        assert not any(f.done() for f in futures)
        with Client(cluster, set_as_default=False) as other:
            Event("start", client=other).set()
        assert client.gather(futures) == [0, 1, 2, 3]


def set_event(name):
    Event(name).set()
    return True


@pytest.mark.timeout(60)
def test_tasks_in_worker_processes_set_and_wait():
    with (
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        waiting = client.submit(wait_for_event, Event("proc"), 7)
        assert not Event("proc").wait(timeout=0.05)
        assert client.submit(set_event, "proc").result(timeout=20)
        assert waiting.result(timeout=20) == 7
        assert Event("proc").is_set()


@pytest.mark.timeout(30)
def test_names_pickling_and_bad_arguments(c):
    assert Event().name != Event().name and Event().name.startswith("event-")
    event = pickle.loads(pickle.dumps(Event(["a", 1])))
    assert event.name == ("a", 1) and repr(event) == "<Event: ('a', 1)>"
    with pytest.raises(TypeError, match="name"):
        Event(object())
    with pytest.raises(TypeError, match="colour"):
        Event("x", colour="red")
    with pytest.raises(TypeError, match="blocking"):
        event.wait(blocking=False)
    with pytest.raises(ValueError, match="negative"):
        event.wait(timeout=-0.5)
    event.set()
    assert event.wait(timeout=1) is True


@pytest.mark.timeout(30)
def test_an_event_of_a_closed_client_raises_a_clear_error(cluster):
    with Client(cluster) as client:
        event = Event("e", client=client)
        event.set()
    for call in (event.set, event.clear, event.is_set, lambda: event.wait(timeout=1)):
        with pytest.raises(RuntimeError, match="closed"):
            call()


@pytest.mark.timeout(30)
@gen_cluster()
async def test_the_waits_of_a_client_that_leaves_are_dropped(c, s, a, b):
    c2 = await second_client(s)
    waits = [asyncio.ensure_future(Event(name, client=c2).wait()) for name in ("x", "y")]
    await apoll(lambda: waits_on(s, "x") and waits_on(s, "y"))
    await c2.close()
    for wait in waits:
        with pytest.raises((OSError, RuntimeError)):  # (its connection closed)
            await wait
    await apoll(lambda: not s.named_events.events)
    assert await Event("x", client=c).wait(timeout=0.01) is False
