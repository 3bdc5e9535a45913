"""Lock and MultiLock: named locks shared by the clients and tasks of a cluster, kept
on the scheduler; on real clusters over TCP (and in memory where marked).

Asynchronous clients run against an in-process Scheduler (``@gen_cluster``); blocking
ones use ``LocalCluster``, with worker processes where processes matter; one holder is
a client process killed with SIGKILL (``lock_holder.py``).
"""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest
from conftest import apoll, gen_cluster, second_client
from lock_holder import start_holder

from distributary import Client, LocalCluster, Lock, MultiLock, Variable


def nothing_left(table) -> bool:
    """No lock had, no holder and no request waiting in a scheduler's lock table."""
    return not table.owners and not table.holdings and not table.waiting


# ---------------------------------------------------------------------- Lock


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_acquire_release_and_locked(c, s):
    lock = Lock("x", client=c)
    assert not await lock.locked()
    assert await lock.acquire() is True
    assert await lock.locked()
    assert s.locks.locks.owners == {"x": lock.id}
    assert await lock.release() is True
    assert not await lock.locked()
    assert nothing_left(s.locks.locks)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_two_lock_objects_of_one_name_exclude_each_other_in_one_client(c, s):
    first, second = Lock("x", client=c), Lock("x", client=c)
    assert await first.acquire()
    assert await second.acquire(blocking=False) is False
    assert await second.locked()  # had by someone: the first
    assert await Lock("y", client=c).acquire(blocking=False)  # another name is free


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_acquire_with_a_timeout_gives_up_after_it(c, s):
    holder, waiter = Lock("x", client=c), Lock("x", client=c)
    await holder.acquire()
    start = time.monotonic()
    assert await waiter.acquire(timeout=0.2) is False
    assert 0.2 <= time.monotonic() - start < 5
    assert await waiter.acquire(timeout="50ms") is False
    assert not s.locks.locks.waiting
    await holder.release()
    assert await waiter.acquire(timeout=0.2) is True


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_waiters_take_the_lock_in_turn(c, s):
    holder = Lock("x", client=c)
    await holder.acquire()
    waiters = [Lock("x", client=c) for _ in range(3)]
    acquires = []
    for n, waiter in enumerate(waiters, 1):
        acquires.append(asyncio.ensure_future(waiter.acquire()))
        await apoll(lambda n=n: len(s.locks.locks.waiting) == n)
    current = holder
    for waiter, acquire in zip(waiters, acquires):
        assert not acquire.done()
        await current.release()
        assert await acquire is True
        assert s.locks.locks.owners == {"x": waiter.id}
        current = waiter
    await current.release()
    assert nothing_left(s.locks.locks)


@pytest.mark.timeout(30)
def test_timeout_with_blocking_false_is_a_value_error(c):
    lock = Lock("x", client=c)
    with pytest.raises(ValueError, match="can't specify a timeout for a non-blocking call"):
        lock.acquire(blocking=False, timeout=1)
    assert lock.acquire(blocking=False) is True
    lock.release()


@pytest.mark.timeout(30)
def test_release_of_a_lock_not_held_is_a_runtime_error(c):
    lock = Lock("x", client=c)
    with pytest.raises(RuntimeError, match="released but was not acquired"):
        lock.release()
    other = Lock("x", client=c)
    assert other.acquire()
    with pytest.raises(RuntimeError, match="not acquired"):
        lock.release()  # another object's hold is not this one's to free
    assert other.locked()
    other.release()
    with pytest.raises(RuntimeError):
        other.release()  # once only
    assert lock.acquire(timeout=5)  # the cluster still works
    lock.release()


@pytest.mark.timeout(30)
def test_with_block_of_a_blocking_client(c):
    lock = Lock("x", client=c)
    with lock as entered:
        assert entered is lock
        assert lock.locked()
        assert not Lock("x", client=c).acquire(blocking=False)
    assert not lock.locked()
    with pytest.raises(TypeError, match="'async with'.*blocking client"):
        asyncio.run(lock.__aenter__())


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_async_with_block_of_an_asynchronous_client(c, s):
    lock = Lock("x", client=c)
    async with lock as entered:
        assert entered is lock
        assert await lock.locked()
    assert not await lock.locked()
    with pytest.raises(TypeError, match="'with'.*asynchronous client"), lock:
        pass
    assert nothing_left(s.locks.locks)


@pytest.mark.timeout(30)
def test_a_lock_without_a_name_gets_a_unique_one(c):
    first, second = Lock(client=c), Lock(client=c)
    assert first.name != second.name and isinstance(first.name, str)
    assert first.acquire(blocking=False) and second.acquire(blocking=False)
    first.release()
    second.release()


def try_lock(lock: Lock, timeout: float) -> tuple:
    """In a task: take and free ``lock``, if it can within ``timeout``."""
    if not lock.acquire(timeout=timeout):
        return lock.name, False
    lock.release()
    return lock.name, True


@pytest.mark.timeout(30)
def test_a_lock_passed_to_a_task_is_the_same_named_lock(c):
    lock = Lock("shared", client=c)
    again = pickle.loads(pickle.dumps(lock))
    assert again.name == "shared" and again.id != lock.id
    lock.acquire()
    assert c.submit(try_lock, lock, 0.2).result() == ("shared", False)  # held here
    lock.release()
    assert c.submit(try_lock, lock, 5, pure=False).result() == ("shared", True)
    assert not lock.locked()


def locked_increment(_: int) -> None:
    """In a task: add one to the Variable "counter", under a Lock."""
    counter = Variable("counter")
    with Lock("counter"):
        value = counter.get()
        time.sleep(0.001)  # widens the window in which an unlocked update would be lost
        counter.set(value + 1)


@pytest.mark.timeout(60)
def test_no_update_is_lost_under_a_lock_across_worker_processes():
    with (
        LocalCluster(processes=True, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        counter = Variable("counter", client=client)
        counter.set(0)
        client.gather(client.map(locked_increment, range(20)))
        assert counter.get() == 20
        assert nothing_left(cluster.scheduler.locks.locks)


# ---------------------------------------------------------------------- holders that go


@pytest.mark.timeout(60)
@gen_cluster(nthreads=())
async def test_a_killed_holder_frees_its_lock_and_a_waiter_proceeds(c, s):
    waiter = Lock("x", client=c)
    with start_holder(s.address, "lock", "x") as holder:
        try:
            await apoll(lambda: "x" in s.locks.locks.owners, timeout=30)
            assert not await waiter.acquire(blocking=False)
            acquire = asyncio.ensure_future(waiter.acquire(timeout=30))
            await apoll(lambda: s.locks.locks.waiting)
            holder.kill()
            assert await acquire is True
            assert s.locks.locks.owners == {"x": waiter.id}
        finally:
            holder.kill()
    await waiter.release()
    assert nothing_left(s.locks.locks)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_a_waiter_whose_client_closes_is_dropped(c, s):
    holder = Lock("x", client=c)
    await holder.acquire()
    await MultiLock(["x"], client=c).acquire()
    c2 = await second_client(s)
    acquire = asyncio.ensure_future(Lock("x", client=c2).acquire())
    multi = asyncio.ensure_future(MultiLock(["x", "y"], client=c2).acquire())
    await apoll(lambda: s.locks.locks.waiting and s.locks.multi_locks.waiting)
    await c2.close()
    await apoll(lambda: not s.locks.locks.waiting and not s.locks.multi_locks.waiting)
    for pending in (acquire, multi):
        # the scheduler's answer that its client left, or the connection closing first
        with pytest.raises((RuntimeError, OSError)):
            await pending
    assert s.locks.locks.owners == {"x": holder.id}
    assert set(s.locks.multi_locks.owners) == {"x"}  # "y" was not taken for the waiter
    await holder.release()
    assert nothing_left(s.locks.locks)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_an_acquire_given_up_by_its_caller_gives_the_lock_back(c, s):
    holder, waiter = Lock("x", client=c), Lock("x", client=c)
    await holder.acquire()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(waiter.acquire(), 0.2)  # its connection is closed
    await holder.release()
    await apoll(lambda: nothing_left(s.locks.locks))
    assert await Lock("x", client=c).acquire(timeout=5)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_a_lock_of_a_closed_client_raises(c, s):
    c2 = await second_client(s)
    lock = Lock("x", client=c2)
    assert await lock.acquire()
    await c2.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await lock.acquire()
    with pytest.raises(RuntimeError, match="is closed"):
        await lock.locked()
    await apoll(lambda: nothing_left(s.locks.locks))  # freed as its client left


@pytest.mark.timeout(30)
def test_a_lock_of_a_closed_blocking_client_raises(cluster):
    with Client(cluster) as client:
        lock = Lock("x", client=client)
    with pytest.raises(RuntimeError, match="is closed"):
        lock.acquire(timeout=1)


# ---------------------------------------------------------------------- MultiLock


@pytest.mark.timeout(30)
@gen_cluster(nthreads=(), protocols=("tcp", "inproc"))
async def test_multilock_takes_all_its_names_or_waits(c, s):
    first, second = MultiLock(["a", "b"], client=c), MultiLock(["b", "c"], client=c)
    assert not first.locked()
    assert await first.acquire() is True
    assert first.locked()
    assert await second.acquire(blocking=False) is False
    assert set(s.locks.multi_locks.owners) == {"a", "b"}  # "c" not taken for nothing
    assert await MultiLock(["c"], client=c).acquire(blocking=False)
    assert await Lock("a", client=c).acquire(blocking=False)  # Lock's names are apart
    await first.release()
    assert not first.locked()


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_multilock_timeout(c, s):
    holder, waiter = MultiLock(["a"], client=c), MultiLock(["b", "a"], client=c)
    await holder.acquire()
    start = time.monotonic()
    assert await waiter.acquire(timeout=0.2) is False
    assert 0.2 <= time.monotonic() - start < 5
    assert not waiter.locked()
    assert set(s.locks.multi_locks.owners) == {"a"} and not s.locks.multi_locks.waiting
    with pytest.raises(ValueError, match="non-blocking"):
        waiter.acquire(blocking=False, timeout=0.1)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_multilock_num_locks(c, s):
    names = ["a", "b", "c"]
    two, one = MultiLock(names, client=c), MultiLock(names, client=c)
    assert await two.acquire(num_locks=2)
    assert await one.acquire(num_locks=1)  # the one left
    assert len(s.locks.multi_locks.owners) == 3
    assert await MultiLock(names, client=c).acquire(num_locks=1, timeout=0.1) is False
    await two.release()
    assert await MultiLock(names, client=c).acquire(num_locks=2, timeout=5)
    with pytest.raises(ValueError, match="Cannot acquire 4 of the 3 locks"):
        await MultiLock(names, client=c).acquire(num_locks=4)
    with pytest.raises(ValueError, match="Cannot acquire 0 of the 0 locks"):
        await MultiLock([], client=c).acquire()


@pytest.mark.timeout(30)
def test_multilock_release_not_acquired_is_a_value_error(c):
    lock = MultiLock(["a", "b"], client=c)
    with pytest.raises(ValueError, match="not yet acquired"):
        lock.release()
    with lock:
        assert lock.locked()
        assert not MultiLock(["b"], client=c).acquire(blocking=False)
    assert not lock.locked()
    assert pickle.loads(pickle.dumps(lock)).names == ["a", "b"]


@pytest.mark.timeout(60)
@gen_cluster(nthreads=())
async def test_multilocks_of_overlapping_names_in_any_order_do_not_deadlock(c, s):
    orders = [["a", "b"], ["b", "a"], ["b", "c"], ["c", "a"], ["a", "b", "c"]]
    inside: set = set()

    async def use(names: list) -> None:
        for _ in range(10):
            async with MultiLock(names, client=c):
                assert not inside & set(names)  # nobody else has any of them
                inside.update(names)
                await asyncio.sleep(0.001)
                inside.difference_update(names)

    await asyncio.gather(*(use(names) for names in orders * 2))
    assert nothing_left(s.locks.multi_locks)


@pytest.mark.timeout(30)
@gen_cluster(nthreads=())
async def test_a_waiting_multilock_is_not_overtaken_on_its_names(c, s):
    holder = MultiLock(["a"], client=c)
    await holder.acquire()
    both = MultiLock(["a", "b"], client=c)
    acquire = asyncio.ensure_future(both.acquire())
    await apoll(lambda: s.locks.multi_locks.waiting)
    # "b" is free but reserved for the request before; "c" is nobody's
    assert await MultiLock(["b"], client=c).acquire(timeout=0.1) is False
    assert await MultiLock(["c"], client=c).acquire(blocking=False) is True
    await holder.release()
    assert await acquire is True
    assert set(s.locks.multi_locks.owners) == {"a", "b", "c"}
