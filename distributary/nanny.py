"""The Nanny: runs a worker in a separate process, restarts it when it dies, kills it on request.

Theory of operation: a :class:`Nanny` runs a small server of its own (``instantiate``,
``kill``, ``restart``, ``terminate``, ``close_gracefully``, ``identity``) and owns at
most one :class:`WorkerProcess`.  That process is spawned (never forked) and runs
:func:`_run_worker`, which starts a Worker with ``nanny=<the nanny's address>`` and
sends its address (or the error that stopped it) back through a pipe.  The child
watches the nanny's pid and closes itself if the nanny disappears, so that a worker
process never outlives its nanny.  Killing asks the worker to close, then sends
SIGTERM, then SIGKILL.

The nanny notices the end of its worker process through the process sentinel on the
event loop (no helper threads).  Each process gets a watcher task that waits for it
with :meth:`WorkerProcess.join` and then, holding the nanny's lock, starts a new one,
unless the process was replaced or removed meanwhile: ``kill``, ``restart`` and
``close`` hold the same lock and take ``self.process`` away first, so a death they
cause is theirs.  A worker that had registered is replaced at once (a task that kills
it is given up on by the scheduler after a few deaths); a process that dies while
starting is replaced after a short pause, longer each time.  A worker that cannot
start for another reason (say the scheduler is gone) closes the nanny.

After ``close_gracefully`` (a worker asks for it when it closes for good) the next
exit is not restarted and the nanny closes.  Every
``distributed.worker.memory.monitor-interval`` the nanny reads the memory of its
worker process and its children and, past ``distributed.worker.memory.terminate``
times the memory limit, tells the scheduler why and terminates them; the watcher then
starts a new worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from multiprocessing.connection import Connection
from typing import Any

import dask.config
import psutil
from dask.utils import format_bytes, parse_timedelta

from distributary.comm.addressing import parse_address
from distributary.core import ConnectionPool, Server
from distributary.node import ServerNode, listen_address_for, parse_memory_limit
from distributary.protocol.errors import error_message, rebuild_exception
from distributary.utils.process import exit_process

logger = logging.getLogger("distributary.nanny")

_START_TIMEOUT = 60.0  # seconds for a worker process to start, unless death_timeout says
_PARENT_POLL = 0.5  # seconds between checks, in the child, that the nanny is alive
_NOTIFY_TIMEOUT = 1.0  # seconds to tell the scheduler why the nanny kills its worker
_TERMINATE_GRACE = 1.0  # seconds from SIGTERM to SIGKILL for a worker using too much memory
_BACKOFF_FIRST = 0.05  # seconds before restarting a worker that died starting; then doubled
_BACKOFF_MAX = 5.0
_CHILDREN_REFRESH = 1.0  # seconds between looks for the worker's child processes (costly)
_ENVIRON_LOCK = threading.Lock()


class Nanny(ServerNode):
    """A process that starts, watches and kills one worker process.

    ``Nanny(scheduler_address, nthreads=..., name=..., env={...}, **worker_kwargs)``;
    await it (or ``async with``) to start the worker, which registers with the
    scheduler with ``nanny=`` set to this nanny's address.  When the worker process
    dies, or uses more than ``distributed.worker.memory.terminate`` of
    ``memory_limit``, the nanny starts a new one.
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
        self.memory_terminate_fraction = dask.config.get(
            "distributed.worker.memory.terminate", default=0.95
        )
        self.memory_monitor_interval = parse_timedelta(
            dask.config.get("distributed.worker.memory.monitor-interval", default="100ms")
        )
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
                "close_gracefully": self._handle_close_gracefully,
                "identity": self._handle_identity,
            },
            stream_handlers={},
        )
        self._lock = asyncio.Lock()
        self._close_timeout = 5.0
        self._closing_gracefully = False
        self._failed_starts = 0  # worker processes in a row that died while starting
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
        if self.memory_limit and self.memory_terminate_fraction:
            self._background_task(self._watch_memory())

    async def close(self, timeout: float = 5, **kwargs: Any) -> None:
        """Kill the worker process for good and stop the nanny's server."""
        self._close_timeout = timeout
        await super().close()

    async def close_gracefully(self) -> None:
        """Do not restart the worker when it next exits; close the nanny once it has.

        Returns at once: a worker asks this of its nanny just before it closes.
        """
        if self._closing_gracefully or self.status in ("closing", "closed"):
            return
        self._closing_gracefully = True
        logger.info("%r closing gracefully: it closes once its worker process exits", self)
        if self.process is None:  # else the process's watcher closes the nanny
            self._background_task(self.close())

    async def _close(self) -> None:
        current = asyncio.current_task()
        others = [task for task in self._background if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
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
            process.spawn()
            self._background_task(self._watch_worker(process))
            await process.wait_started(timeout)
        except WorkerProcessDied:
            raise  # it stays self.process: its watcher starts another, after a pause
        except BaseException:
            self.process = None
            raise
        self._failed_starts = 0

    async def _watch_worker(self, process: WorkerProcess) -> None:
        """Wait for the worker process to end, then start another unless that is unwanted."""
        await process.join()
        failed = False
        async with self._lock:
            if (
                self.process is process
                and self.status in ("starting", "running")
                and not self._closing_gracefully
            ):
                self.process = None
                logger.warning(
                    "Worker process %d (%s) %s; restarting it",
                    process.pid,
                    process.worker_address or "while starting",
                    process.describe_exit(),
                )
                failed = not await self._restart_dead_worker(process)
        if failed or (self._closing_gracefully and self.process in (None, process)):
            await self.close()

    async def _restart_dead_worker(self, dead: WorkerProcess) -> bool:
        """Start a worker in place of ``dead``; False if it could not start."""
        # No pause after a worker that had registered: it may have been killed by a task,
        # which the scheduler gives up on after a few deaths, and should be back soon.
        if dead.worker_address is None:
            await asyncio.sleep(min(_BACKOFF_FIRST * 2**self._failed_starts, _BACKOFF_MAX))
            self._failed_starts += 1
        try:
            await self._instantiate()
        except WorkerProcessDied as exc:  # the watcher of that one tries again
            logger.info("%s", exc)
            return True
        except Exception as exc:
            logger.error("%r could not start a new worker process (%r); closing it", self, exc)
            return False
        logger.info("Worker process %d restarted at %s", self.process.pid, self.worker_address)
        return True

    async def _watch_memory(self) -> None:
        """Terminate the worker process when it uses more than its share of memory."""
        threshold = self.memory_terminate_fraction * self.memory_limit
        while True:
            await asyncio.sleep(self.memory_monitor_interval)
            process = self.process
            if process is None or process.kill_reason is not None:
                continue
            # (in a thread: reading /proc gives up the GIL at every file, and the loop
            # must not wait for it while another thread of this process is busy)
            used = await asyncio.get_running_loop().run_in_executor(None, process.memory)
            if used > threshold:
                process.kill_reason = (
                    f"exceeded {self.memory_terminate_fraction:.0%} of its "
                    f"{format_bytes(self.memory_limit)} memory limit (used {format_bytes(used)})"
                )
                self._background_task(self._terminate_for_memory(process))

    async def _terminate_for_memory(self, process: WorkerProcess) -> None:
        address = process.worker_address
        logger.warning(
            "Worker %s (pid=%d) %s; terminating it", address, process.pid, process.kill_reason
        )
        if address is not None:  # registered: the scheduler may pass on why it goes
            msg = {"op": "worker-killed", "worker": address, "reason": process.kill_reason}
            try:
                await self.pool.call(self.scheduler_address, msg, timeout=_NOTIFY_TIMEOUT)
            except Exception as exc:  # best effort: the worker goes either way
                logger.info("Could not tell the scheduler why %s is killed: %r", address, exc)
        # Signals, not a close request, which a worker out of memory may not answer; its
        # children go too, as they may hold the memory.
        process.terminate(children=True)
        await process.join(_TERMINATE_GRACE)
        process.kill(children=True)

    async def _stop_process(self, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        address = process.worker_address
        deadline = time.monotonic() + timeout
        if address is not None:  # else it did not start: nothing to ask
            if process.is_alive():
                try:
                    msg = {"op": "close", "nanny": False}
                    await self.pool.call(address, msg, timeout=timeout)
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
        self._background_task(self.close())
        return "OK"

    async def _handle_close_gracefully(self, comm: Any, msg: dict) -> str:
        await self.close_gracefully()
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

    def _background_task(self, coro: Coroutine) -> None:
        """Run ``coro`` until it ends or the nanny closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%r: a background task failed", self, exc_info=task.exception())


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


def cpu_count() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------- in the child


def _logging_setup(silence_logs: int | None) -> tuple[int, list[logging.Formatter | None]]:
    """distributary's log level in this process (or ``silence_logs``) and the formatters
    of its handlers that write to stderr, for a worker process to log the same way."""
    log = logging.getLogger("distributary")
    formatters = [
        handler.formatter
        for handler in log.handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    ]
    return silence_logs or log.level, formatters


def _run_worker(
    conn: Connection,
    parent_pid: int,
    worker_class: type | None,
    worker_kwargs: dict,
    config: dict,
    logging_setup: tuple[int, list[logging.Formatter | None]],
) -> None:
    """Entry point of a worker process: run a Worker until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the nanny's process
    dask.config.update(dask.config.config, config)
    level, formatters = logging_setup
    log = logging.getLogger("distributary")
    log.setLevel(level)
    for formatter in formatters:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        log.addHandler(handler)
    if worker_class is None:
        from distributary.worker.server import Worker

        worker_class = Worker
    served = asyncio.run(_serve_worker(conn, parent_pid, worker_class, worker_kwargs))
    # Tasks still running in the worker's threads must not keep a closed worker alive.
    exit_process(0 if served else 1, grace=0.1, force=True)


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
            asyncio.run_coroutine_threadsafe(worker.close(nanny=False), loop).result(timeout=3)
        except Exception:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="distributary-nanny-watch", daemon=True).start()
