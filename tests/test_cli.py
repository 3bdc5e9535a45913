"""The command line: ``distributary scheduler`` and ``distributary worker`` as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from conftest import gone, poll

from distributary import Client, Nanny, Scheduler, Worker, get_worker
from distributary.cli import main
from distributary.utils.process import cpu_count


class Command:
    """A ``python -m distributary.cli ...`` process, its log in a file."""

    def __init__(self, args: tuple, log: Path):
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distributary.cli", *map(str, args)],
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[str]:
        """Wait for ``count`` matches of ``pattern`` in the log; their first groups."""
        matches: list[str] = []

        def found() -> bool:
            matches[:] = re.findall(pattern, self.output())
            if self.proc.poll() is not None and len(matches) < count:
                pytest.fail(f"exited with {self.proc.returncode}:\n{self.output()}")
            return len(matches) >= count

        poll(found, timeout=timeout, interval=0.02)
        return matches[:count]

    def descendants(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def exit_code(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        """Kill the process and its descendants (the test's last resort)."""
        try:
            root = psutil.Process(self.proc.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.proc.wait(10)
        psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator:
    """``cli(*args)`` starts a command; all are killed at the end of the test."""
    commands: list[Command] = []

    def start(*args: object) -> Command:
        command = Command(args, tmp_path / f"command-{len(commands)}.log")
        commands.append(command)
        return command

    try:
        yield start
    finally:
        for command in commands:
            command.kill()


def start_scheduler(cli, *args: object) -> tuple[Command, str]:
    scheduler = cli("scheduler", "--port", "0", *args)
    (address,) = scheduler.wait_for(r"Scheduler at: (\S+)")
    return scheduler, address


def wait_for_workers(client: Client, n: int) -> dict:
    poll(lambda: len(client.scheduler_info()["workers"]) == n, timeout=20, interval=0.05)
    return client.scheduler_info()["workers"]


def assert_clean_exit(command: Command, pids: Sequence[int] = ()) -> None:
    assert command.exit_code() == 0, command.output()
    assert "Traceback" not in command.output()
    poll(lambda: all(gone(pid) for pid in pids))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- processes


def test_worker_processes_log_like_the_command(cli):
    """A worker process under a nanny logs INFO lines in the command's format too."""
    scheduler, address = start_scheduler(cli)
    workers = cli("worker", address)
    (worker,) = workers.wait_for(r"Worker at: (\S+),")
    line = (
        rf"\d{{4}}-\d\d-\d\d [\d:,]+ - distributary\.worker - INFO - Worker at {worker} registered"
    )
    workers.wait_for(f"({line})")


def test_nanny_workers_with_scheduler_file(cli, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    scheduler, address = start_scheduler(cli, "--scheduler-file", scheduler_file)
    assert json.loads(scheduler_file.read_text())["address"] == address
    options = ["--nworkers", "2", "--nthreads", "2", "--name", "w", "--memory-limit", "100MB"]
    workers = cli(
        "worker", "--scheduler-file", scheduler_file, *options, "--resources", "GPU=2 MEM=10e9"
    )
    workers.wait_for(r"Worker at: (\S+),", count=2)
    with Client(address) as c:
        info = wait_for_workers(c, 2)
        assert sorted(w["name"] for w in info.values()) == ["w-0", "w-1"]
        for w in info.values():
            assert w["nthreads"] == 2
            assert w["memory_limit"] == 100_000_000
            assert w["resources"] == {"GPU": 2, "MEM": 10e9}
            assert w["nanny"]
        assert c.submit(os.getpid, resources={"GPU": 1}).result() != workers.proc.pid
        processes = workers.descendants()
        assert len(processes) >= 2
        workers.proc.send_signal(signal.SIGTERM)
        assert_clean_exit(workers, processes)
        wait_for_workers(c, 0)
    scheduler.proc.send_signal(signal.SIGINT)
    assert_clean_exit(scheduler)
    assert not scheduler_file.exists()


def test_in_process_workers_and_sigint_during_a_task(cli):
    scheduler, address = start_scheduler(cli, "--no-dashboard")
    workers = cli("worker", address, "--nworkers", "2", "--no-nanny", "--memory-limit", "0")
    workers.wait_for(r"Worker at: (\S+),", count=2)
    with Client(address) as c:
        info = wait_for_workers(c, 2)
        assert [w["name"] for w in info.values()] == list(info)  # (their addresses)
        assert all(w["memory_limit"] == 0 and w["nanny"] is None for w in info.values())
        assert all(w["nthreads"] == max(1, cpu_count() // 2) for w in info.values())
        assert c.submit(os.getpid).result() == workers.proc.pid
        assert not workers.descendants()
        # a task that runs on after the signal must not keep the command alive
        sleeper = c.submit(time.sleep, 60)
        poll(lambda: any(w["processing"] for w in c.scheduler_info()["workers"].values()))
        workers.proc.send_signal(signal.SIGINT)
        assert_clean_exit(workers)
        del sleeper
    scheduler.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(scheduler)


def test_second_signal_kills_the_worker_processes(cli, tmp_path):
    scheduler, address = start_scheduler(cli)
    workers = cli("worker", address)
    workers.wait_for(r"Worker at: (\S+),")
    blocked = tmp_path / "blocked"

    def block_event_loop() -> None:  # an unresponsive worker is slow to close
        blocked.touch()
        time.sleep(30)

    with Client(address) as c:
        wait_for_workers(c, 1)
        task = c.submit(lambda: get_worker().loop.call_soon_threadsafe(block_event_loop) and None)
        poll(blocked.exists)
        processes = workers.descendants()
        workers.proc.send_signal(signal.SIGTERM)
        workers.wait_for(r"(Received SIGTERM: closing)")
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.exit_code() == 1
        assert "Received SIGTERM again: killing the worker processes" in workers.output()
        poll(lambda: all(gone(pid) for pid in processes))
        del task


@pytest.mark.parametrize("nanny", ["--nanny", "--no-nanny"])
def test_workers_exit_when_the_scheduler_dies(cli, nanny):
    scheduler, address = start_scheduler(cli)
    workers = cli("worker", address, nanny, "--death-timeout", "2", "--name", "7")
    workers.wait_for(r"Worker at: \S+, name: (7),")
    processes = workers.descendants()
    scheduler.proc.kill()
    assert workers.exit_code() == 0, workers.output()
    poll(lambda: all(gone(pid) for pid in processes))


def test_lifetime_is_passed_to_the_workers(cli):
    scheduler, address = start_scheduler(cli)
    workers = cli("worker", address, "--no-nanny", "--lifetime", "0.2s", "--lifetime-stagger", "0")
    assert_clean_exit(workers)
    assert "The workers closed" in workers.output()


def test_listen_host_faces_the_scheduler(cli):
    scheduler, address = start_scheduler(cli, "--host", "0.0.0.0")
    host = address.split("://")[1].rsplit(":", 1)[0]
    if host == "127.0.0.1":
        pytest.skip("no network interface besides loopback")
    workers = cli("worker", address, "--no-nanny")
    (worker,) = workers.wait_for(r"Worker at: (\S+),")
    assert worker.startswith(f"tcp://{host}:")
    _, loopback = start_scheduler(cli, "--interface", "lo")
    assert loopback.startswith("tcp://127.0.0.1:")


def test_workers_made_in_python_face_the_scheduler_too():
    """Without ``host=``, a Worker or Nanny listens on this machine's address on the route
    to its scheduler, not on loopback (which a remote scheduler could not reach)."""

    async def main() -> None:
        async with Scheduler(host="0.0.0.0") as s:
            host = s.address.split("://")[1].rsplit(":", 1)[0]
            if host == "127.0.0.1":
                pytest.skip("no network interface besides loopback")
            async with Worker(s.address) as worker, Nanny(s.address, nthreads=1) as nanny:
                assert worker.address.startswith(f"tcp://{host}:")
                assert nanny.address.startswith(f"tcp://{host}:")
                assert nanny.worker_address.startswith(f"tcp://{host}:")
            port = s.address.rsplit(":", 1)[1]
            async with Worker(f"tcp://127.0.0.1:{port}") as local:
                assert local.address.startswith("tcp://127.0.0.1:")

    asyncio.run(main())


def test_idle_timeout_closes_the_scheduler(cli, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    options = ["--idle-timeout", "0.5s", "--worker-ttl", "1 minute"]
    scheduler, _ = start_scheduler(cli, *options, "--scheduler-file", scheduler_file)
    assert_clean_exit(scheduler)
    assert "The scheduler closed" in scheduler.output()
    assert not scheduler_file.exists()


# ---------------------------------------------------------------------- failures


def test_nothing_listening_at_the_scheduler_address(cli):
    start = time.monotonic()
    workers = cli("worker", f"tcp://127.0.0.1:{free_port()}", "--death-timeout", "1")
    assert workers.exit_code() == 1
    assert time.monotonic() - start < 10
    errors = [line for line in workers.output().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Timed out trying to connect" in errors[0], workers.output()
    assert "Traceback" not in workers.output()


def test_scheduler_file_never_written(cli, tmp_path):
    missing = tmp_path / "missing.json"
    workers = cli("worker", "--scheduler-file", missing, "--death-timeout", "0.3")
    assert workers.exit_code() == 1
    assert "Error: Could not start the workers: No scheduler address in" in workers.output()


def test_signal_while_waiting_for_the_scheduler_file(cli, tmp_path):
    workers = cli("worker", "--scheduler-file", str(tmp_path / "later.json"))
    workers.wait_for(r"(Waiting for the scheduler file)")
    workers.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(workers)


def test_port_in_use(cli):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        scheduler = cli("scheduler", "--port", str(sock.getsockname()[1]))
        assert scheduler.exit_code() == 1
    assert "Error: Could not start the scheduler:" in scheduler.output()
    assert "Traceback" not in scheduler.output()


@pytest.mark.parametrize(
    "args, message",
    [
        (["scheduler", "--port", "70000"], "'--port'"),
        (["scheduler", "--protocol", "ucx"], "only 'tcp'"),
        (["scheduler", "--idle-timeout", "soon"], "not a duration"),
        (["worker"], "Give the scheduler's address"),
        (["worker", "tcp://a:1", "--scheduler-file", "x.json"], "not both"),
        (["worker", "a:port"], "Invalid port"),
        (["worker", "a:1", "--nworkers", "many"], "neither a number nor 'auto'"),
        (["worker", "a:1", "--nworkers", "-100"], "leaves no worker"),
        (["worker", "a:1", "--nthreads", "0"], "'--nthreads'"),
        (["worker", "a:1", "--memory-limit", "lots"], "'--memory-limit'"),
        (["worker", "a:1", "--memory-limit", "-1"], "negative"),
        (["worker", "a:1", "--resources", "GPU"], "NAME=AMOUNT"),
        (["worker", "a:1", "--death-timeout", "-1"], "not a duration"),
        (["worker", "a:1", "--worker-port", "x"], "not a port"),
        (["worker", "a:1", "--nworkers", "3", "--worker-port", "9000:9001"], "2 port(s)"),
        (["worker", "a:1", "--no-nanny", "--nanny-port", "9000"], "needs --nanny"),
    ],
)
def test_bad_options(args, message):
    result = CliRunner().invoke(main, args, prog_name="distributary")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help():
    runner = CliRunner()
    for args, text in [
        ([], "distributary scheduler"),
        (["scheduler"], "--scheduler-file"),
        (["worker"], "--nworkers"),
    ]:
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and text in result.output
        assert result.output == runner.invoke(main, [*args, "-h"]).output
    assert "0.1.0" in runner.invoke(main, ["--version"]).output
    # ``python -m distributary.cli`` names itself as the installed script does
    out = subprocess.run(
        [sys.executable, "-m", "distributary.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("Usage: distributary ")
