"""The deployment scripts: ``distributary-scheduler`` and ``distributary-worker`` (and the
``dask-scheduler``/``dask-worker`` flags they take) joining through a scheduler file,
each a process of its own."""

from __future__ import annotations

import operator
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import gone, poll
from test_cli import Command

from distributary import Client
from distributary.cli import main

ROOT = Path(__file__).parent.parent
_SECTION = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
SCRIPTS = dict(re.findall(r'^([\w-]+) = "(\S+)"$', _SECTION, re.MULTILINE))  # name -> entry point


class Script(Command):
    """One of the package's scripts, run as its entry point says, its log in a file."""

    def __init__(self, name: str, args: tuple, log: Path):
        module, _, function = SCRIPTS[name].partition(":")
        code = f"from {module} import {function}; {function}(prog_name={name!r})"
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, *map(str, args)], stdout=f, stderr=subprocess.STDOUT
            )


@pytest.fixture
def script(tmp_path):
    started: list[Script] = []

    def start(name: str, *args: object) -> Script:
        started.append(Script(name, args, tmp_path / f"{name}-{len(started)}.log"))
        return started[-1]

    try:
        yield start
    finally:
        for each in started:
            each.kill()


def test_the_scripts_are_the_commands():
    assert set(SCRIPTS) >= {"distributary", "distributary-scheduler", "distributary-worker"}
    for entry in SCRIPTS.values():
        module, _, name = entry.partition(":")
        command = getattr(__import__(module, fromlist=[name]), name)
        assert isinstance(command, click.Command)


def test_scheduler_and_workers_join_through_a_scheduler_file(script, tmp_path):
    scheduler_file = tmp_path / "cluster.json"
    pid_files = tmp_path / "scheduler.pid", tmp_path / "workers.pid"
    # the workers start first, and wait for the file
    workers = script(
        "distributary-worker",
        "--scheduler-file", scheduler_file,
        "--nprocs", "2",  # (dask-worker's old spelling of --nworkers)
        "--nthreads", "1",
        "--pid-file", pid_files[1],
    )  # fmt: skip
    workers.wait_for(r"(Waiting for the scheduler file)")
    scheduler = script(
        "distributary-scheduler",
        "--port", "0",
        "--scheduler-file", scheduler_file,
        "--pid-file", pid_files[0],
    )  # fmt: skip
    workers.wait_for(r"Worker at: (\S+),", count=2)
    assert "--nprocs is deprecated" in workers.output()
    assert [int(p.read_text()) for p in pid_files] == [scheduler.proc.pid, workers.proc.pid]
    with Client(scheduler_file=str(scheduler_file), timeout=20) as client:
        client.wait_for_workers(2, timeout=20)
        assert client.gather(client.map(operator.add, range(10), range(10))) == list(
            range(0, 20, 2)
        )
        processes = workers.descendants()
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.exit_code() == 0, workers.output()
        poll(lambda: all(gone(pid) for pid in processes))
        poll(lambda: not client.scheduler_info()["workers"])
    scheduler.proc.send_signal(signal.SIGTERM)
    assert scheduler.exit_code() == 0, scheduler.output()
    assert not scheduler_file.exists() and not any(p.exists() for p in pid_files)


@pytest.mark.parametrize(
    "args, message",
    [
        (["worker", "a:1", "--preload", "x.py"], "--preload is not supported yet"),
        (["worker", "a:1", "--contact-address", "tcp://h:1"], "--contact-address is not"),
        (["worker", "a:1", "--nprocs", "many"], "neither a number nor 'auto'"),
        (["scheduler", "--show"], "--show is not supported yet"),
        (["scheduler", "--preload", "x.py"], "--preload is not supported yet"),
        (["spec", "--spec", "{"], "not JSON"),
        (["spec", "--spec", '{"cls": "no.Such"}'], "unknown class 'no.Such'"),
        (["spec"], "Give exactly one of --spec and --spec-file"),
    ],
)
def test_flags_not_supported_yet_say_so(args, message):
    result = CliRunner().invoke(main, args, prog_name="distributary")
    assert result.exit_code == 2, result.output
    assert message in result.output
