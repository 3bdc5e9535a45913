"""The Nanny: real worker processes, a real scheduler, TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import dask.config
import psutil
import pytest

from distributary.core import ConnectionPool
from distributary.nanny import Nanny
from distributary.scheduler.server import Scheduler


def children() -> list[psutil.Process]:
    """Our child processes, except multiprocessing's resource tracker."""
    result = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                result.append(child)
        except psutil.NoSuchProcess:
            pass
    return result


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = 10, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {message}")
        time.sleep(0.01)


async def async_wait_until(predicate, timeout: float = 10, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {message}")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def check_leaks():
    """Replaces conftest's check here: no new thread, no child process except
    multiprocessing's resource tracker, which ``stop_resource_tracker`` stops."""
    threads = set(threading.enumerate())
    yield
    wait_until(lambda: not children(), message="child processes to exit")
    wait_until(lambda: set(threading.enumerate()) <= threads, message="threads to stop")


@pytest.fixture(autouse=True, scope="module")
def stop_resource_tracker():
    """Spawning starts the stdlib's resource tracker, a helper process that lives as
    long as this one; stop it so that later tests see no child process."""
    yield
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()


class ExitingWorker:
    """A worker class whose process dies while starting."""

    def __init__(self, *args, **kwargs):
        os._exit(3)


def test_worker_runs_in_another_process_and_registers():
    async def main():
        async with Scheduler() as s:
            with dask.config.set({"distributed.nanny.environ": {"DISTRIBUTARY_CONFIG_VAR": 1}}):
                nanny = Nanny(s.address, nthreads=2, name="n1", env={"DISTRIBUTARY_TEST_VAR": "x"})
            async with nanny as n:
                await async_wait_until(lambda: len(s.state.workers) == 1)
                ws = s.state.workers[n.worker_address]
                assert ws.name == "n1"
                assert ws.nanny == n.address
                assert ws.nthreads == 2
                assert ws.memory_limit == n.memory_limit > 0
                assert n.address != n.worker_address
                assert n.process.pid != os.getpid()
                assert psutil.Process(n.process.pid).ppid() == os.getpid()
                environ = psutil.Process(n.process.pid).environ()
                assert environ["DISTRIBUTARY_TEST_VAR"] == "x"
                assert environ["DISTRIBUTARY_CONFIG_VAR"] == "1"
                assert environ["PYTHONHASHSEED"] == os.environ.get("PYTHONHASHSEED", "6640")
                assert "DISTRIBUTARY_TEST_VAR" not in os.environ
                assert n.status == "running"
                assert "threads: 2" in repr(n)
            assert n.status == "closed"
            assert not children()

    asyncio.run(main())


def test_kill_instantiate_restart():
    async def main():
        async with Scheduler() as s, Nanny(s.address, nthreads=1) as n:
            first_pid, first_address = n.process.pid, n.worker_address
            assert await n.kill() == "OK"
            assert n.process is None and n.worker_address is None
            assert gone(first_pid)
            await async_wait_until(lambda: not s.state.workers, message="worker removal")
            assert await n.kill() == "OK"  # nothing to kill

            assert await n.instantiate() == "running"
            second_pid = n.process.pid
            assert second_pid != first_pid and not gone(second_pid)
            await async_wait_until(lambda: n.worker_address in s.state.workers)
            assert first_address not in s.state.workers
            assert await n.instantiate() == "running"  # already running: same process
            assert n.process.pid == second_pid

            assert await n.restart() == "OK"
            assert gone(second_pid)
            await async_wait_until(lambda: list(s.state.workers) == [n.worker_address])

            process = n.process  # several coroutines may wait for its end at once
            assert await process.join(0.01) is False
            assert await asyncio.gather(process.join(10), n.kill(), process.join(10)) == [
                True,
                "OK",
                True,
            ]
            assert process.exitcode == 0
        await n.close()  # idempotent

    asyncio.run(main())


def test_kill_escalates_when_the_worker_does_not_close():
    async def main():
        async with Scheduler() as s, Nanny(s.address, nthreads=1) as n:
            process = psutil.Process(n.process.pid)
            process.suspend()  # deaf to the close request, and to SIGTERM until resumed
            start = time.monotonic()
            await n.kill(timeout=0.5)
            assert gone(process.pid)
            assert time.monotonic() - start < 10
            await async_wait_until(lambda: not s.state.workers, message="worker removal")

    asyncio.run(main())


def test_rpc_handlers():
    async def main():
        async with Scheduler() as s, Nanny(s.address, nthreads=1, name="rpc") as n:
            pool = ConnectionPool()
            try:
                identity = await pool.call(n.address, {"op": "identity"})
                assert identity["type"] == "Nanny"
                assert identity["worker_address"] == n.worker_address
                assert identity["name"] == "rpc"
                assert await pool.call(n.address, {"op": "kill"}) == "OK"
                assert n.process is None
                assert await pool.call(n.address, {"op": "instantiate"}) == "running"
                await async_wait_until(lambda: n.worker_address in s.state.workers)
                assert await pool.call(n.address, {"op": "restart", "timeout": 20}) == "OK"
                assert await pool.call(n.address, {"op": "terminate"}) == "OK"
                await asyncio.wait_for(n.finished(), 10)
                assert n.status == "closed"
            finally:
                await pool.close()
            await async_wait_until(lambda: not s.state.workers, message="worker removal")

    asyncio.run(main())


def test_worker_error_during_start_is_raised():
    async def main():
        async with Scheduler() as s:
            with pytest.raises(TypeError):
                await Nanny(s.address, nthreads=1, resources=5)  # dict(5) fails in the child
            assert not children()

    asyncio.run(main())


def test_worker_process_dying_during_start_is_reported():
    async def main():
        async with Scheduler() as s:
            n = Nanny(s.address, nthreads=1, worker_class=ExitingWorker)
            with pytest.raises(RuntimeError, match="exited with code 3"):
                await n
            assert n.status == "closed"

    asyncio.run(main())


def test_nanny_needs_a_reachable_scheduler_address():
    with pytest.raises(ValueError, match="inproc"):
        Nanny("inproc://127.0.0.1/1/0")
    with pytest.raises(ValueError, match="scheduler address"):
        Nanny()


def test_worker_exits_when_the_nanny_process_dies():
    script = textwrap.dedent(
        """
        import asyncio, sys
        from distributary.nanny import Nanny
        from distributary.scheduler.server import Scheduler

        async def main():
            async with Scheduler() as s, Nanny(s.address, nthreads=1) as n:
                print(n.process.pid, flush=True)
                await asyncio.Event().wait()

        if __name__ == "__main__":
            asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        worker_pid = int(proc.stdout.readline())
        assert not gone(worker_pid)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    wait_until(lambda: gone(worker_pid), timeout=10, message="the orphaned worker to exit")
