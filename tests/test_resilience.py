"""Losing workers, restarting and retiring them: real worker processes under nannies.

A Scheduler runs in the test's event loop (so its state can be inspected), with
Nanny workers in separate processes and an asynchronous Client, all over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import time

import dask.config
import pytest
from conftest import apoll, children, run

from distributary import Client, Nanny, Scheduler, Worker, wait
from distributary.exceptions import CancelledError, KilledWorker


def slow_add(*xs: int, delay: float = 0.005) -> int:
    time.sleep(delay)
    return sum(xs)


def pid() -> int:
    return os.getpid()


@contextlib.asynccontextmanager
async def nanny_cluster(n: int = 3, scheduler_kwargs: dict | None = None, **nanny_kwargs):
    """A scheduler here, ``n`` single-threaded nanny workers, and a client."""
    async with Scheduler(**(scheduler_kwargs or {})) as s:
        nannies = [Nanny(s.address, nthreads=1, **nanny_kwargs) for _ in range(n)]
        try:
            await asyncio.gather(*nannies)
            async with Client(s.address, asynchronous=True) as c:
                yield c, s, nannies
        finally:
            await asyncio.gather(*(nanny.close() for nanny in nannies))
    assert not children()


def worker_pids(nannies: list[Nanny]) -> list[int]:
    return [n.process.pid for n in nannies if n.process is not None and n.process.is_alive()]


def layered_graph(c: Client, width: int, depth: int) -> tuple[list, int]:
    """``depth`` layers of ``width`` tasks, each adding two of the layer before; the
    futures of the last layer and the sum they should come to."""
    futures = [c.submit(slow_add, i, key=f"l0-{i}") for i in range(width)]
    values = list(range(width))
    for level in range(1, depth):
        futures = [
            c.submit(slow_add, futures[j], futures[(j + 1) % width], key=f"l{level}-{j}")
            for j in range(width)
        ]
        values = [values[j] + values[(j + 1) % width] for j in range(width)]
    return futures, sum(values)


def test_chaos_sigkill_random_workers_during_a_graph():
    """2,000 dependent tasks on 3 nanny workers while 5 SIGKILLs hit random workers."""

    async def main():
        async with nanny_cluster(3) as (c, s, nannies):
            last_layer, expected = layered_graph(c, width=100, depth=20)
            total = c.submit(sum, last_layer, key="total")
            kills: list[float] = []
            rng = random.Random(1)

            def chaos() -> None:
                while len(kills) < 5:
                    time.sleep(0.35)
                    pids = worker_pids(nannies)
                    if pids:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills.append(time.monotonic())

            killer = threading.Thread(target=chaos, name="chaos")
            killer.start()
            try:
                result = await asyncio.wait_for(total.result(), 50)
            finally:
                killer.join()
            done_at = time.monotonic()
            assert result == expected
            assert len(kills) == 5 and kills[-1] < done_at  # all five hit the running graph
            assert s.state.tasks["total"].state == "memory"
            # the cluster heals: three workers again, and it still computes
            await apoll(lambda: len(s.state.workers) == 3, timeout=20)
            assert await c.submit(slow_add, 1, 2, key="after") == 3

    run(main(), timeout=58)


def test_sigkill_of_a_worker_holding_data_and_running_tasks():
    async def main():
        async with nanny_cluster(2) as (c, s, nannies):
            roots = [
                c.submit(slow_add, i, key=f"root-{i}", workers=[w], allow_other_workers=True)
                for i, w in enumerate(sorted(s.state.workers) * 5)
            ]
            await c.gather(roots)
            victim = sorted(s.state.workers)[0]
            held = {ts.key for ts in s.state.workers[victim].has_what}
            assert held
            slow = [
                c.submit(slow_add, r, 1, delay=0.3, key=f"slow-{i}") for i, r in enumerate(roots)
            ]
            await apoll(lambda: s.state.workers[victim].processing)
            victim_pid = next(n.process.pid for n in nannies if n.worker_address == victim)
            os.kill(victim_pid, signal.SIGKILL)
            assert await c.gather(slow) == [i + 1 for i in range(10)]
            assert victim not in s.state.workers
            # lost results still wanted were computed again from their lineage
            for key in held:
                assert "processing" in [finish for _, _, finish, _ in s.story(key)]

    run(main(), timeout=40)


def test_gather_after_the_holder_died_gets_the_result_again():
    """The client asks the worker it heard holds the result; that worker has been killed
    since.  The result is computed again and the gather returns it."""

    async def main():
        async with nanny_cluster(2) as (c, s, nannies):
            victim = sorted(s.state.workers)[0]
            future = c.submit(
                slow_add, 20, 22, key="answer", workers=[victim], allow_other_workers=True
            )
            await wait(future)
            assert c.futures["answer"].workers == (victim,)
            victim_pid = next(n.process.pid for n in nannies if n.worker_address == victim)
            os.kill(victim_pid, signal.SIGKILL)
            assert await c.gather(future) == 42
            assert victim not in s.state.workers
            assert [finish for _, _, finish, _ in s.story("answer")].count("memory") == 2

    run(main(), timeout=40)


def test_worker_ttl_removes_a_silent_worker():
    """A worker process that stops (SIGSTOP) is removed after worker-ttl; work goes on."""

    async def main():
        with dask.config.set({"distributed.worker.heartbeat-interval": "100ms"}):
            async with nanny_cluster(2, scheduler_kwargs={"worker_ttl": "1s"}) as (c, s, nannies):
                frozen = nannies[0]
                address, frozen_pid = frozen.worker_address, frozen.process.pid
                x = c.submit(
                    slow_add, 1, delay=30, key="stuck", workers=[address], allow_other_workers=True
                )
                await apoll(
                    lambda: "stuck" in s.state.tasks and s.state.tasks["stuck"].processing_on
                )
                os.kill(frozen_pid, signal.SIGSTOP)
                try:
                    await apoll(lambda: address not in s.state.workers, timeout=10)
                finally:
                    os.kill(frozen_pid, signal.SIGCONT)
                story = [finish for _, _, finish, _ in s.story("stuck")]
                assert story.count("processing") >= 1
                # rescheduled on the other worker
                await apoll(
                    lambda: (
                        s.state.tasks["stuck"].processing_on is not None
                        and s.state.tasks["stuck"].processing_on.address != address
                    )
                )
                await c.cancel([x])

    run(main(), timeout=40)


def test_restart_kills_work_and_data_and_brings_workers_back():
    async def main():
        async with nanny_cluster(2) as (c, s, nannies):
            old_pids = set(worker_pids(nannies))
            done = c.submit(slow_add, 1, 2, key="done")
            assert await done == 3
            running = c.submit(slow_add, 1, delay=60, key="running")
            await apoll(
                lambda: (
                    "running" in s.state.tasks and s.state.tasks["running"].state == "processing"
                )
            )
            await c.restart(timeout=20)
            assert s.state.tasks == {}
            assert len(s.state.workers) == 2
            assert not old_pids & set(worker_pids(nannies))
            for future in (done, running):
                assert future.status == "cancelled"
                with pytest.raises(CancelledError):
                    await future.result()
            # the client is usable again, with the same keys too
            assert await c.submit(slow_add, 1, 2, key="done") == 3
            assert await c.submit(slow_add, 5, key="fresh") == 5

    run(main(), timeout=40)


def test_restart_closes_workers_without_nanny():
    async def main():
        async with (
            Scheduler() as s,
            Worker(s.address, nthreads=1) as w,
            Client(s.address, asynchronous=True) as c,
        ):
            x = c.submit(slow_add, 1, key="x")
            await x
            await c.restart(timeout=5)
            await apoll(lambda: w.status == "closed")
            assert s.state.workers == {} and s.state.tasks == {}
            assert x.status == "cancelled"

    run(main())


def test_retire_workers_moves_data_without_recomputing():
    async def main():
        async with nanny_cluster(2) as (c, s, nannies):
            a, b = sorted(s.state.workers)
            on_a = [c.submit(slow_add, i, key=f"a-{i}", workers=[a]) for i in range(5)]
            await c.gather(on_a)
            retired = await c.retire_workers([a])
            assert list(retired) == [a]
            assert a not in s.state.workers
            for i, future in enumerate(on_a):
                ts = s.state.tasks[future.key]
                assert ts.state == "memory" and {ws.address for ws in ts.who_has} == {b}
                assert [finish for _, _, finish, _ in s.story(future.key)].count("processing") == 1
                assert await future == i
            nanny_a = next(n for n in nannies if n.worker_address == a or n.status != "running")
            await apoll(lambda: nanny_a.status == "closed", timeout=10)  # closed, not restarted

    run(main(), timeout=40)


def test_retire_the_only_worker_keeps_it():
    async def main():
        async with nanny_cluster(1) as (c, s, nannies):
            x = c.submit(slow_add, 1, key="x")
            await x
            (a,) = s.state.workers
            assert await c.retire_workers([a]) == {}
            assert s.state.workers[a].status == "running"
            assert await x == 1
            assert await c.submit(slow_add, 2, key="y") == 2

    run(main(), timeout=30)


def test_scheduler_file_round_trip(tmp_path):
    async def main():
        path = str(tmp_path / "scheduler.json")
        async with Scheduler(scheduler_file=path) as s:
            with open(path) as f:
                assert json.load(f)["address"] == s.address
            async with (
                Worker(scheduler_file=path, nthreads=1) as w,
                Client(scheduler_file=path, asynchronous=True) as c,
            ):
                assert await c.submit(slow_add, 1, key="x") == 1
                assert w.address in s.state.workers
        assert not os.path.exists(path)

    run(main())


def test_client_write_scheduler_file(tmp_path, c):
    path = str(tmp_path / "from-client.json")
    c.write_scheduler_file(path)
    with open(path) as f:
        assert json.load(f)["address"] == c.scheduler_address
    with Client(scheduler_file=path) as c2:
        assert c2.submit(slow_add, 2, key="x").result() == 2


def test_clients_raise_when_the_scheduler_goes_away():
    async def main():
        s = await Scheduler()
        w = await Worker(s.address, nthreads=1)
        try:
            async with Client(s.address, asynchronous=True) as c:
                pending = c.submit(slow_add, 1, delay=1, key="pending")
                await apoll(lambda: "pending" in s.state.tasks)
                await s.close()
                with pytest.raises(CancelledError):
                    await asyncio.wait_for(pending.result(), 10)
                with pytest.raises(RuntimeError, match="closed"):
                    c.submit(slow_add, 1)
        finally:
            await w.close()
            await s.close()

    run(main())


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def test_task_that_segfaults_every_time_and_its_dependents_get_killed_worker():
    async def main():
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            async with nanny_cluster(2) as (c, s, nannies):
                crash = c.submit(segfault, key="crash")
                dependent = c.submit(slow_add, crash, 1, key="dependent")
                for future in (crash, dependent):
                    with pytest.raises(KilledWorker) as info:
                        await future.result()
                    assert info.value.task == "crash"
                    assert "crash" in str(info.value)
                    assert info.value.last_worker.startswith("tcp://127.0.0.1:")
                # the rest of the cluster keeps working, with both workers back
                assert await c.submit(slow_add, 2, 3, key="fine") == 5
                await apoll(lambda: len(s.state.workers) == 2, timeout=20)

    run(main(), timeout=40)
