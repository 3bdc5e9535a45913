"""Semaphore: at most ``max_leases`` leases at a time, shared by the clients and tasks
of a cluster and kept on the scheduler; on real clusters over TCP (and in memory where
marked), with one holder a client process killed with SIGKILL (``lock_holder.py``).
"""

from __future__ import annotations

import asyncio
import pickle
import time

import dask.config
import pytest
from conftest import apoll, gen_cluster, second_client
from lock_holder import start_holder

from distributary import Client, LocalCluster, Semaphore


def leases_and_waiters(s, name) -> tuple[int, int]:
    """How many leases of the semaphore ``name`` are held, and how many acquires wait."""
    semaphore = s.semaphores.semaphores[name]
    return len(semaphore.leases), len(semaphore.waiting)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_leases", [0, -1])
def test_max_leases_below_one_is_a_value_error(max_leases):
    with pytest.raises(ValueError, match="max_leases must be 1 or more"):
        Semaphore(max_leases, "s")


@pytest.mark.timeout(30)
def test_unsupported_arguments_say_so():
    with pytest.raises(TypeError, match="max_leases must be an int"):
        Semaphore("2")
    with pytest.raises(NotImplementedError, match="scheduler_rpc=.*not supported yet"):
        Semaphore(1, "s", scheduler_rpc=object())
    with pytest.raises(TypeError, match="unknown"):
        Semaphore(1, "s", unknown=1)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_acquire_release_and_get_value(c, s):
    sem = Semaphore(2, "s", client=c)
    assert await sem.get_value() == 0
    assert await sem.acquire() is True
    assert await sem.acquire() is True
    assert await sem.get_value() == 2
    start = time.monotonic()
    assert await Semaphore(2, "s", client=c).acquire(timeout=0.2) is False
    assert 0.2 <= time.monotonic() - start < 5
    assert await sem.acquire(timeout="50ms") is False
    assert await sem.release() is True
    assert await sem.get_value() == 1
    assert await sem.release() is True
    assert leases_and_waiters(s, "s") == (0, 0)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_a_release_hands_the_lease_to_the_first_waiter(c, s):
    holder = Semaphore(1, "s", client=c)
    await holder.acquire()
    waiters = [Semaphore(1, "s", client=c) for _ in range(2)]
    first = asyncio.ensure_future(waiters[0].acquire())
    await apoll(lambda: leases_and_waiters(s, "s") == (1, 1))
    second = asyncio.ensure_future(waiters[1].acquire())
    await apoll(lambda: leases_and_waiters(s, "s") == (1, 2))
    await holder.release()
    assert await first is True and not second.done()
    await waiters[0].release()
    assert await second is True
    await waiters[1].release()
    assert leases_and_waiters(s, "s") == (0, 0)


@pytest.mark.timeout(30)
def test_release_of_a_lease_not_held_is_a_runtime_error(c):
    sem = Semaphore(1, "s", client=c)
    with pytest.raises(RuntimeError, match="released more often than acquired"):
        sem.release()
    with sem:
        assert sem.get_value() == 1
    with pytest.raises(RuntimeError, match="released more often than acquired"):
        sem.release()
    assert sem.acquire(timeout=5)  # the cluster still works
    sem.release()


@pytest.mark.timeout(30)
def test_one_name_with_two_max_leases_is_a_value_error(c):
    Semaphore(2, "s", client=c).register()
    with pytest.raises(ValueError, match="Inconsistent max leases"):
        Semaphore(3, "s", client=c).acquire()
    assert Semaphore(2, "s", client=c).acquire(timeout=5)


@pytest.mark.timeout(30)
def test_a_semaphore_pickles_by_name_and_max_leases(c):
    sem = Semaphore(3, "s", client=c)
    again = pickle.loads(pickle.dumps(sem))
    assert (again.name, again.max_leases) == ("s", 3) and again.id != sem.id
    assert Semaphore(client=c).name != Semaphore(client=c).name  # unique names


def limited_work(sem: Semaphore) -> tuple[float, float]:
    """In a task: hold a lease for a while; when it was held."""
    with sem:
        start = time.monotonic()
        time.sleep(0.05)
        return start, time.monotonic()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in edges:  # (an end sorts before a start at the same instant)
        running += change
        most = max(most, running)
    return most


@pytest.mark.timeout(60)
def test_two_leases_limit_ten_tasks_to_two_at_a_time():
    with (
        LocalCluster(processes=False, n_workers=2, threads_per_worker=3) as cluster,
        Client(cluster) as client,
    ):
        sem = Semaphore(2, "limit", client=client)
        spans = client.gather(client.map(limited_work, [sem] * 10, pure=False))
        assert most_at_once(spans) == 2
        assert sem.get_value() == 0


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_async_with_and_await(c, s):
    sem = await Semaphore(1, "s", client=c)
    assert s.semaphores.semaphores["s"].max_leases == 1
    async with sem as entered:
        assert entered is sem
        assert await sem.get_value() == 1
    assert await sem.get_value() == 0
    with pytest.raises(TypeError, match="'with'.*asynchronous client"), sem:
        pass


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_close_forgets_the_semaphore_and_its_waiters_get_false(c, s):
    sem = Semaphore(1, "s", client=c)
    await sem.acquire()
    waiting = asyncio.ensure_future(Semaphore(1, "s", client=c).acquire())
    await apoll(lambda: leases_and_waiters(s, "s") == (1, 1))
    await sem.close()
    assert await waiting is False
    assert "s" not in s.semaphores.semaphores
    assert await Semaphore(5, "s", client=c).acquire()  # a new one, of any size


# ---------------------------------------------------------------------- holders that go


@pytest.mark.timeout(60)
@gen_cluster(nthreads=())
async def test_a_killed_holder_frees_its_lease_and_a_waiter_proceeds(c, s):
    waiter = Semaphore(1, "s", client=c)
    with start_holder(s.address, "semaphore", "s") as holder:
        try:
            await apoll(lambda: "s" in s.semaphores.semaphores, timeout=30)
            await apoll(lambda: leases_and_waiters(s, "s") == (1, 0), timeout=30)
            acquire = asyncio.ensure_future(waiter.acquire(timeout=30))
            await apoll(lambda: leases_and_waiters(s, "s") == (1, 1))
            holder.kill()
            assert await acquire is True
        finally:
            holder.kill()
    assert await waiter.get_value() == 1
    await waiter.release()
    assert leases_and_waiters(s, "s") == (0, 0)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_a_waiter_whose_client_closes_is_dropped(c, s):
    holder = Semaphore(1, "s", client=c)
    await holder.acquire()
    c2 = await second_client(s)
    two = Semaphore(1, "s", client=c2)
    acquire = asyncio.ensure_future(two.acquire())
    await apoll(lambda: leases_and_waiters(s, "s") == (1, 1))
    await c2.close()
    await apoll(lambda: leases_and_waiters(s, "s") == (1, 0))
    # the scheduler's answer that its client left, or the connection closing first
    with pytest.raises((RuntimeError, OSError)):
        await acquire
    with pytest.raises(RuntimeError, match="is closed"):
        await two.acquire()
    await holder.release()
    assert leases_and_waiters(s, "s") == (0, 0)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_the_leases_of_a_client_that_closes_are_freed(c, s):
    c2 = await second_client(s)
    sem = Semaphore(2, "s", client=c2)
    await sem.acquire()
    await sem.acquire()
    await c2.close()
    await apoll(lambda: leases_and_waiters(s, "s") == (0, 0))
    with pytest.raises(RuntimeError, match="is closed"):
        await sem.get_value()


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_a_lease_not_refreshed_times_out(c, s):
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "0.3s"}):
        stopped = Semaphore(1, "s", client=c)
        stopped.refresh_leases = False  # as if its client's loop were stuck
        assert await stopped.acquire()
        start = time.monotonic()
        assert await Semaphore(1, "s", client=c).acquire(timeout=10) is True
        assert time.monotonic() - start >= 0.25
        assert await stopped.release() is False  # timed out already


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_a_refreshed_lease_outlives_the_lease_timeout(c, s):
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "0.2s"}):
        holder = Semaphore(1, "s", client=c)
        assert await holder.acquire()
        assert await Semaphore(1, "s", client=c).acquire(timeout=1) is False
        assert await holder.release() is True
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "inf"}):
        assert await holder.acquire()
        assert s.semaphores.semaphores["s"].leases[holder._leases[0]].expiry is None
        await holder.release()
