"""The nanny's handle of its worker process: spawn it, wait for its worker, watch its
memory, signal it; and the environment and configuration the process starts with."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import dask.config
import psutil

from distributary.nanny.child import _logging_setup, _run_worker
from distributary.protocol.errors import rebuild_exception

_CHILDREN_REFRESH = 1.0  # seconds between looks for the worker's child processes (costly)
_ENVIRON_LOCK = threading.Lock()


class WorkerProcessDied(RuntimeError):
    """The worker process ended before its worker was registered."""


class WorkerProcess:
    """One spawned worker process: start it, wait for it, stop it.

    Its end is noticed on the event loop through the process sentinel and resolves
    one future, so that any number of coroutines may :meth:`join` it at once.
    """

    def __init__(
        self,
        worker_class: type | None,
        worker_kwargs: dict,
        env: dict[str, str],
        silence_logs: int | None = None,
    ):
        self.worker_class = worker_class
        self.worker_kwargs = worker_kwargs
        self.env = env
        self.silence_logs = silence_logs
        self.worker_address: str | None = None
        self.pid: int | None = None
        self.kill_reason: str | None = None  # why the nanny is terminating it, if it is
        self._process: Any = None
        self._exited: asyncio.Future | None = None
        self._reader: Connection | None = None
        self._psutil: psutil.Process | None = None
        self._children: list[psutil.Process] = []
        self._children_seen = 0.0  # time.monotonic() of the last look for children

    @property
    def exitcode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._process.exitcode if self._process is not None else None

    def is_alive(self) -> bool:
        """Whether the process was started and has not ended."""
        return self._process is not None and self._process.is_alive()

    def describe_exit(self) -> str:
        """How the process ended, e.g. ``'was killed by signal SIGKILL'``."""
        code = self.exitcode
        if code is None:
            text = "has not ended"
        elif code < 0:
            try:
                text = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                text = f"was killed by signal {-code}"
        else:
            text = f"exited with code {code}"
        return f"{text} ({self.kill_reason})" if self.kill_reason else text

    def memory(self) -> int:
        """Resident memory of the process and its children, in bytes; 0 once it has ended.

        New children are looked for at most every second: that look reads every process
        on the machine.
        """
        if self._psutil is None or self._exited.done():
            return 0
        now = time.monotonic()
        if now - self._children_seen > _CHILDREN_REFRESH:
            self._children_seen = now
            with contextlib.suppress(psutil.Error):
                self._children = self._psutil.children(recursive=True)
        total = 0
        for process in (self._psutil, *self._children):
            with contextlib.suppress(psutil.Error):  # one that has just ended
                total += process.memory_info().rss
        return total

    def spawn(self) -> None:
        """Start the process; :meth:`wait_started` then waits for its worker."""
        ctx = multiprocessing.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_run_worker,
            args=(
                writer,
                os.getpid(),
                self.worker_class,
                self.worker_kwargs,
                _picklable_config(),
                _logging_setup(self.silence_logs),
            ),
            name=f"distributary-worker-{self.worker_kwargs.get('name')}",
            daemon=dask.config.get("distributed.worker.daemon", default=True),
        )
        try:
            with _environment(self.env):
                self._process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()  # the child has its copy: end of file here when it dies
        self.pid = self._process.pid
        with contextlib.suppress(psutil.Error):
            self._psutil = psutil.Process(self.pid)
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        loop.add_reader(self._process.sentinel, self._on_exit, loop)
        self._reader = reader

    async def wait_started(self, timeout: float) -> str:
        """Return the worker's address once it is registered with the scheduler.

        Raises :class:`WorkerProcessDied` if the process ends first; the error that
        stopped the worker if it could not start; TimeoutError after ``timeout``.  In
        the last two cases the process is killed.
        """
        try:
            self.worker_address = await self._read_startup(self._reader, timeout)
        except WorkerProcessDied:
            raise
        except BaseException:
            self.kill_now()
            raise
        finally:
            self._reader.close()
        return self.worker_address

    def _on_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._process.sentinel)
        self._process.join()  # it has ended: this only reaps it
        if not self._exited.done():
            self._exited.set_result(self._process.exitcode)

    async def _read_startup(self, reader: Connection, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        message = loop.create_future()
        loop.add_reader(reader.fileno(), lambda: message.done() or message.set_result(None))
        try:
            await asyncio.wait(
                (message, self._exited), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            loop.remove_reader(reader.fileno())
            message.cancel()
        msg = None
        if reader.poll():
            try:
                msg = reader.recv()
            except EOFError:  # it died before saying anything
                pass
        elif not self._exited.done():
            raise TimeoutError(f"The worker process {self.pid} did not start within {timeout} s")
        if msg is None:
            await self.join(5)
            raise WorkerProcessDied(
                f"The worker process {self.pid} exited with code {self.exitcode} while "
                "starting. (A script that starts a cluster at import time needs an "
                "`if __name__ == '__main__':` guard.)"
            )
        if msg.get("status") != "OK":
            raise rebuild_exception(msg)
        return msg["address"]

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until the process has ended; False if it is still running after ``timeout``."""
        if self._exited is None:
            return True
        try:
            await asyncio.wait_for(
                asyncio.shield(self._exited), None if timeout is None else max(timeout, 0)
            )
        except asyncio.TimeoutError:
            # ended, though a grandchild may still hold the sentinel open?
            return self._process.exitcode is not None
        return True

    def terminate(self, children: bool = False) -> None:
        """Send SIGTERM; with ``children=True`` to the process's child processes too."""
        self._signal(signal.SIGTERM, children)

    def kill(self, children: bool = False) -> None:
        """Send SIGKILL; with ``children=True`` to the process's child processes too."""
        self._signal(signal.SIGKILL, children)

    def _signal(self, sig: signal.Signals, children: bool) -> None:
        if children and self._psutil is not None:
            with contextlib.suppress(psutil.Error):  # else those seen last
                self._children = self._psutil.children(recursive=True)
            for child in self._children:
                with contextlib.suppress(psutil.Error):  # psutil checks the pid is not reused
                    child.send_signal(sig)
        if self.is_alive():
            os.kill(self.pid, sig)

    def kill_now(self, timeout: float = 5) -> None:
        """Kill the process and wait for it, blocking (a last resort)."""
        if self._process is None:
            return
        self.kill()
        self._process.join(timeout)

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} worker={self.worker_address}>"


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in this process for the moment a child is spawned, so that it starts
    with them (variables like ``OMP_NUM_THREADS`` must be there before Python starts)."""
    with _ENVIRON_LOCK:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _worker_environment(env: dict | None) -> dict[str, str]:
    """Variables for the worker: ``distributed.nanny.pre-spawn-environ`` and
    ``distributed.nanny.environ`` (where not already set here), then ``env``."""
    result = {}
    for key in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
        config = dask.config.get(key, default=None) or {}
        result.update({k: os.environ.get(k, str(v)) for k, v in config.items() if v is not None})
    # the same string hashes in every worker, as with dask.distributed
    if "PYTHONHASHSEED" not in os.environ:
        result.setdefault("PYTHONHASHSEED", "6640")
    result.update({str(k): str(v) for k, v in (env or {}).items()})
    return result


def _picklable_config() -> dict:
    """dask's config for the worker process, less what cannot go to another process, such
    as ``scheduler`` while it is set to this process's default Client."""
    result = {}
    for key, value in dask.config.config.items():
        try:
            pickle.dumps(value)
        except Exception:
            continue
        result[key] = value
    return result
