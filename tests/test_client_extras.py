"""The rest of the Client: get_executor, replaying errors, normalize_collection,
get_restrictions, wait_for_workers, shutdown, start and current; real schedulers and
workers over TCP."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import traceback

import dask
import pytest
from conftest import gen_cluster, poll

from distributary import Client, LocalCluster, Scheduler, Worker, get_worker

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def where(x):
    return get_worker().address


def divide(a, b=1):
    return a / b


_RELEASE = threading.Event()


def blocked(x):
    _RELEASE.wait(30)
    return x


@pytest.fixture
def tcp_cluster():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp") as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


# ---------------------------------------------------------------------- get_executor


def test_executor_submit_and_map_work_with_concurrent_futures(tcp_cluster):
    cluster, c = tcp_cluster
    a, b = sorted(cluster.scheduler.workers)
    with c.get_executor(workers=[b], retries=1) as executor:
        fs = [executor.submit(inc, i) for i in range(5)]
        assert all(isinstance(f, cf.Future) for f in fs)
        done, not_done = cf.wait(fs, timeout=10)
        assert set(done) == set(fs) and not not_done
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=10)) == [1, 2, 3, 4, 5]
        assert set(executor.map(where, range(4))) == {b}  # the executor's workers=
        assert list(executor.map(inc, range(3), timeout=10, chunksize=2)) == [1, 2, 3]
        failed = executor.submit(divide, 1, b=0)
        assert isinstance(failed.exception(timeout=10), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            failed.result()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(inc, 1)
    with pytest.raises(TypeError, match="colour"):
        c.get_executor(colour="red")


def test_executor_cancellation_both_ways_and_shutdown_without_waiting(tcp_cluster):
    cluster, c = tcp_cluster
    _RELEASE.clear()
    try:
        executor = c.get_executor(pure=False)
        running = executor.submit(blocked, 1)
        waiting = executor.submit(blocked, 2)
        assert waiting.cancel()  # cancels the task on the cluster too
        poll(lambda: waiting.cancelled() and waiting.done())
        assert cf.wait([waiting], timeout=10).done == {waiting}
        with pytest.raises(cf.TimeoutError):
            list(executor.map(blocked, [3], timeout=0.2))
        executor.shutdown(wait=False)  # cancels what still runs
        assert cf.wait([running], timeout=10).done == {running} and running.cancelled()
        poll(lambda: not cluster.scheduler.state.tasks)
    finally:
        _RELEASE.set()
    assert c.submit(inc, 1).result(timeout=10) == 2


# ---------------------------------------------------------------------- replaying errors


@gen_cluster(nthreads=(1, 1))
async def test_get_futures_error_names_the_failed_task_and_its_inputs(c, s, a, b):
    x = c.submit(inc, 1, key="x")
    y = c.submit(divide, x, b=0, key="y")
    z = c.submit(inc, y, key="z")  # fails because y did
    with pytest.raises(ZeroDivisionError):
        await z
    function, args, kwargs, deps = await c.get_futures_error(z)
    assert function is divide and args == ("x",) and kwargs == {"b": 0} and deps == ["x"]
    with pytest.raises(ValueError, match="No erred futures"):
        await c.get_futures_error(x)


def test_recreate_error_locally_raises_here_with_the_inputs_fetched(tcp_cluster):
    cluster, c = tcp_cluster
    x = c.submit(inc, 1, key="x")
    y = c.submit(divide, x, b=0, key="y")
    del x  # its data is released: it is computed again to replay y
    with pytest.raises(ZeroDivisionError) as info:
        c.recreate_error_locally(y)
    last = traceback.extract_tb(info.tb)[-1]
    assert last.name == "divide" and last.filename == __file__
    assert threading.current_thread() is threading.main_thread()
    # a failed dask collection: its task is replayed as dask would run it
    total = dask.delayed(divide)(dask.delayed(inc)(1), 0)
    future = c.compute(total)
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=10)
    with pytest.raises(ZeroDivisionError):
        c.recreate_error_locally(future)


# ---------------------------------------------------------------------- collections


def test_normalize_collection_reuses_futures_this_client_holds(tcp_cluster):
    cluster, c = tcp_cluster
    part = dask.delayed(inc)(1, dask_key_name="part")
    whole = dask.delayed(inc)(part, dask_key_name="whole")
    assert c.normalize_collection(whole) is whole  # nothing held yet
    held = c.compute(part)
    assert held.result(timeout=10) == 2
    again = c.normalize_collection(whole)
    assert type(again.__dask_graph__()["part"]).__name__ == "Future"
    assert c.compute(again).result(timeout=10) == 3
    story = [finish for _, _, finish, _ in cluster.scheduler.story("part")]
    assert story.count("processing") == 1  # not computed again


def test_get_restrictions_of_collections():
    x = dask.delayed(inc)(1, dask_key_name="x")
    y = dask.delayed(inc)(2, dask_key_name="y")
    assert Client.get_restrictions([x, y], "alice", False) == ({"x": ["alice"], "y": ["alice"]}, [])
    restrictions, loose = Client.get_restrictions([x, y], {x: ["a", "b"]}, [x])
    assert restrictions == {"x": ["a", "b"]} and loose == ["x"]
    assert Client.get_restrictions([x], None, True) == ({}, [])


# ---------------------------------------------------------------------- the cluster


@gen_cluster(nthreads=(1, 1))
async def test_wait_for_workers(c, s, a, b):
    await c.wait_for_workers()  # n_workers=0: at once
    await c.wait_for_workers(2)
    with pytest.raises(TimeoutError):
        await c.wait_for_workers(3, timeout=0.1)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="n_workers"):
            await c.wait_for_workers(bad)


def test_shutdown_closes_a_cluster_the_client_did_not_start():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp")
    scheduler, workers = cluster.scheduler, list(cluster.workers.values())
    c = Client(cluster)
    assert c.submit(inc, 1).result(timeout=10) == 2
    c.shutdown()
    assert c.status == "closed" and cluster.status == "closed"
    assert scheduler.status == "closed" and all(w.status == "closed" for w in workers)
    cluster.close()  # (closed already: nothing to do)


def test_shutdown_of_a_scheduler_and_its_workers_by_address():
    async def main():
        async with Scheduler() as s:
            w = await Worker(s.address, nthreads=1)
            c = await Client(s.address, asynchronous=True)
            assert await c.submit(inc, 1) == 2
            await c.shutdown()
            assert c.status == "closed"
            await asyncio.wait_for(s.finished(), 10)
            await asyncio.wait_for(w.finished(), 10)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_start_an_asynchronous_client_and_current():
    async def main():
        async with Scheduler() as s, Worker(s.address, nthreads=1):
            c = Client(s.address, asynchronous=True)
            assert c.status == "newly-created"
            c.start()
            c.start()  # (started already: nothing more)
            assert await c is c and c.status == "running"
            try:
                assert Client.current() is c
                with pytest.raises(ValueError, match="No clients found"):
                    Client.current(allow_global=False)
                assert await c.submit(inc, 1) == 2
            finally:
                await c.close()

    asyncio.run(asyncio.wait_for(main(), 30))
