"""The Nanny: real worker processes, a real scheduler, TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import dask.config
import psutil
import pytest
from conftest import apoll, children, gone, poll, run

from distributary import Client, KilledWorker, Worker
from distributary.core import ConnectionPool
from distributary.nanny.server import Nanny
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
        from distributary.nanny.server import Nanny
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


# ---------------------------------------------------------------------- auto-restart


def inc(x):
    return x + 1


class FlakyWorker(Worker):
    """Dies while starting as many times as the file $DISTRIBUTARY_TEST_DEATHS says."""

    def __init__(self, *args, **kwargs):
        with open(os.environ["DISTRIBUTARY_TEST_DEATHS"], "r+") as f:
            left = int(f.read())
            if left:
                f.seek(0)
                f.write(f"{left - 1:<9}")
                f.flush()
                os._exit(5)
        super().__init__(*args, **kwargs)


def exit_unless_marked(marker):
    """Kill the worker process the first time (leaving a mark), succeed after that."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "survived"


def allocate(nbytes):
    """Use ``nbytes`` of memory, a little at a time (every page written), then hold it."""
    chunks, total = [], 0
    while total < nbytes:
        chunks.append(b"x" * 10_000_000)
        total += 10_000_000
        time.sleep(0.01)
    time.sleep(5)  # a nanny that does not step in lets the task finish
    return total


def allocate_in_a_child(pidfile):
    """Start a process that uses 400 MB (and says its pid), and wait for it."""
    code = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "b = b'x' * 400_000_000; time.sleep(20)"
    )
    subprocess.run([sys.executable, "-c", code, pidfile])


async def replaced(s, n, old_address):
    """Wait until a worker other than ``old_address`` is the one registered for ``n``."""
    await apoll(
        lambda: (
            n.worker_address not in (None, old_address)
            and list(s.state.workers) == [n.worker_address]
        )
    )


def test_worker_killed_by_a_signal_is_restarted(caplog):
    async def main():
        async with (
            Scheduler() as s,
            Nanny(s.address, nthreads=1, name="sig", env={"DISTRIBUTARY_TEST_VAR": "y"}) as n,
            Client(s.address, asynchronous=True) as c,
        ):
            assert await c.submit(inc, 1) == 2
            for _ in range(2):
                old_pid, old_address = n.process.pid, n.worker_address
                with caplog.at_level(logging.WARNING, logger="distributary.nanny"):
                    os.kill(old_pid, signal.SIGKILL)
                    await replaced(s, n, old_address)
                assert gone(old_pid)
                assert n.process.pid != old_pid
                assert [p.pid for p in children()] == [n.process.pid]
                assert f"{old_pid} ({old_address}) was killed by signal SIGKILL" in caplog.text
                assert n.worker_address in repr(n)
                assert s.state.workers[n.worker_address].name == "sig"
                assert s.state.workers[n.worker_address].nanny == n.address
                environ = psutil.Process(n.process.pid).environ()
                assert environ["DISTRIBUTARY_TEST_VAR"] == "y"
                assert await c.submit(inc, 10) == 11
            assert n.status == "running"
        assert not children()

    run(main())


def test_worker_dying_while_starting_is_retried(tmp_path, caplog):
    deaths = tmp_path / "deaths"
    deaths.write_text("0")

    async def main():
        env = {"DISTRIBUTARY_TEST_DEATHS": str(deaths)}
        async with (
            Scheduler() as s,
            Nanny(s.address, nthreads=1, worker_class=FlakyWorker, env=env) as n,
        ):
            with caplog.at_level(logging.WARNING, logger="distributary.nanny"):
                deaths.write_text("3")
                old_address = n.worker_address
                os.kill(n.process.pid, signal.SIGKILL)
                await replaced(s, n, old_address)
                assert caplog.text.count("(while starting) exited with code 5; restarting") == 3
                assert n.status == "running"

                # an explicit kill stops the retries
                caplog.clear()
                deaths.write_text("1000")
                os.kill(n.process.pid, signal.SIGKILL)
                await apoll(lambda: "(while starting) exited with code 5" in caplog.text)
                await n.kill()
                assert n.process is None and not children()
                deaths.write_text("0")
                assert await n.instantiate() == "running"
                await apoll(lambda: list(s.state.workers) == [n.worker_address])

    run(main())


def test_task_that_exits_the_worker(tmp_path):
    async def main():
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            s = await Scheduler()
        async with s, Nanny(s.address, nthreads=1) as n, Client(s.address, asynchronous=True) as c:
            first_pid = n.process.pid
            marker = str(tmp_path / "marker")
            assert await c.submit(exit_unless_marked, marker) == "survived"
            assert gone(first_pid) and n.process.pid != first_pid

            start = time.monotonic()
            future = c.submit(os._exit, 1, key="always-exits")
            with pytest.raises(KilledWorker, match="always-exits"):
                await future
            assert time.monotonic() - start < 10  # two deaths and two restarts
            assert await c.submit(inc, 1) == 2
            assert len(children()) == 1 and len(s.state.workers) == 1

    run(main())


def test_worker_past_its_memory_limit_is_restarted(caplog):
    async def main():
        config = {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.worker.memory.terminate": 0.95,
            "distributed.worker.memory.monitor-interval": "20ms",
        }
        with dask.config.set(config):
            s = await Scheduler()
            n = Nanny(s.address, nthreads=1, memory_limit="300MB")
        assert n.memory_limit == 300_000_000
        async with s, n, Client(s.address, asynchronous=True) as c:
            old_pid, old_address = n.process.pid, n.worker_address
            with caplog.at_level(logging.WARNING):
                future = c.submit(allocate, 400_000_000, key="hog")
                with pytest.raises(KilledWorker, match="hog") as info:
                    await future
                await replaced(s, n, old_address)
            assert gone(old_pid)
            reason = "exceeded 95% of its 286.10 MiB memory limit"
            assert f"Worker {old_address} (pid={old_pid}) {reason}" in caplog.text
            assert "was killed by signal SIGTERM" in caplog.text
            # the scheduler was told why, and says so
            assert reason in str(info.value)
            assert await c.submit(inc, 1) == 2

    run(main())


def test_memory_of_the_workers_children_counts(tmp_path):
    async def main():
        config = {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.worker.memory.monitor-interval": "20ms",
        }
        with dask.config.set(config):
            s = await Scheduler()
            n = Nanny(s.address, nthreads=1, memory_limit="300MB")
        async with s, n, Client(s.address, asynchronous=True) as c:
            old_address = n.worker_address
            pidfile = tmp_path / "pid"
            with pytest.raises(KilledWorker, match="memory limit"):
                await c.submit(allocate_in_a_child, str(pidfile))
            poll(lambda: gone(int(pidfile.read_text())))  # the child was killed too
            await replaced(s, n, old_address)

    run(main())


def test_memory_watch_is_off_without_a_limit_or_fraction():
    def watching(n):
        return any(t.get_coro().__name__ == "_watch_memory" for t in n._background)

    async def main():
        async with Scheduler() as s:
            async with Nanny(s.address, nthreads=1, memory_limit="1GB") as n:
                assert n.memory_limit == 1_000_000_000
                assert watching(n)
            async with Nanny(s.address, nthreads=1, memory_limit=0) as n:
                assert n.memory_limit == 0
                assert not watching(n)
            with dask.config.set({"distributed.worker.memory.terminate": False}):
                n = Nanny(s.address, nthreads=1, memory_limit=0.5)
            async with n:
                assert n.memory_limit == psutil.virtual_memory().total // 2
                assert not watching(n)

    run(main())


# ---------------------------------------------------------------------- closing


def test_close_gracefully():
    async def main():
        async with Scheduler() as s:
            # over rpc, then the worker closes: no restart, the nanny closes
            n = await Nanny(s.address, nthreads=1)
            pool = ConnectionPool()
            try:
                assert await pool.call(n.address, {"op": "close_gracefully"}) == "OK"
                assert n.status == "running"
                assert await pool.call(n.worker_address, {"op": "close", "nanny": False}) == "OK"
            finally:
                await pool.close()
            await asyncio.wait_for(n.finished(), 10)
            assert n.status == "closed" and n.process is None
            await apoll(lambda: not s.state.workers)

            # the method, then the worker dies
            n = await Nanny(s.address, nthreads=1)
            await n.close_gracefully()
            os.kill(n.process.pid, signal.SIGKILL)
            await asyncio.wait_for(n.finished(), 10)
            await apoll(lambda: not s.state.workers)

            # no worker process at all: it closes at once
            n = await Nanny(s.address, nthreads=1)
            await n.kill()
            await n.close_gracefully()
            await asyncio.wait_for(n.finished(), 10)
            assert not children()

    run(main())


def test_nanny_closes_after_its_scheduler_goes_away(caplog):
    async def main():
        # the worker loses the scheduler and closes, and tells its nanny to close too
        s = await Scheduler()
        async with Nanny(s.address, nthreads=1, death_timeout="2s") as n:
            await s.close()
            start = time.monotonic()
            await asyncio.wait_for(n.finished(), 15)
            assert time.monotonic() - start < 2 + 3
            assert not children()

        # the worker dies without a word, then the scheduler goes: the new worker cannot
        # connect, and the nanny gives up after death_timeout
        s = await Scheduler()
        async with Nanny(s.address, nthreads=1, death_timeout="2s") as n:
            with caplog.at_level(logging.ERROR, logger="distributary.nanny"):
                os.kill(n.process.pid, signal.SIGKILL)
                await s.close()
                start = time.monotonic()
                await asyncio.wait_for(n.finished(), 15)
            assert time.monotonic() - start < 2 + 3
            assert "could not start a new worker process" in caplog.text
            assert not children()

    run(main())


def test_nanny_with_an_unreachable_scheduler_gives_up():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"

    async def main():
        n = Nanny(address, nthreads=1, death_timeout="1s")
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await n
        assert time.monotonic() - start < 1 + 3
        assert n.status == "closed"
        assert not children()

    run(main())


def test_explicit_kill_instantiate_restart_do_not_race_the_auto_restart():
    def sigkill(process):
        os.kill(process.pid, signal.SIGKILL)
        poll(lambda: gone(process.pid))  # blocks the loop: the nanny has not noticed yet

    async def main():
        async with Scheduler() as s, Nanny(s.address, nthreads=1) as n:

            async def only_one_worker(old):
                await n.instantiate()  # the lock is fair: the watcher of the dead one ran first
                await replaced(s, n, old.worker_address)
                assert [p.pid for p in children()] == [n.process.pid]

            # a death, then an explicit instantiate or restart before the watcher acts
            for action in (n.instantiate, n.restart):
                old = n.process
                sigkill(old)
                await action()
                await only_one_worker(old)

            # a death the nanny's own kill sees first: no restart
            old = n.process
            sigkill(old)
            await n.kill()
            assert n.process is None
            await old.join()
            await n.kill()
            assert n.process is None and not children()
            await n.instantiate()
            await only_one_worker(old)

            # an explicit restart while the auto-restart is under way
            old = n.process
            sigkill(old)
            await apoll(lambda: n.process is not old)
            assert await n.restart() == "OK"
            await only_one_worker(old)

    run(main())
