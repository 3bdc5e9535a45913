"""The Nanny: real worker processes, a real scheduler, TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import dask.config
import psutil
import pytest
from conftest import apoll, children, gone, poll

from distributary.core import ConnectionPool
from distributary.nanny import Nanny
from distributary.scheduler.server import Scheduler


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
                await apoll(lambda: len(s.state.workers) == 1)
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
            await apoll(lambda: not s.state.workers)
            assert await n.kill() == "OK"  # nothing to kill

            assert await n.instantiate() == "running"
            second_pid = n.process.pid
            assert second_pid != first_pid and not gone(second_pid)
            await apoll(lambda: n.worker_address in s.state.workers)
            assert first_address not in s.state.workers
            assert await n.instantiate() == "running"  # already running: same process
            assert n.process.pid == second_pid

            assert await n.restart() == "OK"
            assert gone(second_pid)
            await apoll(lambda: list(s.state.workers) == [n.worker_address])

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
            await apoll(lambda: not s.state.workers)

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
                await apoll(lambda: n.worker_address in s.state.workers)
                assert await pool.call(n.address, {"op": "restart", "timeout": 20}) == "OK"
                assert await pool.call(n.address, {"op": "terminate"}) == "OK"
                await asyncio.wait_for(n.finished(), 10)
                assert n.status == "closed"
            finally:
                await pool.close()
            await apoll(lambda: not s.state.workers)

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
    poll(lambda: gone(worker_pid), timeout=10)
