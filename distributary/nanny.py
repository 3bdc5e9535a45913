"""The Nanny: starts a worker in a separate process and kills or restarts it on request.

Theory of operation: a :class:`Nanny` runs a small server of its own (``instantiate``,
``kill``, ``restart``, ``terminate``, ``identity``) and owns at most one
:class:`WorkerProcess`.  That process is spawned (never forked) and runs
:func:`_run_worker`, which starts a Worker with ``nanny=<the nanny's address>`` and
sends its address (or the error that stopped it) back through a pipe.  The child
watches the nanny's pid and closes itself if the nanny disappears, so that a worker
process never outlives its nanny.  Killing asks the worker to close, then sends
SIGTERM, then SIGKILL.  The nanny waits for the child with the process sentinel on
the event loop (no helper threads); watching the worker (restart on death, memory
limits) is meant to build on :meth:`WorkerProcess.join`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from distributary.comm.addressing import parse_address
from distributary.core import ConnectionPool, Server
from distributary.node import ServerNode, listen_address_for, parse_memory_limit
from distributary.protocol.errors import error_message, rebuild_exception

logger = logging.getLogger("distributary.nanny")

_START_TIMEOUT = 60.0  # seconds for a worker process to start, unless death_timeout says
_PARENT_POLL = 0.5  # seconds between checks, in the child, that the nanny is alive
_ENVIRON_LOCK = threading.Lock()


class Nanny(ServerNode):
    """A process that starts, watches and kills one worker process.

    ``Nanny(scheduler_address, nthreads=..., name=..., env={...}, **worker_kwargs)``;
    await it (or ``async with``) to start the worker, which registers with the
    scheduler with ``nanny=`` set to this nanny's address.
    """

    def __init__(
        self,
        scheduler_ip: str | None = None,
        scheduler_port: int | None = None,
        *,
        scheduler_file: str | None = None,
        nthreads: int | None = None,
        name: Any = None,
        memory_limit: str | float | int = "auto",
        resources: dict | None = None,
        host: str | None = None,
        port: int | None = None,
        worker_port: int | None = None,
        protocol: str | None = None,
        interface: str | None = None,
        local_directory: str | None = None,
        death_timeout: Any = None,
        env: dict | None = None,
        worker_class: type | None = None,
        silence_logs: int | None = None,
        **worker_kwargs: Any,
    ):
        super().__init__()
        self.scheduler_address = self._scheduler_address(
            scheduler_ip, scheduler_port, scheduler_file
        )
        if parse_address(self.scheduler_address)[0] == "inproc":
            raise ValueError(
                "A Nanny runs its worker in another process, which cannot reach the "
                f"in-process scheduler at {self.scheduler_address}; use tcp://"
            )
        self.name = name
        self.nthreads = nthreads or cpu_count()
        self.memory_limit = parse_memory_limit(memory_limit, self.nthreads)
        self.resources = resources
        self.death_timeout = death_timeout
        self.env = _worker_environment(env)
        self.worker_class = worker_class
        self.silence_logs = silence_logs
        self.worker_kwargs = {
            **worker_kwargs,
            "nthreads": self.nthreads,
            "name": name,
            "memory_limit": self.memory_limit,
            "resources": resources,
            "host": host,
            "port": worker_port,
            "protocol": protocol,
            "interface": interface,
            "local_directory": local_directory,
            "death_timeout": death_timeout,
        }
        self._listen_address = listen_address_for(
            self.scheduler_address, host, port, protocol, interface
        )
        self.process: WorkerProcess | None = None
        self.pool = ConnectionPool(role="nanny")
        self.server = Server(
            handlers={
                "instantiate": self._handle_instantiate,
                "kill": self._handle_kill,
                "restart": self._handle_restart,
                "terminate": self._handle_terminate,
                "identity": self._handle_identity,
            },
            stream_handlers={},
        )
        self._lock = asyncio.Lock()
        self._close_timeout = 5.0
        self._background: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        """Where this nanny listens (not its worker's address)."""
        return self.server.address

    @property
    def worker_address(self) -> str | None:
        """The address of the worker this nanny runs, if one is running."""
        return self.process.worker_address if self.process is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self.server.listen(self._listen_address)
        await self.instantiate()

    async def close(self, timeout: float = 5, **kwargs: Any) -> None:
        """Kill the worker process for good and stop the nanny's server."""
        self._close_timeout = timeout
        await super().close()

    async def _close(self) -> None:
        async with self._lock:
            await self._stop_process(self._close_timeout)
        await self.server.close()
        await self.pool.close()

    async def instantiate(self) -> str:
        """Start the worker process (if none runs) and wait until it is registered."""
        async with self._lock:
            await self._instantiate()
        return "running"

    async def kill(self, timeout: float = 2) -> str:
        """Stop the worker process: close it, else terminate it, else kill it."""
        async with self._lock:
            await self._stop_process(timeout)
        return "OK"

    async def restart(self, timeout: float = 30) -> str:
        """Kill the worker process and start a new one; ``'timed out'`` if it took too long."""
        async with self._lock:
            deadline = time.monotonic() + timeout
            await self._stop_process(0.8 * timeout)
            try:
                await asyncio.wait_for(self._instantiate(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                return "timed out"
        return "OK"

    async def _instantiate(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        if self.status in ("closing", "closed"):
            raise RuntimeError(f"{self!r} is closed")
        process = WorkerProcess(
            worker_class=self.worker_class,
            worker_kwargs={
                **self.worker_kwargs,
                "scheduler_ip": self.scheduler_address,
                "nanny": self.address,
            },
            env=self.env,
            silence_logs=self.silence_logs,
        )
        timeout = parse_timedelta(self.death_timeout) if self.death_timeout else _START_TIMEOUT
        self.process = process
        try:
            await process.start(timeout)
        except BaseException:
            self.process = None
            raise

    async def _stop_process(self, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        address = process.worker_address
        deadline = time.monotonic() + timeout
        if process.is_alive():
            try:
                await self.pool.call(address, {"op": "close"}, timeout=timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                logger.info("Could not ask worker %s to close: %r", address, exc)
        self.pool.remove(address)
        if await process.join(deadline - time.monotonic()):
            return
        logger.warning("Worker process %d did not close in time; terminating it", process.pid)
        process.terminate()
        if await process.join(max(deadline - time.monotonic(), 1.0)):
            return
        process.kill()
        if not await process.join(5):
            logger.error("Worker process %d survived SIGKILL", process.pid)

    # ------------------------------------------------------------------ handlers

    async def _handle_instantiate(self, comm: Any, msg: dict) -> str:
        return await self.instantiate()

    async def _handle_kill(self, comm: Any, msg: dict) -> str:
        return await self.kill(timeout=msg.get("timeout", 2))

    async def _handle_restart(self, comm: Any, msg: dict) -> str:
        return await self.restart(timeout=msg.get("timeout", 30))

    def _handle_terminate(self, comm: Any, msg: dict) -> str:
        task = asyncio.get_running_loop().create_task(self.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return "OK"

    def _handle_identity(self, comm: Any, msg: dict) -> dict:
        return {
            "type": "Nanny",
            "id": self.id,
            "address": self.address,
            "worker_address": self.worker_address,
            "scheduler": self.scheduler_address,
            "pid": self.process.pid if self.process is not None else None,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "name": self.name,
        }

    def __repr__(self) -> str:
        return f"<Nanny: {self.worker_address}, threads: {self.nthreads}>"


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
        self._process: Any = None
        self._exited: asyncio.Future | None = None

    @property
    def exitcode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._process.exitcode if self._process is not None else None

    def is_alive(self) -> bool:
        """Whether the process was started and has not ended."""
        return self._process is not None and self._process.is_alive()

    async def start(self, timeout: float) -> str:
        """Spawn the process and return its worker's address once it is registered."""
        ctx = multiprocessing.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_run_worker,
            args=(
                writer,
                os.getpid(),
                self.worker_class,
                self.worker_kwargs,
                dask.config.config,
                self.silence_logs,
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
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        loop.add_reader(self._process.sentinel, self._on_exit, loop)
        try:
            self.worker_address = await self._read_startup(reader, timeout)
        except BaseException:
            self.kill_now()
            raise
        finally:
            reader.close()
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
            raise RuntimeError(
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

    def terminate(self) -> None:
        """Send SIGTERM."""
        if self.is_alive():
            self._process.terminate()

    def kill(self) -> None:
        """Send SIGKILL."""
        if self.is_alive():
            self._process.kill()

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


def cpu_count() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------- in the child


def _run_worker(
    conn: Connection,
    parent_pid: int,
    worker_class: type | None,
    worker_kwargs: dict,
    config: dict,
    silence_logs: int | None,
) -> None:
    """Entry point of a worker process: run a Worker until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the nanny's process
    dask.config.update(dask.config.config, config)
    if silence_logs:
        logging.getLogger("distributary").setLevel(silence_logs)
    if worker_class is None:
        from distributary.worker.server import Worker

        worker_class = Worker
    if not asyncio.run(_serve_worker(conn, parent_pid, worker_class, worker_kwargs)):
        sys.exit(1)


async def _serve_worker(
    conn: Connection, parent_pid: int, worker_class: type, worker_kwargs: dict
) -> bool:
    try:
        worker = await worker_class(**worker_kwargs)
    except Exception as exc:
        conn.send(error_message(exc))
        conn.close()
        return False
    conn.send({"status": "OK", "address": worker.address})
    conn.close()
    _watch_parent(parent_pid, worker, asyncio.get_running_loop())
    await worker.finished()
    return True


def _watch_parent(parent_pid: int, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Close the worker, then exit, as soon as the nanny's process is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL)
        logger.warning("The nanny (pid %d) is gone; closing worker %s", parent_pid, worker)
        try:
            asyncio.run_coroutine_threadsafe(worker.close(), loop).result(timeout=3)
        except Exception:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="distributary-nanny-watch", daemon=True).start()
