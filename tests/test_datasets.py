"""Published datasets: Client.publish_dataset, get_dataset, list_datasets,
unpublish_dataset and Client.datasets, on real clusters over TCP.

Most tests run asynchronous clients against an in-process Scheduler and Workers
(``@gen_cluster``); the blocking ones use ``LocalCluster(processes=False)``; one test
publishes from another Python process.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import textwrap
import threading

import dask.array as da
import numpy as np
import pytest
from conftest import apoll, gen_cluster, poll, second_client

from distributary import Client, Future, futures_of
from distributary.protocol import Serialize


def inc(x):
    return x + 1


def slow_identity(x, event_name):
    EVENTS[event_name].wait(10)
    return x


EVENTS: dict[str, threading.Event] = {}


def held_anywhere(key, s, *workers) -> bool:
    """Whether the scheduler knows the key or a worker holds its data."""
    return key in s.tasks or any(key in w.data for w in workers)


# ---------------------------------------------------------------------- round trips


@gen_cluster(protocols=("tcp", "inproc"))
async def test_publish_get_list_unpublish_futures(c, s, a, b):
    futures = c.map(inc, range(5))
    # published at once: the graph is still on the stream when the request is sent
    await c.publish_dataset(futures, name="data")
    assert await c.list_datasets() == ["data"]
    async with second_client(s) as c2:
        got = await c2.get_dataset("data")
        assert isinstance(got, list) and len(got) == 5
        assert all(isinstance(f, Future) and f.client is c2 for f in got)
        assert [f.key for f in got] == [f.key for f in futures]
        assert await c2.gather(got) == [1, 2, 3, 4, 5]
        assert await got[2] == 3
    await c.unpublish_dataset("data")
    assert await c.list_datasets() == []
    with pytest.raises(KeyError, match="data"):
        await c.get_dataset("data")


@gen_cluster()
async def test_publish_scattered_data(c, s, a, b):
    futures = await c.scatter([10, 20, 30])
    await c.publish_dataset(futures, name="scattered")
    async with second_client(s) as c2:
        got = await c2.get_dataset("scattered")
        assert await c2.gather(got) == [10, 20, 30]


@gen_cluster(protocols=("tcp", "inproc"))
async def test_publish_plain_values(c, s, a, b):
    big = np.arange(100_000)  # larger than the out-of-band threshold: a separate frame
    await c.publish_dataset({"a": 1, "b": [1, 2]}, name="config")
    await c.publish_dataset(big, name="array")
    await c.publish_dataset(None, name="nothing")
    async with second_client(s) as c2:
        assert await c2.get_dataset("config") == {"a": 1, "b": [1, 2]}
        np.testing.assert_array_equal(await c2.get_dataset("array"), big)
        assert await c2.get_dataset("nothing") is None
    assert sorted(await c.list_datasets()) == ["array", "config", "nothing"]
    assert not s.tasks  # no key is involved


@gen_cluster()
async def test_futures_nested_in_objects(c, s, a, b):
    x = c.submit(inc, 1)
    y = c.submit(inc, 2)
    value = {"x": x, "nested": (1, [y, "text"]), "again": x}
    await c.publish_dataset(value, name="nested")
    async with second_client(s) as c2:
        got = await c2.get_dataset("nested")
        assert got["x"] is got["again"]  # the pickle keeps shared references shared
        assert got["x"].client is c2 and got["nested"][1][0].client is c2
        assert await got["x"] == 2 and await got["nested"][1][0] == 3
        assert got["nested"][0] == 1 and got["nested"][1][1] == "text"


@gen_cluster()
async def test_keyword_form_and_dict_form(c, s, a, b):
    x, y = c.map(inc, [1, 2])
    await c.publish_dataset(x=x, y=[y, "extra"])
    await c.publish_dataset({"z": 3, ("tuple", 1): "t", 7: "seven"})
    names = await c.list_datasets()
    assert sorted(map(str, names)) == sorted(map(str, ["x", "y", "z", ("tuple", 1), 7]))
    assert await (await c.get_dataset("x")) == 2
    got_y = await c.get_dataset("y")
    assert await got_y[0] == 3 and got_y[1] == "extra"
    assert await c.get_dataset("z") == 3
    assert await c.get_dataset(("tuple", 1)) == "t"
    assert await c.get_dataset(7) == "seven"
    assert await c.get_dataset(["z", 7]) == [3, "seven"]
    # several positional values under one name are published as a tuple
    await c.publish_dataset(1, 2, name="pair")
    assert await c.get_dataset("pair") == (1, 2)


@gen_cluster()
async def test_bad_calls(c, s, a, b):
    with pytest.raises(ValueError, match="name"):
        await c.publish_dataset(name="x")
    with pytest.raises(ValueError, match="dict"):
        await c.publish_dataset(1, 2)
    with pytest.raises(TypeError, match="serialize"):
        await c.publish_dataset(threading.Lock(), name="lock")
    assert await c.list_datasets() == []


# ---------------------------------------------------------------------- errors


@gen_cluster()
async def test_override(c, s, a, b):
    await c.publish_dataset(1, name="x")
    with pytest.raises(KeyError, match="Dataset x already exists"):
        await c.publish_dataset(2, name="x")
    with pytest.raises(KeyError, match="already exists"):
        await c.publish_dataset(x=2)
    assert await c.get_dataset("x") == 1
    await c.publish_dataset(2, name="x", override=True)
    assert await c.get_dataset("x") == 2
    assert await c.list_datasets() == ["x"]


@gen_cluster()
async def test_publishing_several_is_all_or_nothing(c, s, a, b):
    await c.publish_dataset(x=1)
    with pytest.raises(KeyError, match="already exists"):
        await c.publish_dataset(new=2, x=3)
    assert await c.list_datasets() == ["x"]


@gen_cluster()
async def test_override_frees_the_old_data_and_keeps_shared_keys(c, s, a, b):
    shared = c.submit(inc, 1)
    old = c.submit(inc, 2)
    await c.publish_dataset([shared, old], name="x")
    await c.gather([shared, old])
    shared_key, old_key = shared.key, old.key
    del shared, old
    gc.collect()
    await apoll(lambda: s.tasks[old_key].who_wants == ("published-x",))
    new = c.submit(inc, 3)
    await c.publish_dataset([Future(shared_key, c), new], name="x", override=True)
    await apoll(lambda: not held_anywhere(old_key, s, a, b))
    assert s.tasks[shared_key].state == "memory"
    got = await c.get_dataset("x")
    assert await c.gather(got) == [2, 4]


@gen_cluster()
async def test_missing_name_and_default(c, s, a, b):
    with pytest.raises(KeyError, match="nope"):
        await c.get_dataset("nope")
    assert await c.get_dataset("nope", default=None) is None
    assert await c.get_dataset("nope", default=[1]) == [1]
    await c.publish_dataset(x=1)
    assert await c.get_dataset(["x", "nope"], default=0) == [1, 0]
    with pytest.raises(KeyError, match="nope"):
        await c.get_dataset(["x", "nope"])
    await c.unpublish_dataset("nope")  # unpublishing a missing name is no error
    assert await c.list_datasets() == ["x"]


@gen_cluster()
async def test_publishing_a_released_future_fails_and_names_its_key(c, s, a, b):
    f = c.submit(inc, 1)
    await f
    key = f.key
    await c.cancel([f])
    await apoll(lambda: key not in s.tasks)
    with pytest.raises(ValueError, match=key):
        await c.publish_dataset(f, name="gone")
    assert await c.list_datasets() == []


# ---------------------------------------------------------------------- keeping data alive


@gen_cluster()
async def test_dataset_keeps_data_until_unpublished(c, s, a, b):
    f = c.submit(inc, 10)
    await c.publish_dataset(f, name="x")
    await f
    key = f.key
    del f
    gc.collect()
    # the publisher's release reached the scheduler: only the dataset wants the key now
    await apoll(lambda: c.id not in s.tasks[key].who_wants)
    assert s.tasks[key].who_wants == ("published-x",)
    assert s.tasks[key].state == "memory"
    assert any(key in w.data for w in (a, b))

    async with second_client(s) as c2:
        assert await (await c2.get_dataset("x")) == 11

    await c.unpublish_dataset("x")
    await apoll(lambda: not held_anywhere(key, s, a, b))
    assert "published-x" not in s.state.clients


@gen_cluster()
async def test_getter_keeps_data_after_unpublish(c, s, a, b):
    f = c.submit(inc, 1)
    await c.publish_dataset(f, name="x")
    key = f.key
    del f
    gc.collect()
    async with second_client(s) as c2:
        got = await c2.get_dataset("x")
        await c.unpublish_dataset("x")
        await apoll(lambda: s.tasks[key].who_wants == (c2.id,))
        assert await got == 2
        assert s.tasks[key].state == "memory"
        del got
        gc.collect()
        await apoll(lambda: not held_anywhere(key, s, a, b))


@gen_cluster()
async def test_get_twice_and_release_once(c, s, a, b):
    f = c.submit(inc, 1)
    await c.publish_dataset(f, name="x")
    key = f.key
    del f
    gc.collect()
    async with second_client(s) as c2:
        first = await c2.get_dataset("x")
        second = await c2.get_dataset("x")
        assert first.key == second.key == key
        await c.unpublish_dataset("x")
        del first
        gc.collect()
        await apoll(lambda: s.tasks[key].who_wants == (c2.id,))
        assert await second == 2
        del second
        gc.collect()
        await apoll(lambda: not held_anywhere(key, s, a, b))


@gen_cluster()
async def test_pending_futures_finish_for_the_getter(c, s, a, b):
    name = f"gate-{id(s)}"
    EVENTS[name] = threading.Event()
    try:
        f = c.submit(slow_identity, 5, name)
        await c.publish_dataset(f, name="pending")
        async with second_client(s) as c2:
            got = await c2.get_dataset("pending")
            assert got.status == "pending"
            EVENTS[name].set()
            assert await got == 5
    finally:
        EVENTS.pop(name).set()


@gen_cluster()
async def test_names_that_print_alike_have_their_own_data(c, s, a, b):
    x = c.submit(inc, 1)
    y = c.submit(inc, 2)
    await c.publish_dataset({1: x, "1": y})
    xk, yk = x.key, y.key
    del x, y
    gc.collect()
    await apoll(lambda: c.id not in {*s.tasks[xk].who_wants, *s.tasks[yk].who_wants})
    await c.unpublish_dataset(1)
    await apoll(lambda: not held_anywhere(xk, s, a, b))
    assert s.tasks[yk].who_wants and await (await c.get_dataset("1")) == 3


# ---------------------------------------------------------------------- the mapping


@gen_cluster()
async def test_datasets_mapping_asynchronous(c, s, a, b):
    await c.publish_dataset(x=1, y=2)
    assert await c.datasets["x"] == 1
    assert sorted([name async for name in c.datasets]) == ["x", "y"]
    with pytest.raises(TypeError, match="asynchronous"):
        c.datasets["z"] = 3
    with pytest.raises(TypeError, match="asynchronous"):
        del c.datasets["x"]
    with pytest.raises(TypeError, match="asynchronous"):
        len(c.datasets)


def test_datasets_mapping_blocking(c, cluster):
    s = cluster.scheduler
    futures = c.map(inc, range(3))
    c.datasets["x"] = futures
    c.datasets["y"] = "plain"
    assert "x" in c.datasets and "nope" not in c.datasets
    assert sorted(c.datasets) == ["x", "y"] and len(c.datasets) == 2
    with Client(cluster, set_as_default=False) as c2:
        got = c2.datasets["x"]
        assert all(f.client is c2 for f in got)
        assert c2.gather(got) == [1, 2, 3]
        assert c2.list_datasets() == c.list_datasets()
        assert c2.get_dataset("y") == "plain"
    keys = [f.key for f in futures]
    del c.datasets["x"]
    with pytest.raises(KeyError):
        del c.datasets["x"]
    assert list(c.datasets) == ["y"]
    del futures, got
    gc.collect()
    poll(lambda: not any(k in s.tasks for k in keys))
    with pytest.raises(KeyError, match="x"):
        c.get_dataset("x")
    assert c.get_dataset("x", default="d") == "d"
    c.unpublish_dataset("y")
    assert c.list_datasets() == []


def test_blocking_publish_from_threads(c, cluster):
    """The blocking API from several threads at once: each publish sees its futures."""
    errors = []

    def publish(i: int) -> None:
        try:
            futures = c.map(inc, range(i * 10, i * 10 + 10))
            c.publish_dataset(futures, name=f"thread-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert c.gather(c.get_dataset(f"thread-{i}")) == list(range(i * 10 + 1, i * 10 + 11))


# ---------------------------------------------------------------------- between processes

PUBLISHER = """
import sys
import dask.array as da
from distributary import Client

def inc(x):
    return x + 1

with Client(sys.argv[1], timeout=20) as client:
    client.publish_dataset(scattered=client.scatter([1, 2, 3]))
    client.publish_dataset(client.map(inc, range(4)), name="mapped")
    client.publish_dataset(array=client.persist(da.arange(12, chunks=4)))
print("published")
"""


@gen_cluster(timeout=60)
async def test_publish_in_one_process_get_in_another(c, s, a, b):
    # The scheduler runs on this event loop: wait for the child without blocking it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(PUBLISHER),
        s.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "published"
    # The publisher has gone: only the datasets keep its data.
    await apoll(lambda: len(s.state.clients) == 1 + len(s.datasets.datasets))

    scattered = await c.get_dataset("scattered")
    assert all(f.client is c for f in scattered)
    assert await c.gather(scattered) == [1, 2, 3]
    assert await c.gather(await c.get_dataset("mapped")) == [1, 2, 3, 4]
    array = await c.get_dataset("array")
    assert all(f.client is c for f in futures_of(array))
    assert await c.compute(array.sum()) == sum(range(12))


# ---------------------------------------------------------------------- dask collections


def test_persisted_array_published_by_one_client_computed_by_another(cluster):
    with Client(cluster, set_as_default=False) as c1:
        arr = c1.persist(da.arange(100, chunks=10) * 2)
        c1.publish_dataset(arr=arr)
        del arr
    # c1 is closed: the dataset alone keeps the chunks
    with Client(cluster) as c2:  # the default client: dask.compute runs on it
        got = c2.get_dataset("arr")
        assert c2.compute(got.sum()).result() == 2 * sum(range(100))
        np.testing.assert_array_equal(got.compute(), np.arange(100) * 2)
        assert futures_of(got) and all(f.client is c2 for f in futures_of(got))
        c2.unpublish_dataset("arr")
        del got
        gc.collect()
        s = cluster.scheduler
        poll(lambda: not s.tasks)


@gen_cluster(nthreads=(1,))
async def test_a_publish_waiting_for_a_flush_fails_when_its_client_leaves(c, s, a):
    other = await Client(s.address, asynchronous=True)
    request = {"op": "publish-put", "names": ["x"], "data": [Serialize(1)], "keys": [[]]}
    waiting = asyncio.ensure_future(
        c.pool.call(s.address, {**request, "client": other.id, "uid": "never"})
    )
    await apoll(lambda: "never" in s.flushes._waiting)
    await other.close()
    with pytest.raises(RuntimeError, match="is not connected to the scheduler"):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(RuntimeError, match="is not connected to the scheduler"):
        await c.pool.call(s.address, {**request, "client": "nobody", "uid": "never-2"})
    assert s.datasets.datasets == {} and s.flushes._waiting == {}
