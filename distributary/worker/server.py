"""The Worker: runs tasks in a thread pool and serves their results to peers and clients.

The decisions live in :class:`~distributary.worker.state.WorkerState`; this module
does the I/O around it: the stream from the scheduler, data requests from peers,
the thread pool, and fetching dependencies from other workers.  Memory limits and
spilling are :class:`~distributary.worker.memory.WorkerMemoryManager`'s; here run its
monitor, the heartbeats to the scheduler and the worker's lifetime.

Statuses: ``init -> starting -> running <-> paused -> closing -> closed``, with
``closing_gracefully`` in between when the worker hands its data over before closing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dask.config
from dask.sizeof import sizeof

from distributary.comm import CommClosedError, connect
from distributary.comm.addressing import get_address_host
from distributary.config import transition_log_length
from distributary.core import BatchedSend, ConnectionPool, Server, read_messages
from distributary.core.run import run_function
from distributary.dashboard.system import UsageMeter
from distributary.dashboard.worker import WorkerHTTP
from distributary.node import ServerNode, listen_address_for
from distributary.protocol import requests as rq
from distributary.protocol.errors import RemoteError
from distributary.protocol.introspection import CallStack
from distributary.protocol.message import Message
from distributary.protocol.serialize import Serialize, deserialize
from distributary.protocol.worker_messages import TO_WORKER, Unregister, WorkerHeartbeat
from distributary.utils import ipython
from distributary.utils.keywords import WORKER_NOT_YET, check_keywords
from distributary.utils.process import cpu_count
from distributary.widgets.reprs import worker_html
from distributary.worker import events as ev
from distributary.worker import instructions as ins
from distributary.worker import introspection, legacy, methods
from distributary.worker.context import current_task_key, set_task_context
from distributary.worker.execution import TaskOutcome, run_task
from distributary.worker.memory import WorkerMemoryManager
from distributary.worker.plugins import WorkerPlugins
from distributary.worker.profiler import WorkerProfiler
from distributary.worker.state import WorkerState
from distributary.worker.task_stream import TaskStreamRecorder
from distributary.worker.threads import TaskThreads

logger = logging.getLogger("distributary.worker")

# Statuses in which the worker runs its tasks and serves its data.
_ALIVE = frozenset({"running", "paused", "closing_gracefully"})
# Seconds to wait for the nanny when telling it that its worker closes for good.
_NANNY_TIMEOUT = 2.0


@legacy.add_views
class Worker(ServerNode):
    """A worker node: runs tasks and holds their results.

    ``Worker(scheduler_address, nthreads=..., name=..., resources=..., memory_limit=...)``;
    await it (or use ``async with``) to start it and register with the scheduler.

    Past ``memory_target_fraction`` of ``memory_limit`` its results spill to disk under
    ``local_directory``; past ``memory_pause_fraction`` of the limit (in process memory)
    it pauses.  After ``lifetime`` (give or take ``lifetime_stagger``) it closes
    gracefully, to be restarted by its nanny if ``lifetime_restart``.  ``plugins``
    (WorkerPlugins) are set up as it starts, with those registered on the scheduler.
    ``security`` (a Security) gives its TLS credentials; ``blocked_handlers`` names the
    operations it refuses (like ``["run"]``; ``distributed.worker.blocked-handlers``).
    It serves ``/metrics`` and ``/health`` over HTTP on ``dashboard_address`` (a random
    port by default).
    """

    def __init__(
        self,
        scheduler_ip: str | None = None,
        scheduler_port: int | None = None,
        *,
        scheduler_file: str | None = None,
        nthreads: int | None = None,
        ncores: int | None = None,
        name: Any = None,
        host: str | None = None,
        port: int | None = None,
        protocol: str | None = None,
        interface: str | None = None,
        resources: dict | None = None,
        memory_limit: str | float | int = "auto",
        memory_target_fraction: float | bool | None = None,
        memory_spill_fraction: float | bool | None = None,
        memory_pause_fraction: float | bool | None = None,
        memory_monitor_interval: str | float | None = None,
        data: Any = None,
        local_directory: str | None = None,
        local_dir: str | None = None,
        nanny: str | None = None,
        death_timeout: Any = None,
        validate: bool = False,
        heartbeat_interval: Any = None,
        executor: Any = None,
        lifetime: Any = None,
        lifetime_stagger: Any = None,
        lifetime_restart: bool | None = None,
        plugins: Any = (),
        silence_logs: int | None = None,
        security: Any = None,
        blocked_handlers: list | None = None,
        dashboard_address: Any = None,
        **kwargs: Any,
    ):
        check_keywords("Worker", kwargs, WORKER_NOT_YET)
        super().__init__(logger, security, blocked_handlers)
        if silence_logs:
            logger.setLevel(silence_logs)
        self.scheduler_address = self._scheduler_address(
            scheduler_ip, scheduler_port, scheduler_file
        )
        self.nthreads = nthreads or ncores or cpu_count()
        self.name = name  # (its address once it listens, if None)
        self.resources = dict(resources or {})
        self.memory_manager = WorkerMemoryManager(
            memory_limit,
            self.nthreads,
            data=data,
            memory_target_fraction=memory_target_fraction,
            memory_spill_fraction=memory_spill_fraction,
            memory_pause_fraction=memory_pause_fraction,
            memory_monitor_interval=memory_monitor_interval,
        )
        self.memory_limit = self.memory_manager.memory_limit
        self.nanny = nanny
        self.death_timeout = death_timeout
        config = dask.config.get
        self.heartbeat_interval = dask.utils.parse_timedelta(
            heartbeat_interval or config("distributed.worker.heartbeat-interval", default="1s"),
            default="ms",
        )
        self.lifetime = _lifetime(
            lifetime or config("distributed.worker.lifetime.duration", default=None),
            lifetime_stagger or config("distributed.worker.lifetime.stagger", default="0s"),
        )
        if lifetime_restart is None:
            lifetime_restart = config("distributed.worker.lifetime.restart", default=False)
        self.lifetime_restart = bool(lifetime_restart)
        self._listen_address = listen_address_for(
            self.scheduler_address, host, port, protocol, interface
        )
        self._base_directory = local_directory or local_dir
        self.local_directory = ""
        self.state = WorkerState(
            "",
            self.nthreads,
            resources=self.resources,
            transfer_batch_bytes=dask.config.get("distributed.worker.transfer-batch-bytes"),
            max_peers_in_flight=dask.config.get("distributed.worker.connections.outgoing"),
            transition_log_length=transition_log_length(),
            validate=validate,
        )
        # (the state machine decides how many tasks run: the threads set no limit)
        self.executor = executor or TaskThreads()
        self._own_executor = executor is None
        self._rejoins: dict[Any, threading.Event] = {}  # seceded task -> its wake-up
        # The client that tasks here use (get_client), made on first use and closed
        # with the worker.
        self.task_client: Any = None
        self.task_client_lock = threading.Lock()
        self.pool = ConnectionPool(role="worker", connection_args=self.connection_args)
        self.scheduler = methods.SchedulerHandle(self.scheduler_address, self.pool)
        self._plugins = WorkerPlugins(self)
        self.task_stream = TaskStreamRecorder()
        self.profiler = WorkerProfiler(self)
        self._given_plugins = tuple(plugins)
        self.server = Server(
            handlers={
                rq.GetData: self._handle_get_data,
                rq.UpdateData: self._handle_update_data,
                rq.Identity: self._handle_identity,
                rq.RunFunction: self._handle_run,
                rq.CloseWorker: self._handle_close,
                CallStack: lambda comm, msg: self.get_call_stack(msg.keys),
                **self.node_handlers(),
                **self._plugins.handlers,
                **self.task_stream.handlers,
                **self.profiler.handlers,
            },
            **self.server_options(),
        )
        self.batched: BatchedSend | None = None
        self._ipython: dict | None = None  # (the connection info of its IPython kernel)
        self._stream_task: asyncio.Task | None = None
        self._gathers: set[asyncio.Task] = set()
        self._periodic: list[asyncio.Task] = []  # cancelled on close
        self._ongoing: set[asyncio.Task] = set()  # closing: left to finish
        self._lifetime_timer: asyncio.TimerHandle | None = None
        self.http = WorkerHTTP(self, dashboard_address)
        self._usage = UsageMeter()

    @property
    def data(self) -> Any:
        """The results held by this worker, by key (a spilling buffer under a memory limit:
        ``data.memory`` and ``data.disk`` hold the results in memory and on disk)."""
        return self.state.data

    @property
    def plugins(self) -> dict:
        """The worker plugins set up here, by name."""
        return self._plugins.plugins

    @property
    def address(self) -> str:
        """Where peers and clients reach this worker."""
        return self.server.address

    @property
    def worker_address(self) -> str:
        """The same as ``address`` (a Nanny's ``worker_address`` points here too)."""
        return self.address

    @property
    def local_dir(self) -> str:
        """The same as ``local_directory`` (a Nanny has ``local_dir`` too)."""
        return self.local_directory

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self.server.listen(self._listen_address)
        self.state.address = self.address
        await self.http.start()
        if self.name is None:
            self.name = self.address
        scratch = methods.scratch_directory(self._base_directory)
        os.makedirs(scratch, exist_ok=True)
        self.local_directory = tempfile.mkdtemp(prefix="worker-", dir=scratch)
        self.state.data = self.memory_manager.create_data(self.local_directory)
        self.task_stream.watch(self.address, self.state.data)
        self.profiler.start()
        comm, registered = await self._register()
        self.batched = BatchedSend(comm)
        # (before the first task is read)
        await self._plugins.start(self._given_plugins, registered.plugins)
        loop = asyncio.get_running_loop()
        self._stream_task = loop.create_task(self._read_stream(comm))
        self._periodic.append(loop.create_task(self._heartbeats()))
        if self.memory_manager.monitored:
            self._periodic.append(loop.create_task(self.memory_manager.monitor(self._set_paused)))
        if self.lifetime is not None:
            self._lifetime_timer = loop.call_later(self.lifetime, self._lifetime_reached)
        logger.info("Worker at %s registered with %s", self.address, self.scheduler_address)

    async def _register(self) -> tuple[Any, rq.Registered]:
        """Connect to the scheduler and register (the stream, and the scheduler's
        answer); give up after ``death_timeout``."""
        timeout = _timeout(self.death_timeout)
        try:
            return await asyncio.wait_for(self._connect_and_register(timeout), timeout)
        except TimeoutError as exc:
            if timeout is None:
                raise  # (connect's own error names the address and the connect timeout)
            raise TimeoutError(
                f"Worker could not register with the scheduler at {self.scheduler_address} "
                f"within death_timeout={self.death_timeout!r}: {exc}"
            ) from None

    async def _connect_and_register(self, timeout: float | None) -> Any:
        comm = await connect(self.scheduler_address, timeout=timeout, **self.connection_args)
        try:
            register = rq.RegisterWorker(
                self.address,
                self.nthreads,
                name=self.name,
                memory_limit=self.memory_limit,
                resources=self.resources,
                nanny=self.nanny,
                pid=os.getpid(),
                local_directory=self.local_directory,
                services=self.http.services,
            )
            await comm.write(register)
            reply = await comm.read()
        except BaseException:
            comm.abort()
            raise
        try:
            registered = rq.decode_reply(rq.RegisterWorker, reply)
        except Exception as exc:
            await comm.close()
            raise ValueError(f"The scheduler refused this worker: {exc}") from None
        return comm, registered

    async def close(
        self, *args: Any, nanny: bool = True, reason: str = "worker-close", **kwargs: Any
    ) -> None:
        """Close the worker.  With ``nanny=True`` its nanny, if it has one, is told first
        not to restart it (and closes once the worker process has exited)."""
        if self.status in _ALIVE:
            logger.info("Closing worker %s: %s", self.address, reason)
            if nanny and self.nanny:
                await self._tell_nanny_to_close()
        await super().close()

    async def _tell_nanny_to_close(self) -> None:
        try:
            await self.pool.call(self.nanny, rq.CloseGracefully(), timeout=_NANNY_TIMEOUT)
        except Exception as exc:  # it is gone already, or does not know the operation
            logger.info("Could not tell the nanny at %s to close: %r", self.nanny, exc)

    async def close_gracefully(
        self, restart: bool | None = None, reason: str = "worker-close-gracefully"
    ) -> None:
        """Hand this worker's data over, then close.

        The scheduler stops sending tasks here, copies the results that only this worker
        holds to other workers and forgets it; then the worker closes.  With ``restart``
        (default: ``lifetime_restart``) a nanny is left to start a new worker; otherwise
        the nanny closes too.
        """
        if self.status not in ("running", "paused"):
            return
        if restart is None:
            restart = self.lifetime_restart
        logger.info("Closing worker %s gracefully: %s", self.address, reason)
        self.status = "closing_gracefully"
        stimulus_id = f"{reason}-{uuid.uuid4().hex[:8]}"
        self._send(ins.WorkerStatusChange(stimulus_id, self.status))
        try:
            retire = rq.RetireWorkers(workers=(self.address,), close_workers=False, remove=True)
            await self.pool.call(self.scheduler_address, retire)
        except Exception as exc:  # an old scheduler, or none: the data is recomputed if needed
            logger.info("The scheduler did not retire %s (%r); closing anyway", self.address, exc)
        await self.close(nanny=not restart, reason=reason)

    def _lifetime_reached(self) -> None:
        logger.info("Worker %s reached its lifetime", self.address)
        self._spawn(self.close_gracefully(reason="worker-lifetime-reached"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._ongoing.add(task)
        task.add_done_callback(self._ongoing.discard)

    async def _close(self) -> None:
        self.profiler.stop()
        await self._plugins.close()
        if self._lifetime_timer is not None:
            self._lifetime_timer.cancel()
        for task in self._periodic:
            task.cancel()
        if self.batched is not None and not self.batched.closed():
            try:
                self.batched.send(Unregister(f"close-{self.address}"))
                await self.batched.close(timeout=2)
            except CommClosedError:
                pass
        elif self.batched is not None:  # (the scheduler closed it: its writer waits still)
            self.batched.abort()
        if self._stream_task is not None:
            self._stream_task.cancel()
        for task in list(self._gathers):
            task.cancel()
        await self.server.close()
        await self.http.stop()
        await self.pool.close()
        for woken in self._rejoins.values():  # (their results go nowhere now)
            woken.set()
        if self.task_client is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.task_client.close)
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.state.data.clear()
        if self.local_directory:
            shutil.rmtree(self.local_directory, ignore_errors=True)

    async def _read_stream(self, comm: Any) -> None:
        """Take instructions from the scheduler until it goes away."""
        await read_messages(comm, TO_WORKER, self.address, self._handle_all)
        if self.status in ("running", "paused"):  # (closing gracefully closes anyway)
            logger.info("Lost the scheduler at %s; closing", self.scheduler_address)
            self._spawn(self.close(reason="scheduler-connection-lost"))

    def _handle_all(self, events: list[ev.AnyEvent]) -> None:
        self._handle(*events)

    def _send(self, msg: Message) -> None:
        if self.batched is not None and not self.batched.closed():
            self.batched.send(msg)

    async def _heartbeats(self) -> None:
        for n in itertools.count():
            await asyncio.sleep(self.heartbeat_interval)
            usage = self._usage.read()
            self._send(WorkerHeartbeat(f"heartbeat-{n}", memory=self.memory(), usage=usage))

    def memory(self) -> dict[str, int]:
        """Bytes of memory: ``process`` (resident), ``managed`` (results in memory) and
        ``spilled`` (results on disk)."""
        manager = self.memory_manager
        return {
            "process": manager.process_memory(),
            "managed": manager.managed_in_memory(self.state.nbytes),
            "spilled": manager.spilled_bytes,
        }

    def _set_paused(self, paused: bool) -> None:
        if self.status not in ("running", "paused"):
            return
        self.status = "paused" if paused else "running"
        self._handle(ev.PauseChange(f"memory-{self.status}-{uuid.uuid4().hex[:8]}", paused))

    # ------------------------------------------------------------------ the state machine

    def _handle(self, *events: ev.AnyEvent) -> None:
        for instruction in self.state.handle(*events):
            if isinstance(instruction, ins.FromWorker):
                self._send(instruction)
            elif isinstance(instruction, ins.Execute):
                self._execute(instruction)
            elif isinstance(instruction, ins.Rejoined):
                self._rejoins.pop(instruction.key).set()
            elif isinstance(instruction, ins.GatherDep):
                task = asyncio.get_running_loop().create_task(self._gather_dep(instruction))
                self._gathers.add(task)
                task.add_done_callback(self._gathers.discard)

    def _execute(self, instruction: ins.Execute) -> None:
        ts = self.state.tasks[instruction.key]
        deps = self.task_stream.read_dependencies(
            ts.key, (dep.key for dep in ts.dependencies), self.state.data
        )
        loop = asyncio.get_running_loop()
        key, run_id, payload = ts.key, ts.run_id, ts.payload

        def run() -> TaskOutcome:
            set_task_context(self, key)
            try:
                return run_task(payload, deps)
            finally:
                set_task_context(None)

        def done(f: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._task_done, key, run_id, f)
            except RuntimeError:
                pass  # the loop closed while the task ran: nobody is left to tell

        future = self.executor.submit(run)
        future.add_done_callback(done)

    def _task_done(self, key: Any, run_id: int, future: Any) -> None:
        if self.status not in _ALIVE:
            return
        stimulus_id = "task-done"  # the transition log pairs it with the key
        outcome: TaskOutcome = future.result()
        if outcome.reschedule:
            event: ev.WorkerEvent = ev.RescheduleTask(stimulus_id, key, run_id)
        elif outcome.error is not None:
            err = outcome.error
            event = ev.ExecuteFailure(
                stimulus_id,
                key,
                run_id,
                err.exception,
                err.traceback,
                err.exception_text,
                err.traceback_text,
            )
        else:
            event = ev.ExecuteSuccess(
                stimulus_id,
                key,
                run_id,
                outcome.value,
                outcome.nbytes,
                outcome.type,
                outcome.duration,
            )
        self.task_stream.cause = key  # (what spills as the result is stored)
        self._handle(event)
        self.task_stream.finished(key, outcome)

    def get_current_task(self) -> Any:
        """The key of the task running in the calling thread (None outside a task)."""
        return current_task_key()

    async def executor_submit(
        self,
        key: Any,
        function: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        executor: Any = None,
    ) -> Any:
        """Run ``function(*args, **kwargs)`` in a thread of ``executor`` (a
        ``concurrent.futures.Executor``; by default the worker's own, which runs its
        tasks) and return its result, without blocking the worker; ``key`` names the
        call in the worker's log."""
        return await methods.executor_submit(self.executor, key, function, args, kwargs, executor)

    async def memory_monitor(self) -> None:
        """Take one look at this process's memory, as the worker does every
        ``memory_monitor_interval``: past ``memory_spill_fraction`` of ``memory_limit``
        it spills results to disk, past ``memory_pause_fraction`` it pauses (no new
        tasks) until memory is back under it.  Without a memory limit it does nothing."""
        if self.memory_manager.monitored:
            await self.memory_manager.check(self._set_paused)

    def trigger_profile(self) -> None:
        """Take a sample of the stacks of the threads running tasks now, counted in the
        worker's statistical profile."""
        self.profiler.trigger()

    def get_profile(
        self,
        start: float | None = None,
        stop: float | None = None,
        key: str | None = None,
        server: bool = False,
    ) -> dict:
        """The statistical profile of the tasks that ran here between ``start`` and
        ``stop`` (of task prefix ``key`` only, unless None), or of the worker's event
        loop with ``server``."""
        return self.profiler.get(start, stop, key, server)

    def start_ipython(self, comm: Any = None) -> dict:
        """Start an IPython kernel in this worker's process, with ``worker`` (this worker)
        in its namespace; its connection info (the same kernel when asked again).  Needs
        ipykernel (``distributary[ipython]``)."""
        if self._ipython is None:
            self._ipython = ipython.start_kernel({"worker": self}, get_address_host(self.address))
        return self._ipython

    def get_call_stack(self, keys: Any = None) -> dict:
        """The Python stack of each task running here (of ``keys`` only, unless None),
        by key: the lines of ``traceback.format_stack``."""
        return introspection.call_stacks(self, keys)

    def log_event(self, topic: Any, msg: Any) -> None:
        """Log ``msg`` (plain data) on the scheduler under ``topic`` (a string or a list
        of them), with the time; tasks call ``get_worker().log_event(...)``."""
        self.loop.call_soon_threadsafe(self._send, introspection.log_event_message(topic, msg))

    def secede_current_task(self, key: Any) -> None:
        """Called from a task's thread: that task stops counting against the thread pool
        (it keeps its thread; the next task gets another)."""
        self.loop.call_soon_threadsafe(self._handle, ev.Secede(f"secede-{key}", key))

    def rejoin_current_task(self, key: Any) -> None:
        """Called from a seceded task's thread: block until the task has a slot again."""
        woken = self._rejoins[key] = threading.Event()
        self.loop.call_soon_threadsafe(self._handle, ev.Rejoin(f"rejoin-{key}", key))
        woken.wait()

    async def _gather_dep(self, instruction: ins.GatherDep) -> None:
        stimulus_id = f"gather-dep-{uuid.uuid4().hex[:8]}"
        try:
            start = time.time()
            reply = await self.pool.call(instruction.worker, rq.GetData(instruction.keys))
            data = {key: deserialize(value) for key, value in reply.data.items()}
            stop = time.time()
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info(
                "Could not get %d keys from %s: %s", len(instruction.keys), instruction.worker, exc
            )
            event: ev.WorkerEvent = ev.GatherDepFailure(
                stimulus_id, instruction.worker, instruction.keys
            )
        except Exception as exc:  # the peer's data cannot be serialized or deserialized
            logger.warning(
                "Could not get %d keys from %s: %r", len(instruction.keys), instruction.worker, exc
            )
            event = ev.GatherDepError(
                stimulus_id, instruction.worker, instruction.keys, RemoteError.of(exc)
            )
        else:
            nbytes = {key: sizeof(value) for key, value in data.items()}
            self.task_stream.transferred(instruction.worker, nbytes, start, stop)
            event = ev.GatherDepSuccess(
                stimulus_id, instruction.worker, instruction.keys, data, nbytes
            )
        if self.status in _ALIVE:
            self._handle(event)

    # ------------------------------------------------------------------ handlers

    def _handle_get_data(self, comm: Any, msg: rq.GetData) -> rq.Data:
        data = self.state.data
        return rq.Data({key: Serialize(data[key]) for key in msg.keys if key in data})

    def _handle_update_data(self, comm: Any, msg: rq.UpdateData) -> rq.Stored:
        values = {key: deserialize(value) for key, value in msg.data.items()}
        nbytes = {key: sizeof(value) for key, value in values.items()}
        types = {key: type(value).__qualname__ for key, value in values.items()}
        self._handle(ev.UpdateData(f"update-data-{uuid.uuid4().hex[:8]}", values, nbytes, types))
        return rq.Stored(nbytes, types)

    async def _handle_run(self, comm: Any, msg: rq.RunFunction) -> rq.Ran:
        return await run_function(msg, self, "dask_worker")

    def _handle_identity(self, comm: Any, msg: rq.Identity) -> dict:
        return {
            "type": "Worker",
            "id": self.id,
            "address": self.address,
            "scheduler": self.scheduler_address,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "name": self.name,
            "services": self.http.services,
        }

    def _handle_close(self, comm: Any, msg: rq.CloseWorker) -> str:
        self._spawn(self.close(nanny=msg.nanny, reason="worker-close-rpc"))
        return "OK"

    _repr_html_ = worker_html  # (the notebook's HTML: widgets/reprs.py)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.address if self.status in _ALIVE else ''!r}, "
            f"name: {self.name}, status: {self.status}, stored: {len(self.state.data)}, "
            f"running: {self.state.busy_threads}/{self.nthreads}>"
        )


def _timeout(value: Any) -> float | None:
    return None if value is None else dask.utils.parse_timedelta(value)


def _lifetime(lifetime: Any, stagger: Any) -> float | None:
    """Seconds until the worker closes: ``lifetime`` give or take up to ``stagger``."""
    if not lifetime:
        return None
    spread = dask.utils.parse_timedelta(stagger or 0)
    return max(dask.utils.parse_timedelta(lifetime) + random.uniform(-spread, spread), 0.0)
