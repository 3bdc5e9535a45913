"""Dask graphs and collections on the cluster: ``Client.get``, ``compute``, ``persist``,
``futures_of`` and the default-client hook that makes ``dask.compute`` run here.

Everything runs on real schedulers and workers over TCP.  Tests that count how often a
function ran use in-process workers (``processes=False``) and a module-level counter; the
peak-memory test runs worker processes and reads their resident memory with psutil.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from operator import add

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import apoll, gen_cluster, poll
from dask._task_spec import Alias, DataNode, List, Task, TaskRef
from dask.highlevelgraph import HighLevelGraph

from distributary import (
    Client,
    Future,
    LocalCluster,
    Scheduler,
    Worker,
    futures_of,
    get_worker,
    wait,
)
from distributary.client.graphs import GraphError

# ---------------------------------------------------------------------------- helpers

CALLS: Counter = Counter()  # name -> calls, for in-process workers (processes=False)
_CALLS_LOCK = threading.Lock()


def count(name: str) -> None:
    with _CALLS_LOCK:
        CALLS[name] += 1


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def inc(x):
    return x + 1


def double_counted(block):
    if block.size:  # not map_blocks' call on an empty array for the metadata
        count("double")
    return block * 2


def inc_counted(x):
    count("inc")
    return x + 1


def where(*_):
    """The address of the worker running this task, or ``"local"`` outside a worker."""
    try:
        return get_worker().address
    except ValueError:
        return "local"


class ChunkError(Exception):
    pass


def fail_on_block(block, bad: int):
    if bad in block:
        raise ChunkError(f"bad value {bad} in this chunk")
    return block.astype(float)


def slow_double(block):
    time.sleep(0.01)
    return block * 2


@pytest.fixture
def tcp_cluster():
    """Two single-threaded in-process workers, reached over TCP."""
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1, protocol="tcp") as cl:
        yield cl


@pytest.fixture
def client(tcp_cluster):
    with Client(tcp_cluster) as client:
        yield client


def worker_addresses(client) -> set:
    return set(client.scheduler_info()["workers"])


# ---------------------------------------------------------------------------- Client.get


@gen_cluster()
async def test_get_legacy_graph(c, s, a, b):
    dsk = {"x": 1, "y": (add, "x", 2), "z": (add, "y", (inc, "x"))}
    assert await c.get(dsk, "y") == 3
    assert await c.get(dsk, ["y", "z"]) == [3, 5]
    assert await c.get(dsk, [["z"], "x", ["y", ["x", "z"]]]) == [[5], 1, [3, [1, 5]]]
    assert await c.get(dsk, []) == []


@gen_cluster()
async def test_get_sync_false_returns_futures(c, s, a, b):
    dsk = {"x": 1, "y": (add, "x", 2)}
    futures = c.get(dsk, ["y", ["x"]], sync=False)
    assert isinstance(futures[0], Future) and isinstance(futures[1][0], Future)
    assert futures[0].key == "y"
    assert await c.gather(futures) == [3, [1]]


@gen_cluster()
async def test_get_sends_only_what_is_needed(c, s, a, b):
    dsk = {"x": 1, "y": (add, "x", 2), "unrelated": (inc, 100)}
    assert await c.get(dsk, "y") == 3
    assert "unrelated" not in s.tasks


@gen_cluster()
async def test_get_task_spec_graph(c, s, a, b):
    dsk = {
        "a": Task("a", add, 1, 2),
        "b": DataNode("b", 10),
        "c": Task("c", add, TaskRef("a"), TaskRef("b")),
        "d": Alias("d", "c"),
        "e": Task("e", sum, List(TaskRef("a"), TaskRef("c"), 100)),
        "f": Task("f", dict, x=TaskRef("b"), y=TaskRef("d")),
    }
    assert await c.get(dsk, ["a", "b", "c", "d"]) == [3, 10, 13, 13]
    # "a" and "c" are sent again: the futures of the last call are gone, their keys
    # on their way to being released
    assert await c.get(dsk, "e") == 116
    assert await c.get(dsk, "f") == {"x": 10, "y": 13}


@gen_cluster()
async def test_get_mixed_legacy_and_task_spec(c, s, a, b):
    dsk = {"x": DataNode("x", 5), "y": (inc, "x"), "z": Task("z", add, TaskRef("y"), 1)}
    assert await c.get(dsk, "z") == 7


@gen_cluster()
async def test_get_with_futures_in_graph(c, s, a, b):
    f = c.submit(inc, 1)  # 2
    g = await c.scatter(10)
    dsk = {
        "a": f,  # a future as a value: "a" is that future's data
        "b": (add, "a", 10),  # 12
        "c": (add, f, g),  # futures inside a legacy task: 12
        "d": Task("d", add, f, TaskRef("b")),  # a future inside a Task: 14
        "e": Task("e", sum, List(f, g, TaskRef("c"))),  # in nested arguments: 24
    }
    assert await c.get(dsk, ["a", "b", "c", "d", "e"]) == [2, 12, 12, 14, 24]
    # The futures were dependencies on data already there, not copies of their tasks.
    assert [t[2] for t in s.story(f.key)].count("memory") == 1
    assert "processing" not in [t[2] for t in s.story(g.key)]
    assert await f == 2


@gen_cluster()
async def test_get_future_key_aliased_to_itself(c, s, a, b):
    # A persisted collection's graph maps each key to its own future.
    f = c.submit(inc, 41)
    dsk = {f.key: f, "y": (inc, f.key)}
    assert await c.get(dsk, "y") == 43
    assert await c.get(dsk, f.key) == 42


@gen_cluster()
async def test_get_high_level_graph(c, s, a, b):
    layers = {
        "data": {("data", i): i for i in range(4)},
        "inc": {("inc", i): (inc, ("data", i)) for i in range(4)},
        "total": {"total": (sum, [("inc", i) for i in range(4)])},
    }
    deps = {"data": set(), "inc": {"data"}, "total": {"inc"}}
    hlg = HighLevelGraph(layers, deps)
    assert await c.get(hlg, "total") == 10
    assert await c.get(hlg, [("inc", 0), ("inc", 3)]) == [1, 4]
    assert await c.get(hlg, ("inc", 2)) == 3  # a lone tuple key is one key
    assert await c.get(hlg, [[("data", 1)], "total"]) == [[1], 10]


# ---------------------------------------------------------------------------- bad graphs


_sentinels = itertools.count()


async def _assert_rejected(c, s, dsk, keys, match: str) -> None:
    before = set(s.tasks)
    with pytest.raises(GraphError, match=match) as info:
        await c.get(dsk, keys)
    assert isinstance(info.value, ValueError)
    assert set(s.tasks) == before
    assert not any(k in c.futures for k in dsk)
    # The cluster still works; anything the bad graph had sent would have arrived first.
    # (a key of its own: an earlier sentinel may still be on its way out)
    sentinel = c.submit(inc, len(before), key=f"sentinel-{next(_sentinels)}")
    assert await sentinel == len(before) + 1
    assert set(s.tasks) - before == {sentinel.key}
    assert not any(k in s.tasks for k in dsk)


@gen_cluster()
async def test_get_missing_dependency(c, s, a, b):
    dsk = {"x": DataNode("x", 1), "y": Task("y", add, TaskRef("x"), TaskRef("missing"))}
    await _assert_rejected(c, s, dsk, "y", "missing")


@gen_cluster()
async def test_get_cycle(c, s, a, b):
    await _assert_rejected(c, s, {"p": (inc, "q"), "q": (inc, "p")}, "p", "cycle")
    longer = {
        "start": 1,
        "a": (add, "start", "c"),
        "b": (inc, "a"),
        "c": (inc, "b"),
        "end": (inc, "b"),
    }
    await _assert_rejected(c, s, longer, "end", "cycle")
    spec = {
        "m": Task("m", inc, TaskRef("n")),
        "n": Task("n", inc, TaskRef("m")),
    }
    await _assert_rejected(c, s, spec, ["m"], "cycle")


@gen_cluster()
async def test_get_unknown_key(c, s, a, b):
    dsk = {"x": 1, "y": (inc, "x")}
    await _assert_rejected(c, s, dsk, "nope", "nope")
    await _assert_rejected(c, s, dsk, ["y", ["nope"]], "nope")
    assert await c.get(dsk, "y") == 2


def test_get_bad_graph_blocking(client):
    with pytest.raises(GraphError, match="missing"):
        client.get({"y": Task("y", inc, TaskRef("missing"))}, "y")
    with pytest.raises(ValueError):
        client.get({"x": 1}, "unknown")
    assert client.get({"x": 1, "y": (inc, "x")}, "y") == 2
    assert da.arange(10, chunks=3).sum().compute() == 45


# ---------------------------------------------------------------------------- errors in chunks


@gen_cluster()
async def test_error_in_one_chunk(c, s, a, b):
    x = da.arange(100, chunks=10)
    bad = x.map_blocks(fail_on_block, 55, dtype=float)
    good = da.arange(200, chunks=10).map_blocks(slow_double, dtype=int)
    bad_future, good_future = c.compute([bad.sum(), good.sum()])
    with pytest.raises(ChunkError, match="bad value 55 in this chunk"):
        await bad_future
    assert bad_future.status == "error"
    assert await good_future == 2 * sum(range(200))
    # the same failing chunk, asked for again, errs again rather than hanging
    with pytest.raises(ChunkError, match="bad value 55"):
        await c.compute(bad.max())
    # the same function on chunks without the bad value works
    assert await c.compute(x[:50].map_blocks(fail_on_block, 55, dtype=float).sum()) == sum(
        range(50)
    )


def test_error_in_one_chunk_blocking(client):
    x = da.arange(100, chunks=10).map_blocks(fail_on_block, 5, dtype=float)
    other = client.compute(da.arange(300, chunks=10).map_blocks(slow_double, dtype=int).sum())
    with pytest.raises(ChunkError, match="bad value 5 in this chunk"):
        x.sum().compute()
    with pytest.raises(ChunkError, match="bad value 5"):
        dask.compute(x.mean(), x.max())
    assert other.result() == 2 * sum(range(300))
    assert client.compute(da.ones(10, chunks=2).sum(), sync=True) == 10


# ---------------------------------------------------------------------------- dask.array


def test_array_operations(client):
    rng = np.random.default_rng(0)
    arr = rng.random((60, 40))
    x = da.from_array(arr, chunks=(15, 10))
    np.testing.assert_allclose((x + 1).compute(), arr + 1)
    np.testing.assert_allclose((np.sin(x) * 2 - x**2).compute(), np.sin(arr) * 2 - arr**2)
    np.testing.assert_allclose(x.sum().compute(), arr.sum())
    np.testing.assert_allclose(x.mean(axis=0).compute(), arr.mean(axis=0))
    np.testing.assert_allclose(x.std(axis=1).compute(), arr.std(axis=1))
    np.testing.assert_allclose(x.max().compute(), arr.max())
    np.testing.assert_array_equal(x.argmin(axis=0).compute(), arr.argmin(axis=0))
    np.testing.assert_allclose((x @ x.T).compute(), arr @ arr.T)
    np.testing.assert_allclose(x.T[::2, 5:].compute(), arr.T[::2, 5:])
    r = x.rechunk((20, 40))
    assert r.chunks == ((20, 20, 20), (40,))
    np.testing.assert_allclose(r.compute(), arr)
    np.testing.assert_allclose(x.rechunk((7, 13)).sum(axis=1).compute(), arr.sum(axis=1))
    np.testing.assert_allclose(
        client.compute(da.cumsum(x, axis=0), sync=True), np.cumsum(arr, axis=0)
    )


def test_array_persist_then_reuse(client):
    arr = np.arange(64, dtype=float).reshape(8, 8)
    x = da.from_array(arr, chunks=4)
    y = x.map_blocks(double_counted, dtype=float).persist()
    futures = futures_of(y)
    assert len(futures) == 4
    assert all(isinstance(f, Future) for f in futures)
    wait(futures)
    assert all(f.status == "finished" for f in futures)
    assert CALLS["double"] == 4
    keys = {f.key for f in futures}

    np.testing.assert_allclose((y + 1).sum().compute(), (arr * 2 + 1).sum())
    np.testing.assert_allclose((y @ y.T).compute(), (arr * 2) @ (arr * 2).T)
    np.testing.assert_allclose(y.compute(), arr * 2)
    total, plus_one, whole = client.compute([y.sum(), (y + 1).sum(), y], sync=True)
    assert (total, plus_one) == ((arr * 2).sum(), (arr * 2 + 1).sum())
    np.testing.assert_allclose(whole, arr * 2)
    assert CALLS["double"] == 4  # the persisted chunks were used, not computed again

    # Each chunk went to memory exactly once on the scheduler.
    s = client.cluster.scheduler
    for key in keys:
        assert [t[2] for t in s.story(key)].count("memory") == 1, s.story(key)

    z = client.persist(y.sum(axis=0))
    assert futures_of(z)
    np.testing.assert_allclose(z.compute(), (arr * 2).sum(axis=0))
    assert CALLS["double"] == 4


def test_persisted_keys_are_tuples(client):
    x = da.ones((4, 6), chunks=2)
    y = client.persist(x + 1)
    futures = futures_of(y)
    assert len(futures) == 6
    keys = {f.key for f in futures}
    assert keys == set(da.core.flatten((x + 1).__dask_keys__()))
    assert all(isinstance(k, tuple) and len(k) == 3 for k in keys)
    wait(futures)
    who_has = client.who_has(futures)
    assert set(who_has) == keys
    assert all(isinstance(k, tuple) for k in who_has)
    workers = worker_addresses(client)
    assert all(who_has[k] and set(who_has[k]) <= workers for k in keys)
    data = client.gather(futures)
    assert all(isinstance(d, np.ndarray) and d.shape == (2, 2) and (d == 2).all() for d in data)
    by_key = client.gather({f.key: f for f in futures})
    assert set(by_key) == keys
    assert client.get(y.__dask_graph__(), list(y.__dask_keys__()[0]))[0].shape == (2, 2)


# ---------------------------------------------------------------------------- dask.dataframe


def _frames():
    rng = np.random.default_rng(1)
    left = pd.DataFrame(
        {
            "id": rng.integers(0, 20, 400),
            "group": rng.choice(list("abcde"), 400),
            "value": rng.random(400),
        }
    )
    right = pd.DataFrame({"id": np.arange(20), "weight": np.arange(20) * 1.5})
    return left, right


def assert_same(got, expected, sort: list | None = None) -> None:
    """Equal to pandas up to dtypes of strings (dask turns them into its own string dtype)."""
    if sort is not None:
        got = got.sort_values(sort).reset_index(drop=True)
        expected = expected.sort_values(sort).reset_index(drop=True)
    else:
        got = got.sort_index()
        expected = expected.sort_index()
    check = dict(check_dtype=False, check_index_type=False)
    if isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, **check)
    else:
        pd.testing.assert_frame_equal(got, expected, **check)


def test_dataframe_groupby(client):
    left, _ = _frames()
    ddf = dd.from_pandas(left, npartitions=5)
    agg = ddf.groupby("group").value.agg(["sum", "mean", "count"])
    got = agg.compute()
    assert_same(got, left.groupby("group").value.agg(["sum", "mean", "count"]))
    pd.testing.assert_frame_equal(got.sort_index(), agg.compute(scheduler="sync").sort_index())
    assert_same(ddf.groupby("group").value.sum().compute(), left.groupby("group").value.sum())
    many = ddf.groupby("id").agg({"value": "max", "group": "count"}, split_out=3)
    assert many.npartitions == 3
    assert_same(many.compute(), left.groupby("id").agg({"value": "max", "group": "count"}))
    assert set(ddf.map_partitions(lambda df: pd.Series([where()])).compute()) <= (
        worker_addresses(client)
    )


def test_dataframe_merge_and_set_index(client):
    left, right = _frames()
    ddf = dd.from_pandas(left, npartitions=4)
    expected = left.merge(right, on="id")
    sort = ["id", "group", "value"]
    got = ddf.merge(dd.from_pandas(right, npartitions=1), on="id").compute()
    assert_same(got, expected, sort)
    # a hash join of two multi-partition frames: a shuffle of both sides
    dright = dd.from_pandas(right.sample(frac=1, random_state=0), npartitions=3)
    joined = ddf.merge(dright, on="id", how="inner", shuffle_method="tasks")
    assert_same(joined.compute(), expected, sort)
    indexed = ddf.set_index("value")  # computes quantiles on the cluster for divisions
    assert indexed.known_divisions
    got = indexed.compute()
    assert got.index.is_monotonic_increasing
    assert_same(got, left.set_index("value"))
    assert len(ddf) == len(left)
    assert_same(indexed.loc[0.5:].compute(), left.set_index("value").sort_index().loc[0.5:])


def test_dataframe_persist(client):
    left, _ = _frames()
    ddf = dd.from_pandas(left, npartitions=4).persist()
    assert len(futures_of(ddf)) == 4
    wait(futures_of(ddf))
    assert_same(ddf.compute(), left)
    assert_same(ddf.groupby("group").value.mean().compute(), left.groupby("group").value.mean())
    big = client.persist(ddf[ddf.value > 0.5])
    assert len(futures_of(big)) == 4
    assert_same(big.compute(), left[left.value > 0.5])


# ---------------------------------------------------------------------------- dask.bag


def test_bag(client):
    b = db.from_sequence(range(100), npartitions=7)
    assert b.map(inc).filter(lambda v: v % 3 == 0).compute() == [
        v + 1 for v in range(100) if (v + 1) % 3 == 0
    ]
    assert b.fold(add).compute() == sum(range(100))
    assert b.fold(lambda acc, v: acc + v * v, add, initial=0).compute() == sum(
        v * v for v in range(100)
    )
    assert b.map(lambda v: v % 4).frequencies(sort=True).compute() == [
        (0, 25),
        (1, 25),
        (2, 25),
        (3, 25),
    ]
    assert dict(b.foldby(lambda v: v % 2, add, 0).compute()) == {0: 2450, 1: 2500}
    assert set(b.map(where).compute()) <= worker_addresses(client)


# ---------------------------------------------------------------------------- dask.delayed


def _diamond(start: int):
    shared = dask.delayed(inc_counted)(start)
    left = dask.delayed(add)(shared, 10)
    right = dask.delayed(add)(shared, 20)
    total = dask.delayed(add)(left, right)
    return shared, left, right, total


def test_delayed_shared_dependency_runs_once(client):
    # a fresh graph each time (another start value): results of the last one may still
    # be on the cluster while their release is on its way, and would be reused
    shared, left, right, total = _diamond(1)
    assert total.compute() == 34
    assert CALLS["inc"] == 1
    shared, left, right, total = _diamond(2)
    assert dask.compute(total, left, right, shared) == (36, 13, 23, 3)
    assert CALLS["inc"] == 2
    shared, left, right, total = _diamond(3)
    assert client.compute([left, right, total], sync=True) == [14, 24, 38]
    assert CALLS["inc"] == 3
    shared, left, right, total = _diamond(4)
    assert client.get(total.__dask_graph__(), [left.key, [total.key]]) == [15, [40]]
    assert CALLS["inc"] == 4


def test_recompute_after_release(client):
    """A graph sent again while the keys of its last run are being released."""
    for _ in range(20):
        shared, left, right, total = _diamond(7)
        assert dask.compute(left, right) == (18, 28)
        assert total.compute() == 46
    assert 1 <= CALLS["inc"] <= 40


def test_delayed_with_futures(client):
    f = client.submit(inc, 40)  # 41
    d = dask.delayed(inc)(f)
    assert d.compute() == 42
    assert client.compute(d, sync=True) == 42
    assert dask.delayed(sum)([f, f, 1]).compute() == 83
    data = client.scatter(np.arange(5))
    x = da.from_delayed(dask.delayed(data), shape=(5,), dtype=int)
    assert x.sum().compute() == 10
    assert (x * 2).persist().compute().tolist() == [0, 2, 4, 6, 8]
    assert f.result() == 41 and CALLS["inc"] == 0


def test_delayed_diamond_chain(client):
    root = dask.delayed(inc_counted)(0)
    layer = [root]
    for _ in range(5):
        layer = [dask.delayed(add)(layer[0], layer[-1]), dask.delayed(inc)(layer[-1])]
    assert dask.compute(*layer) == dask.compute(*layer, scheduler="sync")
    assert CALLS["inc"] == 2  # once on the cluster, once synchronously


def test_delayed_shared_dependency_processes(tmp_path):
    marker = tmp_path / "calls"

    def record(x):
        with open(marker, "a") as f:
            f.write("x\n")
        return x * 10

    with (
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        shared = dask.delayed(record)(4)
        parts = [dask.delayed(add)(shared, i) for i in range(6)]
        total = dask.delayed(sum)(parts)
        assert total.compute() == 6 * 40 + sum(range(6))
        assert marker.read_text().count("x") == 1
        assert set(dask.compute(*[dask.delayed(where)(p) for p in parts])) <= set(
            client.scheduler_info()["workers"]
        )


# ---------------------------------------------------------------------------- default client


@pytest.fixture
def local_pool():
    """A thread pool for dask's local threaded scheduler, shut down after the test (dask's
    own default pool would outlive the test and count as leaked threads)."""
    pool = ThreadPoolExecutor(2)
    with dask.config.set(pool=pool):
        yield pool
    pool.shutdown(wait=True)


def where_block(block):
    return np.array([where()], dtype=object)


def test_default_client_runs_dask_compute_on_the_cluster(tcp_cluster, local_pool):
    before = dask.config.get("scheduler", None)
    task = dask.delayed(where)()
    chunks = da.arange(20, chunks=5).map_blocks(where_block, dtype=object)
    assert task.compute() == "local"
    assert set(chunks.compute()) == {"local"}
    with Client(tcp_cluster) as client:
        addresses = worker_addresses(client)
        assert len(addresses) == 2
        assert dask.config.get("scheduler") is client
        assert task.compute() in addresses
        many = [dask.delayed(where)(i) for i in range(10)]
        assert set(dask.compute(*many)) <= addresses
        assert set(chunks.compute()) <= addresses
        persisted, persisted_chunks = dask.persist(dask.delayed(where)("p"), chunks)
        assert len(futures_of(persisted)) == 1
        assert len(futures_of(persisted_chunks)) == 4
        assert persisted.compute() in addresses
        assert set(persisted_chunks.compute()) <= addresses
        del persisted, persisted_chunks
        target = sorted(addresses)[0]  # options of dask.compute reach Client.get
        assert dask.compute(dask.delayed(where)("w"), workers=[target]) == (target,)
    assert dask.config.get("scheduler", None) == before
    assert task.compute() == "local"
    assert dask.compute(dask.delayed(where)(1))[0] == "local"
    assert set(chunks.compute()) == {"local"}


def test_closing_restores_the_previous_scheduler(tcp_cluster):
    with dask.config.set(scheduler="sync"):
        with Client(tcp_cluster) as client:
            assert dask.config.get("scheduler") is client
            assert dask.delayed(where)().compute() in worker_addresses(client)
        assert dask.config.get("scheduler") == "sync"
        assert dask.delayed(where)().compute() == "local"


def test_not_default_client_leaves_dask_alone(client):
    outer = dask.config.get("scheduler")
    assert outer is client
    with Client(client.cluster, set_as_default=False) as other:
        assert dask.config.get("scheduler") is client
        assert other.compute(dask.delayed(where)(), sync=True) in worker_addresses(other)
    assert dask.config.get("scheduler") is client
    assert dask.delayed(where)().compute() in worker_addresses(client)


def test_nested_default_clients(tcp_cluster, local_pool):
    before = dask.config.get("scheduler", None)
    with Client(tcp_cluster) as first:
        with Client(tcp_cluster) as second:
            assert dask.config.get("scheduler") is second
            assert dask.delayed(where)().compute() in worker_addresses(second)
        assert dask.config.get("scheduler") is first
        assert dask.delayed(where)().compute() in worker_addresses(first)
    assert dask.config.get("scheduler", None) == before
    assert dask.delayed(where)().compute() == "local"


def test_explicit_local_scheduler_overrides_client(client, local_pool):
    assert dask.delayed(where)().compute(scheduler="sync") == "local"
    assert dask.delayed(where)().compute(scheduler="threads") == "local"
    assert dask.delayed(where)().compute() in worker_addresses(client)


# ---------------------------------------------------------------------------- compute, persist


def test_compute_sync_and_lists(client):
    x = da.arange(10, chunks=5)
    d = dask.delayed(inc)(1)
    assert client.compute(x.sum(), sync=True) == 45
    results = client.compute([x.sum(), d, 7, "text", None], sync=True)
    assert results == [45, 2, 7, "text", None]
    futures = client.compute([x.sum(), d, 7])
    assert isinstance(futures[0], Future) and isinstance(futures[1], Future)
    assert futures[2] == 7
    assert client.gather(futures) == [45, 2, 7]
    single = client.compute(x)
    assert isinstance(single, Future)
    np.testing.assert_array_equal(single.result(), np.arange(10))
    assert client.compute(x.sum(), optimize_graph=False).result() == 45
    assert client.compute(5, sync=True) == 5
    assert client.compute([], sync=True) == []
    assert client.compute((x.sum(), d), sync=True) == [45, 2]


def test_compute_traverses_containers(client):
    x = da.arange(10, chunks=5)
    d = dask.delayed(inc)(1)
    got = client.compute([[x.sum(), 1], {"a": x.max(), "b": (d, "s")}, 3, [4]], sync=True)
    assert got == [[45, 1], {"a": 9, "b": (2, "s")}, 3, [4]]
    futures = client.compute([[x.sum(), d], 5])
    assert isinstance(futures[0], Future) and futures[1] == 5
    assert futures[0].result() == [45, 2]
    assert client.compute({"total": x.sum()}, sync=True) == {"total": 45}
    untouched = client.compute([[x.sum(), 1]], sync=True, traverse=False)
    assert untouched[0][0] is not None and untouched[0][1] == 1
    assert dask.is_dask_collection(untouched[0][0])


def test_compute_same_collection_twice(client):
    x = da.arange(10, chunks=5).map_blocks(double_counted, dtype=int).sum()
    first, second = client.compute([x, x])
    assert client.gather([first, second]) == [90, 90]
    assert CALLS["double"] == 2  # the chunks both need ran once


def test_compute_with_restrictions(client):
    addresses = sorted(worker_addresses(client))
    target = addresses[1]
    x = da.arange(40, chunks=4).map_blocks(where_block, dtype=object)
    # the output must run there (the chunks before it may run anywhere)
    future = client.compute(x, workers=[target])
    assert set(future.result()) <= set(addresses)
    assert list(client.who_has(future)[future.key]) == [target]
    future = client.compute(x, workers=target, allow_other_workers=True, priority=10)
    assert set(future.result()) <= set(addresses)
    assert client.compute(dask.delayed(where)(1), workers=[target], sync=True) == target
    f = client.compute(dask.delayed(inc)(1), retries=2, priority=-1, fifo_timeout="1s")
    assert f.result() == 2


def test_compute_and_persist_with_resources():
    async def main() -> None:
        async with Scheduler(protocol="tcp") as s:
            plain = await Worker(s.address, nthreads=1)
            gpu = await Worker(s.address, nthreads=1, resources={"GPU": 1})
            try:
                async with Client(s.address, asynchronous=True, set_as_default=False) as c:
                    x = da.arange(40, chunks=4).map_blocks(where_block, dtype=object)
                    assert set(await c.compute(x, resources={"GPU": 1})) == {gpu.address}
                    y = c.persist(x, resources={"GPU": 1})
                    await wait(futures_of(y))
                    assert set(await c.compute(y)) == {gpu.address}
                    who_has = await c.who_has(futures_of(y))
                    assert {w for ws in who_has.values() for w in ws} == {gpu.address}
                    # (x's chunks are y's, on the GPU worker: a new array for this one)
                    z = da.arange(40, chunks=5).map_blocks(where_block, dtype=object)
                    assert set(await c.compute(z, workers=[plain.address])) == {plain.address}
            finally:
                await plain.close()
                await gpu.close()

    asyncio.run(main())


_FLAKY_ATTEMPTS: Counter = Counter()


def flaky(x):
    _FLAKY_ATTEMPTS[x] += 1
    if _FLAKY_ATTEMPTS[x] < 3:
        raise RuntimeError(f"attempt {_FLAKY_ATTEMPTS[x]}")
    return x


def test_compute_retries(client):
    _FLAKY_ATTEMPTS.clear()
    assert client.compute(dask.delayed(flaky)(1), retries=2, sync=True) == 1
    assert _FLAKY_ATTEMPTS[1] == 3
    with pytest.raises(RuntimeError, match="attempt 2"):
        client.compute(dask.delayed(flaky)(2), retries=1, sync=True)


def test_persist_list(client):
    x = da.arange(30, chunks=10)
    d = dask.delayed(inc)(5)
    px, pd_, plain = client.persist([x * 2, d, 42])
    assert plain == 42
    assert len(futures_of(px)) == 3
    assert len(futures_of(pd_)) == 1
    wait(futures_of([px, pd_]))
    np.testing.assert_array_equal(px.compute(), np.arange(30) * 2)
    assert pd_.compute() == 6
    (single,) = client.persist((x + 1,))
    assert len(futures_of(single)) == 3
    both = dask.persist(x + 2, d)
    assert len(futures_of(both)) == 4
    assert np.array_equal(both[0].compute(), np.arange(30) + 2) and both[1].compute() == 6


def test_persisted_collection_outlives_nothing_else(client):
    """Persisted data stays while the collection lives, and is freed when it goes."""
    s = client.cluster.scheduler
    y = client.persist(da.ones((6, 6), chunks=3) + 5)
    keys = {f.key for f in futures_of(y)}
    wait(futures_of(y))
    assert keys <= set(s.tasks)
    del y
    poll(lambda: not keys & set(s.tasks))


# ---------------------------------------------------------------------------- asynchronous client


@gen_cluster()
async def test_async_compute_and_persist(c, s, a, b):
    x = da.arange(20, chunks=5)
    future = c.compute(x.sum())
    assert await future == 190
    y = c.persist(x + 1)
    await wait(futures_of(y))
    keys = {f.key for f in futures_of(y)}
    assert len(keys) == 4 and keys <= set(s.tasks)
    assert all(s.tasks[k].state == "memory" for k in keys)
    assert await c.compute((y * 2).sum()) == 2 * sum(range(1, 21))
    results = await c.gather(c.compute([y.sum(), 3]))
    assert results == [sum(range(1, 21)), 3]
    first_chunk = await c.get(y.__dask_graph__(), sorted(keys)[0])
    np.testing.assert_array_equal(first_chunk, np.arange(1, 6))
    del y, future
    await apoll(lambda: not keys & set(s.tasks))
    await apoll(lambda: not s.tasks)


@gen_cluster()
async def test_async_client_refuses_dask_compute(c, s, a, b):
    with pytest.raises(RuntimeError, match="asynchronous"):
        dask.delayed(inc)(1).compute()
    assert await c.compute(dask.delayed(inc)(1)) == 2


# ---------------------------------------------------------------------------- memory


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_peak_memory_of_large_sum():
    mb = 2**20
    with (
        dask.config.set({"distributed.admin.low-level-log-length": 100_000}),  # (read below)
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        pids = [nanny.process.pid for nanny in cluster.workers.values()]
        assert len(pids) == 2
        procs = [psutil.Process(pid) for pid in pids]
        baseline = [p.memory_info().rss for p in procs]
        polled = dict.fromkeys(pids, 0)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for p in procs:
                    try:
                        polled[p.pid] = max(polled[p.pid], p.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
                done.wait(0.005)

        sampler = threading.Thread(target=sample, name="rss-sampler")
        sampler.start()
        try:
            x = da.ones((100, 2_500_000), chunks=(1, 2_500_000))  # float64: 2 GB
            assert x.nbytes == 2_000_000_000 and x.npartitions == 100
            assert x.sum().compute() == 250_000_000
            unfused = client.compute((x + 1).sum(), optimize_graph=False)
            assert unfused.result() == 500_000_000
        finally:
            done.set()
            sampler.join()
        hwm = [_peak_rss(pid) for pid in pids]
        print(
            "worker RSS MB: baseline",
            [round(v / mb) for v in baseline],
            "polled peak",
            [round(polled[pid] / mb) for pid in pids],
            "VmHWM",
            [round(v / mb) for v in hwm],
        )
        # the root tasks waited on the scheduler for room on a worker
        log = cluster.scheduler.state.transition_log
        queued = {entry[0] for entry in log if entry[2] == "queued"}
        assert len(queued) >= 100, len(queued)
        for pid, peak in zip(pids, hwm):
            assert peak < 600 * mb, f"worker {pid} peaked at {peak / mb:.0f} MB"
            assert polled[pid] < 600 * mb


def test_compute_and_persist_with_per_collection_workers():
    async def main() -> None:
        async with Scheduler(protocol="tcp") as s:
            one = await Worker(s.address, nthreads=1, name="one")
            two = await Worker(s.address, nthreads=1, name="two")
            try:
                async with Client(s.address, asynchronous=True, set_as_default=False) as c:
                    a, b = dask.delayed(where)("a"), dask.delayed(where)("b")
                    placed = await c.gather(c.compute([a, b], workers={a: "one", b: [two.address]}))
                    assert placed == [one.address, two.address]
                    # a loose restriction to a worker that does not exist still runs
                    d, e = dask.delayed(where)("d"), dask.delayed(where)("e")
                    futures = c.compute(
                        [d, e], workers={d: "nobody", e: "two"}, allow_other_workers=[d]
                    )
                    done = await c.gather(futures)
                    assert done[0] in (one.address, two.address) and done[1] == two.address
                    # persist: the output chunks, fused or not, run where they are told
                    x = da.arange(20, chunks=5).map_blocks(where_block, dtype=object)
                    y = c.persist(x, workers="two")
                    assert set(await c.compute(y)) == {two.address}
                    with pytest.raises(ValueError, match="not being computed"):
                        c.compute(a, workers={e: "one"})
            finally:
                await one.close()
                await two.close()

    asyncio.run(main())


# ---------------------------------------------------------------------- big graphs
# Graphs of BACKGROUND_NODES tasks or more are ordered and pickled in a thread: these
# tests lower the threshold so that small graphs take that path.


@pytest.fixture
def background_graphs(monkeypatch):
    import distributary.client.collections as collections_module

    monkeypatch.setattr(collections_module, "BACKGROUND_NODES", 2)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def _tree(leaves: int):
    level = [dask.delayed(inc)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2])]
    return level[0]


@pytest.mark.usefixtures("background_graphs")
@gen_cluster()
async def test_big_graph_built_in_a_thread_computes(c, s, a, b):
    tree = _tree(64)
    assert await c.compute(tree) == sum(range(1, 65))
    # what was sent after the graph waited for it: the same keys again are not resent
    x = c.compute(tree)
    y = c.submit(inc, 1)
    assert await x == sum(range(1, 65)) and await y == 2


@pytest.mark.usefixtures("background_graphs")
@gen_cluster()
async def test_big_graph_that_cannot_be_pickled_errs_its_futures(c, s, a, b):
    bad = dask.delayed(lambda x, y: x)(dask.delayed(inc)(1), Unpicklable())
    future = c.compute(bad)
    with pytest.raises(TypeError, match="refuses to be pickled"):
        await future
    assert await c.submit(inc, 2) == 3  # the client goes on


@pytest.mark.usefixtures("background_graphs")
@gen_cluster()
async def test_big_graph_released_before_it_is_sent_leaves_nothing(c, s, a, b):
    future = c.compute(_tree(32))
    key = future.key
    del future  # its release is queued behind the graph, never before it
    marker = c.submit(inc, 10, key="marker")
    assert await marker == 11
    await apoll(lambda: set(s.state.tasks) == {"marker"})
    assert key not in s.state.tasks


# ---------------------------------------------------------------------- graphs in parts
# A graph or a map goes to the scheduler in parts of distributed.client.graph-part-tasks
# tasks; these tests make the parts tiny.


@pytest.fixture
def tiny_parts():
    with dask.config.set({"distributed.client.graph-part-tasks": 3}):
        yield


def _parts_received(s, keys) -> int:
    """How many update-graph messages brought these keys to the scheduler."""
    return len({entry[3] for entry in s.story(*keys) if entry[1] == "released"})


async def _graph_in_parts_computes_and_keeps_only_what_is_wanted(c, s):
    tree = _tree(32)
    keys = list(dict(tree.__dask_graph__()))
    future = c.compute(tree)
    assert await future == sum(range(1, 33))
    assert _parts_received(s, keys) == -(-len(keys) // 3)  # 63 tasks: 21 parts
    # the keys later parts depended on were kept only until the last part was in
    rest = [ts for key, ts in s.state.tasks.items() if key != future.key]
    await apoll(lambda: all(ts.state == "released" and not ts.who_wants for ts in rest))
    assert set(c.futures) == {future.key}
    del future
    await apoll(lambda: not s.state.tasks)


@pytest.mark.usefixtures("tiny_parts")
@gen_cluster()
async def test_graph_sent_in_parts(c, s, a, b):
    await _graph_in_parts_computes_and_keeps_only_what_is_wanted(c, s)


@pytest.mark.usefixtures("tiny_parts", "background_graphs")
@gen_cluster()
async def test_graph_sent_in_parts_built_in_a_thread(c, s, a, b):
    await _graph_in_parts_computes_and_keeps_only_what_is_wanted(c, s)


@gen_cluster()
async def test_map_sent_in_batches(c, s, a, b):
    futures = c.map(inc, range(10), batch_size=3)
    assert await c.gather(futures) == list(range(1, 11))
    assert _parts_received(s, [f.key for f in futures]) == 4
    # one place in the order: the tasks of a map run in the order given
    priorities = [s.state.tasks[f.key].priority for f in futures]
    assert priorities == sorted(priorities) and len({p[:2] for p in priorities}) == 1


@gen_cluster()
async def test_map_with_an_unpicklable_argument_in_a_later_batch_sends_nothing_lasting(c, s, a, b):
    with pytest.raises(TypeError, match="refuses to be pickled"):
        c.map(inc, [1, 2, Unpicklable(), 4], batch_size=2)
    # the same calls again, fixed, before the client's loop even ran: all of them run
    # (inc(4) was never sent, and the keys sent before are wanted again)
    assert await c.gather(c.map(inc, [1, 2, 3, 4], batch_size=2)) == [2, 3, 4, 5]
    with pytest.raises(TypeError, match="refuses to be pickled"):
        c.map(inc, [10, 20, Unpicklable()], batch_size=2)
    hundred = c.submit(inc, 100)
    assert await hundred == 101  # the client goes on...
    # ...and what was sent of the failed maps is released again
    await apoll(lambda: set(s.state.tasks) == {hundred.key})
    assert set(c.futures) == {hundred.key}


@pytest.mark.usefixtures("tiny_parts", "background_graphs")
@gen_cluster()
async def test_big_graph_with_an_unpicklable_task_in_a_later_part(c, s, a, b):
    bad = dask.delayed(lambda x, y: x)(_tree(16), Unpicklable())
    future = c.compute(bad)
    with pytest.raises(TypeError, match="refuses to be pickled"):
        await future
    del future
    # the parts that were sent ran or are released: nothing is kept for them
    await apoll(lambda: not s.state.tasks)
    assert await c.submit(inc, 2) == 3
