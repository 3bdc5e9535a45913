"""SSHCluster: a scheduler on the first host and workers on the others, started over SSH.

Each server runs as ``python -m distributary.cli spec --spec JSON`` in a session of
its own (asyncssh), on a terminal, the spec naming the class and its options.  Its
output is read line by line: the address the server logs (``Scheduler at:``,
``Worker at:``) is where it listens; the lines after it are kept (the last few
hundred) so that the pipe never fills.  Closing asks the server itself to close (a
request, as sshd does not pass signals to a root session), waits for the command to
end, then closes the session, whose terminal hangs up whatever is left.  A server
that ends by itself marks its object closed, so that the cluster sees it go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections import deque
from typing import Any

from distributary.core import ConnectionPool
from distributary.deploy.process import ProcessInterface
from distributary.deploy.spec import SpecCluster
from distributary.protocol import requests as rq

logger = logging.getLogger("distributary.deploy")

_START_TIMEOUT = 60.0  # seconds for a remote server to say where it listens
_STOP_TIMEOUT = 10.0  # seconds for a remote server to stop once asked
_KEPT_LINES = 500  # lines of each remote server's stderr kept


def _asyncssh() -> Any:
    try:
        import asyncssh
    except ImportError:
        raise ImportError("SSHCluster needs asyncssh: pip install 'distributary[ssh]'") from None
    return asyncssh


class SSHProcess(ProcessInterface):
    """One remote ``distributary spec`` process on ``host``, reached with asyncssh's
    ``connect_options``; ``marker`` is the log line's start that gives its address."""

    marker = ""

    def __init__(
        self,
        host: str,
        spec: dict,
        connect_options: dict,
        remote_python: str | None,
        scheduler: str | None = None,
        name: Any = None,
    ):
        super().__init__(scheduler, name)
        self.host = host
        self.spec = spec
        self.connect_options = dict(connect_options)
        self.remote_python = remote_python or "python3"
        self.lines: deque[str] = deque(maxlen=_KEPT_LINES)
        self._connection: Any = None
        self._process: Any = None
        self._reader: asyncio.Task | None = None

    def command(self) -> str:
        """The command line run on the host."""
        args = [self.remote_python, "-m", "distributary.cli", "spec"]
        if self.scheduler is not None:
            args.append(self.scheduler)
        return shlex.join([*args, "--spec", json.dumps(self.spec)])

    async def start(self) -> None:
        asyncssh = _asyncssh()
        try:
            self._connection = await asyncio.wait_for(
                asyncssh.connect(self.host, **self.connect_options), _START_TIMEOUT
            )
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise OSError(f"Could not connect to {self.host} over SSH: {exc!r}") from exc
        self._process = await self._connection.create_process(self.command(), term_type="dumb")
        address = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read(address))
        try:
            self.address = await asyncio.wait_for(asyncio.shield(address), _START_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{type(self).__name__} on {self.host} did not start within {_START_TIMEOUT} s"
                + self._tail()
            ) from None
        await super().start()

    async def _read(self, address: asyncio.Future) -> None:
        """Read stderr: the address, then keep the lines; when it ends, so did the server."""
        try:
            async for line in self._process.stdout:  # (a terminal's: stderr too)
                line = line.rstrip("\r\n")
                self.lines.append(line)
                if not address.done() and self.marker in line:
                    address.set_result(line.split(self.marker, 1)[1].split(",")[0].strip())
            await self._process.wait()
        finally:
            if not address.done():
                status = getattr(self._process, "exit_status", None)
                address.set_exception(
                    RuntimeError(
                        f"{type(self).__name__} on {self.host} exited (status {status}) "
                        "before it started" + self._tail()
                    )
                )
            if self.status == "running":
                logger.warning("%r ended by itself%s", self, self._tail(5))
                self._mark_closed()

    def _tail(self, n: int = 20) -> str:
        lines = list(self.lines)[-n:]
        return (":\n" + "\n".join(lines)) if lines else ""

    def close_request(self) -> rq.Request:
        """What asks the server to close."""
        raise NotImplementedError

    async def close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closing"
        if self.address is not None and self._process.exit_status is None:
            pool = ConnectionPool(role="cluster")
            try:
                await pool.call(self.address, self.close_request(), timeout=_STOP_TIMEOUT)
                await asyncio.wait_for(self._process.wait_closed(), _STOP_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                logger.warning("%r did not close when asked (%r): hanging up", self, exc)
            finally:
                await pool.close()
        if self._connection is not None:
            self._connection.close()
            await self._connection.wait_closed()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await super().close()


class SSHScheduler(SSHProcess):
    """A scheduler started over SSH."""

    marker = "Scheduler at:"

    def __init__(self, host: str, connect_options: dict, options: dict, remote_python=None):
        options = {"host": host, "port": 0, **options}
        spec = {"cls": "distributary.Scheduler", "options": options}
        super().__init__(host, spec, connect_options, remote_python, name="scheduler")

    def close_request(self) -> rq.Request:
        return rq.Terminate()


class SSHWorker(SSHProcess):
    """A worker (or nanny: ``worker_class``) started over SSH for ``scheduler``."""

    marker = "Worker at:"

    def __init__(
        self,
        scheduler: str,
        host: str,
        connect_options: dict,
        options: dict,
        worker_class: str = "distributary.Nanny",
        remote_python: str | None = None,
        name: Any = None,
    ):
        options = {"host": host, **options, "name": name}
        spec = {"cls": worker_class, "options": options}
        super().__init__(host, spec, connect_options, remote_python, scheduler, name)

    @property
    def worker_address(self) -> str | None:
        """Where the worker listens."""
        return self.address

    def close_request(self) -> rq.Request:
        return rq.CloseWorker(nanny=True)  # (its nanny, if it has one, closes too)


class SSHCluster(SpecCluster):
    """A cluster over SSH: the scheduler on ``hosts[0]``, a worker on each other host.

    ``connect_options`` are asyncssh.connect's keywords (``username``, ``port``,
    ``client_keys``, ``known_hosts``, ...), one dict for all hosts or a list with one
    per host; ``scheduler_options`` and ``worker_options`` are the Scheduler's and the
    worker class's keywords (plain values, as they travel as JSON); ``worker_class``
    is the dotted name of the worker class (a Nanny by default); ``remote_python``
    the Python to run on the hosts (one, or a list with one per host).  The other
    keywords go to :class:`SpecCluster`.  Needs ``pip install 'distributary[ssh]'``.
    """

    def __init__(
        self,
        hosts: list[str] | None = None,
        connect_options: dict | list[dict] | None = None,
        worker_options: dict | None = None,
        scheduler_options: dict | None = None,
        worker_module: str = "deprecated",
        worker_class: str = "distributary.Nanny",
        remote_python: str | list[str] | None = None,
        **kwargs: Any,
    ):
        _asyncssh()
        if worker_module != "deprecated":
            raise NotImplementedError(
                "SSHCluster(worker_module=...) is deprecated; use worker_class"
            )
        hosts = list(hosts or [])
        if len(hosts) < 2:
            raise ValueError(
                f"SSHCluster needs at least two hosts (the scheduler's, then the workers'), "
                f"not {hosts!r}"
            )
        connect = _per_host(connect_options or {}, hosts, "connect_options", dict)
        pythons = _per_host(remote_python, hosts, "remote_python", str)
        if not isinstance(worker_class, str):
            worker_class = f"{worker_class.__module__}.{worker_class.__qualname__}"
        scheduler = {
            "cls": SSHScheduler,
            "options": {
                "host": hosts[0],
                "connect_options": connect[0],
                "options": dict(scheduler_options or {}),
                "remote_python": pythons[0],
            },
        }
        workers = {
            i: {
                "cls": SSHWorker,
                "options": {
                    "host": host,
                    "connect_options": options,
                    "options": dict(worker_options or {}),
                    "worker_class": worker_class,
                    "remote_python": python,
                },
            }
            for i, (host, options, python) in enumerate(zip(hosts[1:], connect[1:], pythons[1:]))
        }
        super().__init__(workers=workers, scheduler=scheduler, worker=None, **kwargs)


def _per_host(value: Any, hosts: list[str], what: str, kind: type) -> list:
    """One value for every host, or a list of one per host."""
    if isinstance(value, list | tuple):
        if len(value) != len(hosts):
            raise ValueError(f"{what} has {len(value)} entries for {len(hosts)} hosts")
        return list(value)
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{what} must be a {kind.__name__} or a list of one per host")
    return [value] * len(hosts)
