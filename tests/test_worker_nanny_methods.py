"""The documented methods and handles of the Worker (in-process, a real scheduler over
TCP) and of the Nanny (with real worker processes), each called for real."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import dask.config
import psutil
import pytest
from conftest import apoll, children, gone, run

from distributary import Client, Nanny, Scheduler, Worker
from distributary.worker.state import WorkerState

pytestmark = pytest.mark.timeout(60)


def rss() -> int:
    return psutil.Process().memory_info().rss


# ---------------------------------------------------------------------- the Worker


def test_worker_handles_and_its_name_is_its_address_by_default():
    async def main():
        async with Scheduler() as s, Worker(s.address, nthreads=2) as w:
            assert w.name == w.address and w.worker_address == w.address
            assert s.state.workers[w.address].name == w.address
            async with Client(s.address, asynchronous=True) as c:
                info = (await c.scheduler_info())["workers"][w.address]
                assert info["name"] == info["id"] == w.address
                future = c.submit(sum, [1, 2], workers=[w.name])
                assert await future == 3
                assert w.data[future.key] == 3
            assert w.nthreads == 2 and w.status == "running"
            assert isinstance(w.state, WorkerState)
            assert os.path.isdir(w.local_directory) and w.local_dir == w.local_directory
            assert callable(w.executor.submit)
            assert w.scheduler_address == w.scheduler.address == s.address
            assert f"tcp://{w.scheduler.ip}:{w.scheduler.port}" == s.address
            identity = await w.scheduler.identity()
            assert identity["type"] == "Scheduler" and identity["id"] == s.id
            async with Worker(s.address, nthreads=1, name="alice") as named:
                assert named.name == "alice" and s.state.workers[named.address].name == "alice"

    run(main())


def test_executor_submit_runs_the_function_on_an_executor():
    def add(x, y=0):
        return x + y, threading.current_thread().name

    async def main():
        async with Scheduler() as s, Worker(s.address, nthreads=1) as w:
            main_thread = threading.current_thread().name
            total, thread = await w.executor_submit("add-1", add, args=(1,), kwargs={"y": 2})
            assert total == 3 and thread != main_thread
            with ThreadPoolExecutor(1, thread_name_prefix="mine") as pool:
                total, thread = await w.executor_submit("add-2", add, (5,), executor=pool)
            assert total == 5 and thread.startswith("mine")
            with pytest.raises(ZeroDivisionError):
                await w.executor_submit("div", lambda: 1 / 0)
            with pytest.raises(TypeError, match="executor must be an Executor"):
                await w.executor_submit("bad", add, (1,), executor="threads")
            with pytest.raises(TypeError, match="is not callable"):
                await w.executor_submit("bad", 42)
            async with Client(s.address, asynchronous=True) as c:  # it keeps working
                assert (await c.submit(add, 1, y=1))[0] == 2

    run(main())


def test_memory_monitor_pauses_and_resumes_the_worker():
    async def main():
        limit = 4 * rss()
        async with Scheduler() as s:
            async with Worker(
                s.address,
                nthreads=1,
                memory_limit=limit,
                memory_target_fraction=False,
                memory_spill_fraction=False,
                memory_pause_fraction=0.01,  # below what this process uses already
                memory_monitor_interval="1h",  # (only the calls here look)
            ) as w:
                assert w.status == "running"
                await w.memory_monitor()
                assert w.status == "paused"
                await apoll(lambda: s.state.workers[w.address].status == "paused")
                w.memory_manager.memory_pause_fraction = 0.99
                await w.memory_monitor()
                assert w.status == "running"
                await apoll(lambda: s.state.workers[w.address].status == "running")
            async with Worker(s.address, nthreads=1, memory_limit=0) as unlimited:
                await unlimited.memory_monitor()  # nothing to watch
                assert unlimited.status == "running"

    run(main())


def test_close_gracefully_hands_the_data_over_then_closes():
    async def main():
        async with Scheduler() as s, Worker(s.address, nthreads=1) as a:
            b = await Worker(s.address, nthreads=1)
            try:
                async with Client(s.address, asynchronous=True) as c:
                    future = c.submit(lambda: "kept", workers=[a.address])
                    assert await future == "kept"
                    await a.close_gracefully()
                    assert a.status == "closed"
                    assert list(s.state.workers) == [b.address]
                    assert b.data[future.key] == "kept"
                    assert await future == "kept"
                    assert await c.submit(len, future) == 4
            finally:
                await b.close()

    run(main())


# ---------------------------------------------------------------------- the Nanny


def test_nanny_kill_instantiate_and_close():
    async def main():
        async with Scheduler() as s:
            n = Nanny(s.address, nthreads=1)
            try:
                assert await n.start() is n and await n.start() is n  # (once)
                first_pid, first_address = n.process.pid, n.worker_address
                assert n.status == "running" and n.is_alive() and n.name is None
                assert s.state.workers[first_address].name == first_address
                assert s.state.workers[first_address].nanny == n.address
                assert os.path.isdir(n.local_dir) and n.local_dir == n.local_directory
                worker_directory = s.state.workers[first_address].local_directory
                assert os.path.dirname(worker_directory) == n.local_directory

                assert await n.kill(timeout=2) == "OK"
                assert gone(first_pid) and not n.is_alive() and n.worker_address is None
                assert n.status == "running"
                await apoll(lambda: not s.state.workers)

                assert await n.instantiate() == "running"
                assert n.is_alive() and n.process.pid != first_pid
                await apoll(lambda: list(s.state.workers) == [n.worker_address])
                assert s.state.workers[n.worker_address].name == n.worker_address

                with pytest.raises(TypeError, match="bogus"):
                    await n.close(bogus=1)
                second_pid = n.process.pid
                await n.close(timeout=5, report=False)
                assert n.status == "closed" and gone(second_pid)
                await apoll(lambda: not s.state.workers)
            finally:
                await n.close()
            assert not children()

    run(main())


def test_a_named_nannys_worker_keeps_the_name_and_close_gracefully():
    async def main():
        async with Scheduler() as s:
            async with Nanny(s.address, nthreads=1, name="n1") as n:
                assert s.state.workers[n.worker_address].name == "n1"
                async with Client(s.address, asynchronous=True) as c:
                    assert await c.submit(os.getpid, workers=["n1"]) == n.process.pid
                await n.close_gracefully()
                assert n.status == "running" and n.is_alive()  # until its worker exits
                n.process.terminate()
                await asyncio.wait_for(n.finished(), 10)
                assert n.status == "closed" and n.process is None
            await apoll(lambda: not s.state.workers)

    run(main())


def test_nanny_memory_monitor_terminates_a_worker_past_the_limit():
    async def main():
        config = {
            "distributed.worker.memory.terminate": 0.01,  # below what any process uses
            "distributed.worker.memory.monitor-interval": "1h",  # (only the call looks)
        }
        async with Scheduler() as s:
            with dask.config.set(config):
                n = Nanny(s.address, nthreads=1, memory_limit="2GB")
            async with n:
                first_pid = n.process.pid
                await n.memory_monitor()
                await apoll(lambda: n.process is not None and n.process.pid != first_pid)
                assert gone(first_pid)
                await apoll(lambda: list(s.state.workers) == [n.worker_address])
            async with Nanny(s.address, nthreads=1, memory_limit=0) as unlimited:
                pid = unlimited.process.pid
                await unlimited.memory_monitor()  # nothing to watch
                assert unlimited.process.pid == pid and unlimited.is_alive()

    run(main())
