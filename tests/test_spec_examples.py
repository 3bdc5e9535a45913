"""The code examples of the spec page "Python API (advanced)" (tests/spec/), run for real.

Each example is kept here verbatim, except for ``dask.distributed`` -> ``distributary``,
and runs as its own Python process (``sys.executable example.py``) on real TCP sockets.
The examples that print check their output (``11``). The ones that by design run forever
(``await s.finished()`` / ``await w.finished()``) are started, observed to stay up and
to listen (their listening sockets are found with psutil, and then spoken to), and then
stopped the way the spec describes: "until some external process connects to the
scheduler and tells it to stop"; they must then exit with status 0 and a clean stderr.

Where an example cannot run alone, the smallest change is made and said:

* the Worker example connects to ``tcp://127.0.0.1:8786``: that address is replaced by
  the address of a scheduler started by the Scheduler example;
* the ``await s.close()`` fragment runs with top-level await, with ``s`` bound to a
  started Scheduler, Worker, Nanny or Client ("you can close any Scheduler, Worker,
  Nanny, or Client class by awaiting the .close method");
* the Nanny fragment replaces the ``w = await Worker(s.address)`` line that it comments
  out, in the examples where that line (or ``Worker``) appears; a Nanny spawns its worker
  process, which imports the main module again, so these scripts get the usual
  ``if __name__ == "__main__":`` guard (dask.distributed needs it too; without it the
  script fails, and a test checks that it fails at once and says why);
* on Python >= 3.14, where ``asyncio.get_event_loop()`` without a running loop raises,
  ``asyncio.get_event_loop().run_until_complete(f(...))`` becomes ``asyncio.run(f(...))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from distributary import Client
from distributary.comm import connect

# ---------------------------------------------------------------------- the examples

FULL_EXAMPLE = """\
import asyncio
from distributary import Scheduler, Worker, Client

async def f():
    async with Scheduler() as s:
        async with Worker(s.address) as w1, Worker(s.address) as w2:
            async with Client(s.address, asynchronous=True) as client:
                future = client.submit(lambda x: x + 1, 10)
                result = await future
                print(result)

asyncio.get_event_loop().run_until_complete(f())
"""

SCHEDULER_EXAMPLE = """\
import asyncio
from distributary import Scheduler, Worker

async def f():
    s = Scheduler()        # scheduler created, but not yet running
    s = await s            # the scheduler is running
    await s.finished()     # wait until the scheduler closes

asyncio.get_event_loop().run_until_complete(f())
"""

CLOSE_FRAGMENT = """\
await s.close()
"""

WORKER_EXAMPLE = """\
import asyncio
from distributary import Scheduler, Worker

async def f(scheduler_address):
    w = await Worker(scheduler_address)
    await w.finished()

asyncio.get_event_loop().run_until_complete(f("tcp://127.0.0.1:8786"))
"""

MANY_EXAMPLE = """\
import asyncio
from distributary import Scheduler, Worker

async def f():
    s = await Scheduler()
    w = await Worker(s.address)
    await w.finished()
    await s.finished()

asyncio.get_event_loop().run_until_complete(f())
"""

CONTEXT_MANAGERS_EXAMPLE = """\
import asyncio
from distributary import Scheduler, Worker

async def f():
    async with Scheduler() as s:
        async with Worker(s.address) as w:
            await w.finished()
            await s.finished()

asyncio.get_event_loop().run_until_complete(f())
"""

CONTEXT_MANAGERS_CLIENT_EXAMPLE = FULL_EXAMPLE  # the page repeats it word for word

NANNY_FRAGMENT = """\
# w = await Worker(s.address)
w = await Nanny(s.address)
"""

# In the order of the page.
EXAMPLES = [
    FULL_EXAMPLE,
    SCHEDULER_EXAMPLE,
    CLOSE_FRAGMENT,
    WORKER_EXAMPLE,
    MANY_EXAMPLE,
    CONTEXT_MANAGERS_EXAMPLE,
    CONTEXT_MANAGERS_CLIENT_EXAMPLE,
    NANNY_FRAGMENT,
]

# A copy of the spec page (``shared/spec/000_*.txt``), so that the test needs nothing
# outside the repository.
_SPEC_PAGE = pathlib.Path(__file__).resolve().parent / "spec" / "python_api_advanced.txt"
_STDERR_TROUBLE = (
    "Traceback",
    "Task was destroyed",
    "was never awaited",
    "Exception ignored",
    "Unclosed",
    "unclosed",
    "leaked",
    "Error",
)


def _code_blocks(text: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a reStructuredText page, dedented."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
        else:
            i += 1
    return blocks


def test_examples_are_the_spec_pages_examples_verbatim():
    blocks = _code_blocks(_SPEC_PAGE.read_text())
    blocks = [b.replace("dask.distributed", "distributary") for b in blocks]
    assert blocks == EXAMPLES


# ---------------------------------------------------------------------- helpers


def _portable(src: str) -> str:
    """The example as it can run on this Python (see the module docstring)."""
    if sys.version_info < (3, 14):
        return src
    return re.sub(
        r"asyncio\.get_event_loop\(\)\.run_until_complete\((.*)\)$",
        r"asyncio.run(\1)",
        src,
        flags=re.MULTILINE,
    )


def _guarded(src: str) -> str:
    """The example with its last line under ``if __name__ == "__main__":``."""
    *body, last = src.rstrip("\n").split("\n")
    assert last.startswith("asyncio."), last
    return "\n".join([*body, 'if __name__ == "__main__":', "    " + last]) + "\n"


def _write(tmp_path: pathlib.Path, name: str, src: str) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(_portable(src))
    return path


def _assert_clean_stderr(stderr: str) -> None:
    bad = [word for word in _STDERR_TROUBLE if word in stderr]
    assert not bad, f"stderr mentions {bad}:\n{stderr}"


def run_example(tmp_path: pathlib.Path, src: str, timeout: float = 45) -> str:
    """Run a terminating example; return its stdout after checking it exited cleanly."""
    path = _write(tmp_path, "example.py", src)
    with _process(path) as proc:
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example did not finish within {timeout} s:\n{proc.stderr()}")
        stdout, stderr = proc.stdout(), proc.stderr()
    assert proc.popen.returncode == 0, stderr
    _assert_clean_stderr(stderr)
    return stdout


class _Proc:
    """A running example: its Popen and its output files."""

    def __init__(self, popen: subprocess.Popen, out: pathlib.Path, err: pathlib.Path):
        self.popen = popen
        self._out = out
        self._err = err

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self._out.read_text()

    def stderr(self) -> str:
        return self._err.read_text()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {self.pid} still running after {timeout} s:\n{self.stderr()}")


def _default_sigint() -> None:
    # As a program started from a terminal has it, even when these tests run where
    # SIGINT is ignored (a shell's background job): Python then never raises
    # KeyboardInterrupt, and the Ctrl-C test would hang.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _process(path: pathlib.Path, new_session: bool = False) -> Iterator[_Proc]:
    """Start ``python path``; on the way out, kill whatever of it still runs."""
    out = path.with_suffix(".out")
    err = path.with_suffix(".err")
    with open(out, "w") as fout, open(err, "w") as ferr:
        popen = subprocess.Popen(
            [sys.executable, str(path)],
            stdout=fout,
            stderr=ferr,
            cwd=path.parent,
            start_new_session=new_session,
            preexec_fn=_default_sigint,
        )
    proc = _Proc(popen, out, err)
    seen: dict[int, psutil.Process] = {}
    try:
        yield proc
    finally:
        for child in proc.descendants():
            seen[child.pid] = child
        if popen.poll() is None:
            popen.kill()
        popen.wait(15)
        for child in seen.values():
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(list(seen.values()), timeout=10)


def poll(predicate: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    """Wait until ``predicate()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or predicate}")
        time.sleep(0.01)


def listening_ports(pid: int) -> set[int]:
    """The ports of the servers that process ``pid`` runs (not their web servers: a
    worker serves /metrics and /health on a port of its own)."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and _speaks(c.laddr.port)}


def _speaks(port: int) -> bool:
    """Whether the server on ``port`` speaks first, as distributary's do (each side of a
    connection sends its handshake at once); a web server waits for a request."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(0.5)
            return bool(sock.recv(1))
    except OSError:  # (socket.timeout too)
        return False


def wait_listening(proc: _Proc, n: int, pid: int | None = None) -> set[int]:
    """Wait until the process listens on ``n`` ports; fail at once if it died."""
    pid = proc.pid if pid is None else pid

    def ready() -> bool:
        if not proc.alive():
            pytest.fail(f"the example exited ({proc.popen.returncode}):\n{proc.stderr()}")
        return len(listening_ports(pid)) >= n

    poll(ready, what=f"process {pid} listening on {n} ports")
    ports = listening_ports(pid)
    assert len(ports) == n, ports
    return ports


def call(address: str, msg: dict, timeout: float = 10) -> object:
    """One request/reply exchange with the server at ``address``."""

    async def exchange() -> object:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write(msg)
            if not msg.get("reply", True):
                return None
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    return asyncio.run(exchange())


def roles(ports: set[int]) -> dict[str, str]:
    """``{"Scheduler": address, "Worker": address, ...}`` of the servers on ``ports``."""
    found = {}
    for port in ports:
        address = f"tcp://127.0.0.1:{port}"
        identity = call(address, {"op": "identity"})
        assert identity["address"] == address, identity
        found[identity["type"]] = address
    return found


def scheduler_workers(address: str) -> dict:
    return call(address, {"op": "identity"})["workers"]


def submit_from_here(scheduler_address: str) -> object:
    """The spec's computation, from a blocking Client in this process."""
    with Client(scheduler_address, timeout=10) as client:
        return client.submit(lambda x: x + 1, 10).result(timeout=30)


def terminate(address: str) -> None:
    """Tell a scheduler or nanny to stop (op ``terminate``)."""
    assert call(address, {"op": "terminate"}) == "OK"


def close_worker(address: str) -> None:
    """Tell a worker to close (op ``close``)."""
    assert call(address, {"op": "close"}) == "OK"


def assert_exits_cleanly(proc: _Proc) -> None:
    assert proc.wait_exit() == 0, proc.stderr()
    _assert_clean_stderr(proc.stderr())
    assert proc.stdout() == ""


@contextlib.contextmanager
def scheduler_example(tmp_path: pathlib.Path) -> Iterator[tuple[_Proc, str]]:
    """The Scheduler example, running; yields it and its address."""
    path = _write(tmp_path, "scheduler_example.py", SCHEDULER_EXAMPLE)
    with _process(path) as proc:
        (port,) = wait_listening(proc, 1)
        yield proc, f"tcp://127.0.0.1:{port}"


# ---------------------------------------------------------------------- terminating examples


def test_full_example_prints_11(tmp_path):
    assert run_example(tmp_path, FULL_EXAMPLE) == "11\n"


def test_context_managers_example_with_client_prints_11(tmp_path):
    assert run_example(tmp_path, CONTEXT_MANAGERS_CLIENT_EXAMPLE) == "11\n"


def test_full_example_with_nannies_instead_of_workers_prints_11(tmp_path):
    """ "we can replace Worker with Nanny if we want your workers to be managed in a
    separate process": the full example with every ``Worker`` a ``Nanny``."""
    src = FULL_EXAMPLE.replace("Worker", "Nanny")
    assert "Nanny(s.address) as w1, Nanny(s.address) as w2" in src
    assert run_example(tmp_path, _guarded(src)) == "11\n"


def test_nanny_example_without_main_guard_fails_fast_and_says_why(tmp_path):
    """Spawned worker processes import the main module again: a script that starts a
    Nanny at import time cannot work (as with dask.distributed). It must fail promptly
    with an error that names the cure, and leave no process behind."""
    src = FULL_EXAMPLE.replace("Worker", "Nanny")
    path = _write(tmp_path, "example.py", src)
    with _process(path) as proc:
        poll(lambda: proc.descendants() or not proc.alive(), what="a child process")
        children = proc.descendants()
        assert proc.wait_exit(45) != 0
        assert "__name__ == '__main__'" in proc.stderr() or (
            '__name__ == "__main__"' in proc.stderr()
        ), proc.stderr()
        assert proc.stdout() == ""
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"processes outlived the example: {alive}"


def test_nanny_fragment_in_the_full_example_prints_11_and_leaves_no_worker(tmp_path):
    """The Nanny fragment in the full example's context, as the page shows it: the
    nanny is never closed explicitly; the program still ends and no worker survives it."""
    src = FULL_EXAMPLE.replace(
        "from distributary import Scheduler, Worker, Client",
        "from distributary import Scheduler, Worker, Nanny, Client",
    ).replace(
        "        async with Worker(s.address) as w1, Worker(s.address) as w2:\n",
        textwrap.indent(NANNY_FRAGMENT, " " * 8) + "        if True:\n",
    )
    assert "        w = await Nanny(s.address)\n        if True:\n" in src
    path = _write(tmp_path, "example.py", _guarded(src))
    with _process(path) as proc:
        poll(lambda: proc.descendants() or not proc.alive(), what="the worker process")
        children = proc.descendants()
        assert proc.wait_exit(45) == 0, proc.stderr()
        assert proc.stdout() == "11\n"
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"worker processes outlived the example: {alive}"


@pytest.mark.parametrize("kind", ["Scheduler", "Worker", "Nanny", "Client"])
def test_close_fragment_closes_each_kind_of_object(tmp_path, kind):
    """``await s.close()``, verbatim, with ``s`` a running Scheduler, Worker, Nanny or
    Client: afterwards its status is ``closed`` and nothing listens where it did."""
    fragment = tmp_path / "fragment.py"
    fragment.write_text(CLOSE_FRAGMENT)
    runner = _write(
        tmp_path,
        "runner.py",
        _guarded(
            textwrap.dedent(
                f"""
            import ast, asyncio, json, sys
            from distributary import Client, Nanny, Scheduler, Worker

            async def refused(address):
                host, port = address[len("tcp://"):].rsplit(":", 1)
                try:
                    _, writer = await asyncio.open_connection(host, int(port))
                except OSError:
                    return True
                writer.close()
                return False

            async def main():
                kind = {kind!r}
                async with Scheduler() as scheduler:
                    if kind == "Scheduler":
                        s = scheduler
                    elif kind == "Client":
                        s = await Client(scheduler.address, asynchronous=True)
                    else:
                        s = await globals()[kind](scheduler.address)
                    address = getattr(s, "address", None)
                    worker_pid = s.process.pid if kind == "Nanny" else None
                    code = compile(
                        open(sys.argv[1]).read(), sys.argv[1], "exec",
                        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                    )
                    result = eval(code, {{"s": s}})
                    if result is not None:
                        await result
                    print(json.dumps({{
                        "status": s.status,
                        "refused": await refused(address) if address else None,
                        "worker_pid": worker_pid,
                        "workers_left": len(scheduler.workers),
                    }}))

            asyncio.run(main())
            """
            )
        ),
    )
    popen = subprocess.run(
        [sys.executable, str(runner), str(fragment)],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=tmp_path,
    )
    assert popen.returncode == 0, popen.stderr
    _assert_clean_stderr(popen.stderr)
    report = json.loads(popen.stdout)
    assert report["status"] == "closed"
    if kind != "Client":
        assert report["refused"] is True
    if kind in ("Worker", "Nanny"):
        # the scheduler heard of it: the worker is no longer registered
        assert report["workers_left"] == 0
    if kind == "Nanny":
        assert not psutil.pid_exists(report["worker_pid"]) or (
            psutil.Process(report["worker_pid"]).status() == psutil.STATUS_ZOMBIE
        )


# ---------------------------------------------------------------------- forever examples


def test_scheduler_example_runs_until_told_to_stop(tmp_path):
    with scheduler_example(tmp_path) as (proc, address):
        assert roles(listening_ports(proc.pid)) == {"Scheduler": address}
        assert scheduler_workers(address) == {}
        assert proc.alive()
        terminate(address)
        assert_exits_cleanly(proc)


def test_worker_example_joins_a_running_scheduler(tmp_path):
    with scheduler_example(tmp_path) as (sched, address):
        src = WORKER_EXAMPLE.replace("tcp://127.0.0.1:8786", address)
        assert src.count(address) == 1
        path = _write(tmp_path, "worker_example.py", src)
        with _process(path) as proc:
            (port,) = wait_listening(proc, 1)
            worker = f"tcp://127.0.0.1:{port}"
            assert roles({port}) == {"Worker": worker}
            poll(lambda: worker in scheduler_workers(address), what="worker registered")
            assert submit_from_here(address) == 11
            assert proc.alive()
            close_worker(worker)
            assert_exits_cleanly(proc)
        poll(lambda: scheduler_workers(address) == {}, what="worker unregistered")
        assert sched.alive()
        terminate(address)
        assert_exits_cleanly(sched)


def _many_in_one_loop(tmp_path: pathlib.Path, src: str) -> None:
    """Run a scheduler-and-worker-forever example; stop the worker, then the scheduler."""
    path = _write(tmp_path, "example.py", src)
    with _process(path) as proc:
        found = roles(wait_listening(proc, 2))
        assert set(found) == {"Scheduler", "Worker"}
        scheduler, worker = found["Scheduler"], found["Worker"]
        poll(lambda: worker in scheduler_workers(scheduler), what="worker registered")
        assert submit_from_here(scheduler) == 11
        # ``await w.finished()`` returns when the worker closes ...
        close_worker(worker)
        poll(lambda: scheduler_workers(scheduler) == {}, what="worker unregistered")
        poll(lambda: len(listening_ports(proc.pid)) == 1, what="worker's port closed")
        # ... and then ``await s.finished()`` keeps the scheduler running, until told.
        assert proc.alive()
        assert call(scheduler, {"op": "identity"})["type"] == "Scheduler"
        terminate(scheduler)
        assert_exits_cleanly(proc)


def test_start_many_in_one_event_loop_example(tmp_path):
    _many_in_one_loop(tmp_path, MANY_EXAMPLE)


def test_context_managers_example(tmp_path):
    _many_in_one_loop(tmp_path, CONTEXT_MANAGERS_EXAMPLE)


@pytest.mark.parametrize("example", [MANY_EXAMPLE, CONTEXT_MANAGERS_EXAMPLE])
def test_forever_example_ends_when_the_scheduler_is_told_to_stop(tmp_path, example):
    """Stopping only the scheduler ends the program too: the worker, having lost its
    scheduler, closes, so that ``await w.finished()`` returns."""
    path = _write(tmp_path, "example.py", example)
    with _process(path) as proc:
        found = roles(wait_listening(proc, 2))
        poll(lambda: found["Worker"] in scheduler_workers(found["Scheduler"]))
        terminate(found["Scheduler"])
        assert_exits_cleanly(proc)


def _nanny_many_example() -> str:
    """The "Start many" example with its Worker line replaced by the Nanny fragment."""
    src = MANY_EXAMPLE.replace(
        "from distributary import Scheduler, Worker",
        "from distributary import Scheduler, Worker, Nanny",
    ).replace("    w = await Worker(s.address)\n", textwrap.indent(NANNY_FRAGMENT, " " * 4))
    assert "    # w = await Worker(s.address)\n    w = await Nanny(s.address)\n" in src
    return _guarded(src)


def _start_nanny_example(proc: _Proc) -> tuple[dict, psutil.Process]:
    found = roles(wait_listening(proc, 2))
    assert set(found) == {"Scheduler", "Nanny"}

    def listening_children() -> list[psutil.Process]:
        return [p for p in proc.descendants() if listening_ports(p.pid)]

    poll(listening_children, what="a worker process listening")
    (child,) = listening_children()
    (port,) = listening_ports(child.pid)
    worker = f"tcp://127.0.0.1:{port}"
    assert roles({port}) == {"Worker": worker}
    poll(lambda: worker in scheduler_workers(found["Scheduler"]), what="worker registered")
    # the worker runs in its own process, under the nanny
    assert scheduler_workers(found["Scheduler"])[worker]["nanny"] == found["Nanny"]
    assert call(found["Nanny"], {"op": "identity"})["worker_address"] == worker
    found["Worker"] = worker
    return found, child


def test_nanny_example_runs_its_worker_in_another_process(tmp_path):
    path = _write(tmp_path, "example.py", _nanny_many_example())
    with _process(path) as proc:
        found, child = _start_nanny_example(proc)
        assert child.pid != proc.pid
        assert submit_from_here(found["Scheduler"]) == 11
        # stopping the nanny stops its worker process; ``await w.finished()`` returns
        terminate(found["Nanny"])
        psutil.wait_procs([child], timeout=20)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        poll(lambda: scheduler_workers(found["Scheduler"]) == {}, what="worker unregistered")
        assert proc.alive()  # ``await s.finished()``
        terminate(found["Scheduler"])
        assert_exits_cleanly(proc)


def test_nanny_example_killed_leaves_no_worker_process(tmp_path):
    """A worker process never outlives its nanny, even one killed with SIGKILL."""
    path = _write(tmp_path, "example.py", _nanny_many_example())
    with _process(path) as proc:
        _, child = _start_nanny_example(proc)
        proc.popen.send_signal(signal.SIGKILL)
        proc.wait_exit()
        gone, alive = psutil.wait_procs([child], timeout=20)
        assert not alive, f"the worker process {child.pid} outlived its nanny"


def test_nanny_example_interrupted_with_ctrl_c_stops_with_its_worker(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends the
    program promptly, and its worker process with it."""
    path = _write(tmp_path, "example.py", _nanny_many_example())
    with _process(path, new_session=True) as proc:
        _, child = _start_nanny_example(proc)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait_exit()
        gone, alive = psutil.wait_procs([child], timeout=20)
        assert not alive, f"the worker process {child.pid} outlived the interrupted program"
        assert "Traceback" not in proc.stderr() or "KeyboardInterrupt" in proc.stderr()
