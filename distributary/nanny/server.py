"""The Nanny server: runs a worker in a separate process, restarts it when it dies, kills it
on request.

Theory of operation: a :class:`Nanny` runs a small server of its own (``instantiate``,
``kill``, ``restart``, ``terminate``, ``close_gracefully``, ``identity``) and owns at
most one :class:`~distributary.nanny.process.WorkerProcess`.  That process is spawned
(never forked) and runs :func:`~distributary.nanny.child._run_worker`, which starts a
Worker with ``nanny=<the nanny's address>`` and sends its address (or the error that
stopped it) back through a pipe.  The child watches the nanny's pid and closes itself
if the nanny disappears, so that a worker process never outlives its nanny.  Killing
asks the worker to close, then sends SIGTERM, then SIGKILL.

The nanny notices the end of its worker process through the process sentinel on the
event loop (no helper threads).  Each process gets a watcher task that waits for it
with :meth:`WorkerProcess.join` and then, holding the nanny's lock, starts a new one,
unless the process was replaced or removed meanwhile: ``kill``, ``restart`` and
``close`` hold the same lock and take ``self.process`` away first, so a death they
cause is theirs.  A worker that had registered is replaced at once (a task that kills
it is given up on by the scheduler after a few deaths); a process that dies while
starting is replaced after a short pause, longer each time, until
``distributed.nanny.max-failed-starts`` processes in a row have died so: then the
nanny gives up and closes, its ``failure`` saying why.  A worker that cannot start
for another reason (say the scheduler is gone) closes the nanny too.

After ``close_gracefully`` (a worker asks for it when it closes for good) the next
exit is not restarted and the nanny closes.  Every
``distributed.worker.memory.monitor-interval`` the nanny reads the memory of its
worker process and its children and, past ``distributed.worker.memory.terminate``
times the memory limit, tells the scheduler why and terminates them; the watcher then
starts a new worker.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Coroutine
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_timedelta

from distributary.comm.addressing import parse_address
from distributary.core import ConnectionPool, Server
from distributary.core.run import run_function
from distributary.nanny.plugins import NannyPlugins
from distributary.nanny.process import WorkerProcess, WorkerProcessDied, _worker_environment
from distributary.node import ServerNode, listen_address_for, parse_memory_limit
from distributary.protocol import requests as rq
from distributary.utils.keywords import NANNY_NOT_YET, check_keywords
from distributary.utils.process import cpu_count
from distributary.widgets.reprs import nanny_html
from distributary.worker.methods import scratch_directory
from distributary.worker.server import Worker

logger = logging.getLogger("distributary.nanny")

_START_TIMEOUT = 60.0  # seconds for a worker process to start, unless death_timeout says
_NOTIFY_TIMEOUT = 1.0  # seconds to tell the scheduler why the nanny kills its worker
_TERMINATE_GRACE = 1.0  # seconds from SIGTERM to SIGKILL for a worker using too much memory
_BACKOFF_FIRST = 0.05  # seconds before restarting a worker that died starting; then doubled
_BACKOFF_MAX = 5.0


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
        accepted = inspect.signature(worker_class or Worker).parameters
        check_keywords(
            "Nanny", {k: v for k, v in worker_kwargs.items() if k not in accepted}, NANNY_NOT_YET
        )
        worker_kwargs = {k: v for k, v in worker_kwargs.items() if k in accepted}
        # (h-security) the worker's TLS credentials and blocked handlers are the nanny's too
        super().__init__(
            logger, worker_kwargs.get("security"), worker_kwargs.get("blocked_handlers")
        )
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
        self.local_directory = scratch_directory(local_directory)
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
        self.pool = ConnectionPool(role="nanny", connection_args=self.connection_args)
        self._plugins = NannyPlugins(self)
        self.server = Server(
            handlers={
                rq.Instantiate: self._handle_instantiate,
                rq.Kill: self._handle_kill,
                rq.RestartWorker: self._handle_restart,
                rq.Terminate: self._handle_terminate,
                rq.CloseGracefully: self._handle_close_gracefully,
                rq.Identity: self._handle_identity,
                rq.RunFunction: self._handle_run,
                **self.node_handlers(),
                **self._plugins.handlers,
            },
            **self.server_options(),  # (h-security)
        )
        self._lock = asyncio.Lock()
        self._close_timeout = 5.0
        self._closing_gracefully = False
        self._failed_starts = 0  # worker processes in a row that died while starting
        self.max_failed_starts = int(dask.config.get("distributed.nanny.max-failed-starts"))
        if self.max_failed_starts < 1:
            raise ValueError(
                "distributed.nanny.max-failed-starts must be at least 1, "
                f"not {self.max_failed_starts}"
            )
        self.failure: str | None = None  # why the nanny gave up on its worker, if it did
        self._background: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        """Where this nanny listens (not its worker's address)."""
        return self.server.address

    @property
    def plugins(self) -> dict:
        """The nanny plugins set up here, by name."""
        return self._plugins.plugins

    @property
    def worker_address(self) -> str | None:
        """The address of the worker this nanny runs, if one is running."""
        return self.process.worker_address if self.process is not None else None

    @property
    def local_dir(self) -> str:
        """The same as ``local_directory``: where its workers make their directories."""
        return self.local_directory

    def is_alive(self) -> bool:
        """Whether the nanny has a worker process, and it is running."""
        return self.process is not None and self.process.is_alive()

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self.server.listen(self._listen_address)
        await self._plugins.start()  # (before the worker process starts)
        await self.instantiate()
        if self.memory_limit and self.memory_terminate_fraction:
            self._background_task(self._watch_memory())

    async def close(
        self, comm: Any = None, timeout: float = 5, report: Any = None, reason: str = "nanny-close"
    ) -> None:
        """Close the worker process for good (killing it after ``timeout`` seconds) and
        stop the nanny's server.

        ``comm`` and ``report`` are there for compatibility: in dask.distributed they
        belong to its remote calls; here they have no effect.
        """
        if self.status not in ("closing", "closed"):
            logger.info("Closing %r: %s", self, reason)
        self._close_timeout = timeout
        await super().close()

    async def close_gracefully(self, comm: Any = None) -> None:
        """Do not restart the worker when it next exits; close the nanny once it has.

        Returns at once: a worker asks this of its nanny just before it closes.
        (``comm``: as for :meth:`close`.)
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
        await self._plugins.close()
        await self.server.close()
        await self.pool.close()

    async def instantiate(self, comm: Any = None) -> str:
        """Start the worker process (if none runs) and wait until it is registered.
        (``comm``: as for :meth:`close`.)"""
        async with self._lock:
            await self._instantiate()
        return "running"

    async def kill(self, comm: Any = None, timeout: float = 2) -> str:
        """Stop the worker process: ask it to close, else terminate it after ``timeout``
        seconds, else kill it; it is not restarted until :meth:`instantiate`.
        (``comm``: as for :meth:`close`.)"""
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
                if process.worker_address is None:
                    self._failed_starts += 1
                if self._failed_starts >= self.max_failed_starts:
                    self.failure = (
                        f"{self._failed_starts} worker processes in a row died while "
                        f"starting (the last {process.describe_exit()}; "
                        "distributed.nanny.max-failed-starts is "
                        f"{self.max_failed_starts})"
                    )
                    logger.error("%r gives up and closes: %s", self, self.failure)
                    failed = True
                else:
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
            await asyncio.sleep(min(_BACKOFF_FIRST * 2 ** (self._failed_starts - 1), _BACKOFF_MAX))
        try:
            await self._instantiate()
        except WorkerProcessDied as exc:  # the watcher of that one tries again
            logger.info("%s", exc)
            return True
        except Exception as exc:
            self.failure = f"could not start a new worker process: {exc!r}"
            logger.error("%r %s; closing it", self, self.failure)
            return False
        logger.info("Worker process %d restarted at %s", self.process.pid, self.worker_address)
        return True

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(self.memory_monitor_interval)
            await self.memory_monitor()

    async def memory_monitor(self) -> None:
        """Take one look at the memory of the worker process and its children, as the
        nanny does every ``distributed.worker.memory.monitor-interval``: past
        ``distributed.worker.memory.terminate`` of ``memory_limit`` it tells the
        scheduler why and terminates them, and a new worker process starts.  Without a
        memory limit or that fraction it does nothing."""
        process = self.process
        if not (self.memory_limit and self.memory_terminate_fraction):
            return
        if process is None or process.kill_reason is not None:
            return
        # (in a thread: reading /proc gives up the GIL at every file, and the loop
        # must not wait for it while another thread of this process is busy)
        used = await asyncio.get_running_loop().run_in_executor(None, process.memory)
        if used > self.memory_terminate_fraction * self.memory_limit:
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
            killed = rq.WorkerKilled(address, process.kill_reason)
            try:
                await self.pool.call(self.scheduler_address, killed, timeout=_NOTIFY_TIMEOUT)
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
                    await self.pool.call(address, rq.CloseWorker(nanny=False), timeout=timeout)
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

    async def _handle_instantiate(self, comm: Any, msg: rq.Instantiate) -> str:
        return await self.instantiate()

    async def _handle_kill(self, comm: Any, msg: rq.Kill) -> str:
        return await self.kill(timeout=parse_timedelta(msg.timeout or 2))

    async def _handle_restart(self, comm: Any, msg: rq.RestartWorker) -> str:
        return await self.restart(timeout=parse_timedelta(msg.timeout or 30))

    def _handle_terminate(self, comm: Any, msg: rq.Terminate) -> str:
        self._background_task(self.close())
        return "OK"

    async def _handle_close_gracefully(self, comm: Any, msg: rq.CloseGracefully) -> str:
        await self.close_gracefully()
        return "OK"

    async def _handle_run(self, comm: Any, msg: rq.RunFunction) -> rq.Ran:
        return await run_function(msg, self, "dask_worker")

    def _handle_identity(self, comm: Any, msg: rq.Identity) -> dict:
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

    _repr_html_ = nanny_html  # (the notebook's HTML: widgets/reprs.py)

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
