"""Shared test helpers: an in-process cluster for async tests, and a leak check.

``@gen_cluster()`` runs ``async def test(c, s, *workers)`` in ``asyncio.run`` with a
real Scheduler, Workers and an asynchronous Client.  The autouse ``check_leaks``
fixture fails a test that leaves threads, the client's event-loop thread or child
processes behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from distributary import Client, LocalCluster, Scheduler, Worker

LEAK_DEADLINE = 5.0


def poll(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def run(coro, timeout: float = 30):
    """Run a coroutine in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def apoll(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """``poll`` for coroutines: yields to the event loop between checks."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(0.005)


@pytest.fixture
def processes(request):
    """``(cluster, client)``: a LocalCluster of one-thread worker processes under nannies
    (two, or as many as the test's ``indirect`` parameter says) and a client of it."""
    n_workers = getattr(request, "param", 2)
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def gen_cluster(nthreads: tuple = (1, 1), protocols: tuple = ("tcp",), timeout: float = 30):
    """Decorate ``async def test(c, s, *workers)``: run it against a fresh cluster.

    The test runs once per transport in ``protocols`` (``"tcp"``, ``"inproc"``).
    """

    def decorator(fn):
        @pytest.mark.parametrize("protocol", protocols)
        def test(protocol: str) -> None:
            async def main() -> None:
                async with Scheduler(protocol=protocol) as s:
                    workers = []
                    try:
                        for n in nthreads:
                            workers.append(await Worker(s.address, nthreads=n))
                        async with Client(s.address, asynchronous=True) as c:
                            await asyncio.wait_for(fn(c, s, *workers), timeout)
                    finally:
                        for w in workers:
                            await w.close()

            asyncio.run(main())

        test.__name__ = fn.__name__
        test.__qualname__ = fn.__qualname__
        test.__module__ = fn.__module__
        test.__doc__ = fn.__doc__
        return test

    return decorator


def second_client(s: Scheduler) -> Client:
    """Another asynchronous client of ``s`` (await it; close it), not the default."""
    return Client(s.address, asynchronous=True, set_as_default=False)


def _leaks(before: set[int]) -> list[str]:
    found = [
        f"thread {t.name!r}"
        for t in threading.enumerate()
        if t.is_alive()
        and (t.name == "distributary-loop" or (not t.daemon and t.ident not in before))
    ]
    found += [f"child process {p.pid}" for p in children()]
    return found


def children() -> list[psutil.Process]:
    """This process's children, except multiprocessing's resource tracker, a helper that
    the first spawned process starts and that lives as long as the test session."""
    result = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                result.append(child)
        except psutil.NoSuchProcess:
            pass
    return result


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def cluster():
    """A blocking LocalCluster with two single-threaded in-process workers."""
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1) as cluster:
        yield cluster


@pytest.fixture
def c(cluster):
    """A blocking Client of ``cluster``."""
    with Client(cluster) as client:
        yield client


@pytest.fixture(autouse=True)
def check_leaks():
    """After each test: no new non-daemon threads, no loop thread, no child processes."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + LEAK_DEADLINE
    while leaks := _leaks(before):
        if time.monotonic() > deadline:
            pytest.fail(f"leaked after the test: {', '.join(leaks)}")
        time.sleep(0.01)
