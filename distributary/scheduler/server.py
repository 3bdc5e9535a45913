"""The Scheduler: the server around :class:`~distributary.scheduler.state.SchedulerState`.

Workers and clients each keep one long-lived stream to the scheduler.  Every batch
read from a stream is decoded into the messages of :mod:`distributary.protocol`,
which the state machine takes in one call (those an extension registered in
``message_handlers`` go to it instead), and the messages it returns go out on the
batched streams of the workers and clients they name.  The scheduler never unpickles
a task payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import dask.config
import msgspec
from dask.utils import parse_timedelta

from distributary.comm.addressing import normalize_address
from distributary.config import transition_log_length
from distributary.core import BatchedSend, ConnectionPool, Server, read_messages
from distributary.core.batched import send_buffer_limit
from distributary.dashboard.scheduler import SchedulerHTTP
from distributary.node import ServerNode, listen_address_for
from distributary.protocol import error_message
from distributary.protocol import requests as rq
from distributary.protocol.client_messages import FROM_CLIENT
from distributary.protocol.serialize import Serialize, Serialized
from distributary.protocol.worker_messages import FROM_WORKER, Unregister
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler import introspection, methods
from distributary.scheduler.datasets import DatasetExtension
from distributary.scheduler.extension import SchedulerExtension
from distributary.scheduler.flushes import StreamFlushes
from distributary.scheduler.introspection import Introspection
from distributary.scheduler.lifecycle import WorkerLifecycle
from distributary.scheduler.locks import LockExtension
from distributary.scheduler.metadata import TaskMetadata
from distributary.scheduler.named_events import EventExtension
from distributary.scheduler.plugins import PluginRegistry
from distributary.scheduler.profiling import Profiling
from distributary.scheduler.progress import ProgressExtension
from distributary.scheduler.pubsub import PubSubExtension
from distributary.scheduler.queues import QueueExtension
from distributary.scheduler.records import WorkerRecord
from distributary.scheduler.remote import RemoteExecution
from distributary.scheduler.replication import DataReplication
from distributary.scheduler.semaphores import SemaphoreExtension
from distributary.scheduler.shared import SharedValues
from distributary.scheduler.state import SchedulerState
from distributary.scheduler.task_stream import TaskStream
from distributary.scheduler.variables import VariableExtension
from distributary.utils.gc_pause import gc_paused
from distributary.utils.keywords import SCHEDULER_NOT_YET, check_keywords
from distributary.widgets.reprs import scheduler_html

logger = logging.getLogger("distributary.scheduler")


class Scheduler(ServerNode):
    """The scheduler: tracks tasks, workers and clients and decides where tasks run.

    ``Scheduler(host=..., port=..., protocol=...)``; await it (or ``async with``) to
    start it; ``s.address`` is where workers and clients connect.  ``security`` (a
    Security) gives its TLS credentials; ``blocked_handlers`` names the operations it
    refuses (like ``["run_function"]``; ``distributed.scheduler.blocked-handlers``).
    With a ``dashboard_address`` (``":8787"``; ``":0"`` for a random port) it serves the
    dashboard, ``/metrics`` and ``/health`` over HTTP (``s.dashboard_link``).
    """

    security_role = "scheduler"

    def __init__(
        self,
        loop: Any = None,
        *,
        host: str | None = None,
        port: int = 0,
        protocol: str | None = None,
        interface: str | None = None,
        allowed_failures: int | None = None,
        worker_ttl: Any = None,
        idle_timeout: Any = None,
        scheduler_file: str | None = None,
        dashboard_address: Any = None,
        validate: bool = False,
        security: Any = None,
        blocked_handlers: list | None = None,
        **kwargs: Any,
    ):
        check_keywords("Scheduler", kwargs, SCHEDULER_NOT_YET)
        super().__init__(logger, security, blocked_handlers)
        config = dask.config.get
        if allowed_failures is None:
            allowed_failures = config("distributed.scheduler.allowed-failures")
        saturation = config("distributed.scheduler.worker-saturation")
        self.state = SchedulerState(
            allowed_failures=allowed_failures,
            worker_saturation=float(saturation),
            unknown_duration=parse_timedelta(config("distributed.scheduler.unknown-task-duration")),
            validate=validate,
            worker_ttl=_seconds(worker_ttl, "distributed.scheduler.worker-ttl"),
            idle_timeout=_seconds(idle_timeout, "distributed.scheduler.idle-timeout"),
            work_stealing=bool(config("distributed.scheduler.work-stealing")),
            transition_log_length=transition_log_length(),
        )
        self.scheduler_file = scheduler_file
        self._listen_address = listen_address_for(
            None, host, port, protocol, interface, self.security
        )
        self.server = Server(
            handlers={
                rq.RegisterWorker: self._handle_register_worker,
                rq.RegisterClient: self._handle_register_client,
                rq.WhoHas: self._handle_who_has,
                rq.Story: self._handle_story,
                rq.Terminate: self._handle_terminate,
                **self.node_handlers(),
            },
            **self.server_options(),
        )
        self.worker_streams: dict[str, BatchedSend] = {}
        self.client_streams: dict[str, BatchedSend] = {}
        # The messages handled here or by an extension; the others go to the state.
        self.message_handlers: dict[type, Callable[[Any], bool | None]] = {
            Unregister: lambda msg: False,
        }
        # The state's instructions for the server itself: by class, who takes them.
        self.instruction_handlers: dict[type, list[Callable[[Any], None]]] = {}
        self.pool = ConnectionPool(role="scheduler", connection_args=self.connection_args)
        self.inproc_address: str | None = None  # the same server, in memory
        self.flushes = StreamFlushes(self)
        self.datasets = DatasetExtension(self)
        self.lifecycle = WorkerLifecycle(self)
        self.remote = RemoteExecution(self)
        self.locks = LockExtension(self)
        self.semaphores = SemaphoreExtension(self)
        self.shared_values = SharedValues(self)
        self.queues = QueueExtension(self, self.shared_values)
        self.variables = VariableExtension(self, self.shared_values)
        self.named_events = EventExtension(self)
        self.pubsub = PubSubExtension(self)
        self.introspection = Introspection(self)
        self.plugin_registry = PluginRegistry(self)
        self.replication, self.metadata = DataReplication(self), TaskMetadata(self)
        self.progress = ProgressExtension(self)  # counts per task prefix, progress() bars
        self.task_stream, self.profiling = TaskStream(self), Profiling(self)
        dashboard = kwargs.get("dashboard")  # (dask.distributed's switch)
        if dashboard is not None:
            dashboard_address = (dashboard_address or ":8787") if dashboard else None
        self.http = SchedulerHTTP(self, dashboard_address, self.progress)
        self.extensions: list[SchedulerExtension] = [
            self.flushes,
            self.datasets,
            self.lifecycle,
            self.remote,
            self.locks,
            self.semaphores,
            self.shared_values,
            self.queues,
            self.variables,
            self.named_events,
            self.pubsub,
            self.introspection,
            self.plugin_registry,
            *(self.replication, self.metadata),
            self.progress,
            *(self.task_stream, self.profiling),
            self.http,
        ]
        for extension in self.extensions:
            self.add_extension(extension)
        self.introspection.event_listeners.append(self.plugin_registry.event_logged)

    def add_extension(self, extension: SchedulerExtension) -> None:
        """Give ``extension`` the requests, stream messages and instructions it takes."""
        self.server.add_handlers(extension.handlers)
        taken = set(self.message_handlers) & set(extension.message_handlers)
        if taken:
            raise ValueError(f"stream messages taken twice: {sorted(c.op for c in taken)}")
        self.message_handlers.update(extension.message_handlers)
        for cls, handler in extension.instruction_handlers.items():
            self.instruction_handlers.setdefault(cls, []).append(handler)

    @property
    def address(self) -> str:
        """Where workers and clients connect."""
        return self.server.address

    @property
    def dashboard_link(self) -> str:
        """The URL of the dashboard's status page ("" without a dashboard)."""
        return self.http.link

    @property
    def service_ports(self) -> dict[str, int]:
        """The ports of the services served, by name: ``{"dashboard": 8787}``."""
        return self.http.service_ports

    @property
    def workers(self) -> dict:
        """The workers' records, by address."""
        return self.state.workers

    @property
    def tasks(self) -> dict:
        """The tasks' records, by key."""
        return self.state.tasks

    @property
    def plugins(self) -> dict:
        """The scheduler plugins, by name."""
        return self.plugin_registry.plugins

    @property
    def local_directory(self) -> str:
        """The scheduler's own directory (made when first asked for, removed when it
        closes): where ``Client.upload_file`` saves files."""
        return self.plugin_registry.local_directory

    def add_plugin(
        self, plugin: Any = None, idempotent: bool = False, name: str | None = None, **kwargs: Any
    ) -> None:
        """Add a SchedulerPlugin as ``name`` (by default its ``name``, or one made for it),
        in place of one of that name, unless ``idempotent`` and the name is taken.  Its
        ``start`` is called when the scheduler starts, if it did not yet."""
        self.plugin_registry.add(plugin, idempotent, name, **kwargs)

    def remove_plugin(self, plugin: Any = None, name: str | None = None) -> None:
        """Remove a scheduler plugin, given itself or its name (ValueError if absent)."""
        self.plugin_registry.remove(plugin, name)

    async def register_worker_plugin(self, comm: Any, plugin: Any, name: str | None = None) -> dict:
        """Set ``plugin`` (a WorkerPlugin, or its pickle) up on every worker there is and
        will be; ``{address: {"status": "OK"}}``, or the error of a worker whose
        ``setup`` raised."""
        return await self.plugin_registry.register_worker_plugin(plugin, name)

    def story(self, *keys: Any) -> list[tuple]:
        """What happened to these keys: ``(key, start, finish, stimulus_id)`` entries."""
        return self.state.story(*keys)

    transition_story = story

    def identity(self, comm: Any = None) -> dict:
        """The scheduler's type, id, address, start time and workers (by address)."""
        return self.introspection.identity()

    async def broadcast(
        self,
        comm: Any = None,
        msg: Any = None,
        workers: Any = None,
        hosts: Any = None,
        nanny: bool = False,
        serializers: Any = None,
        on_error: str = "raise",
    ) -> dict[str, Any]:
        """Send the request ``msg`` to the workers named (addresses, names or hosts; all
        by default) or their nannies; their replies by worker address (see
        ``Introspection.broadcast``)."""
        if serializers is not None:
            raise NotImplementedError("broadcast(serializers=...) is not supported yet")
        return await self.introspection.broadcast(msg, workers, hosts, nanny, on_error)

    async def get_worker_logs(
        self, n: int | None = None, workers: Any = None, nanny: bool = False
    ) -> dict[str, list]:
        """Each worker's (or its nanny's) recent logs, newest first, by worker address."""
        return await self.introspection.worker_logs(n, workers, nanny)

    def workers_list(self, workers: Any) -> list[str]:
        """The addresses of the workers named by address, name or host (all when None)."""
        return self.introspection.workers_list(workers)

    def coerce_hostname(self, host: Any) -> Any:
        """The host of the worker named ``host``, else ``host``."""
        return self.introspection.coerce_hostname(host)

    def log_event(self, topic: Any, msg: Any) -> None:
        """Keep ``msg`` (plain data), with the time, under ``topic`` (or several)."""
        self.introspection.log_event(topic, msg)

    def get_events(self, topic: str | None = None) -> Any:
        """The ``(time, msg)`` events of ``topic``; of every topic, by topic, when None."""
        return self.introspection.get_events(topic)

    async def replicate(
        self,
        comm: Any = None,
        keys: Any = None,
        n: int | None = None,
        workers: Any = None,
        branching_factor: int = 2,
        delete: bool = True,
    ) -> dict:
        """Have ``n`` copies of each key's data on ``workers`` (addresses or names; all
        running workers when None), one on each of them when ``n`` is None; with
        ``delete`` the copies beyond ``n`` there are dropped.  The workers fetch the
        data from each other.  ``{"status": "OK"}``, or ``"partial-fail"`` with the
        ``keys`` that hold no data."""
        placed = await self.replication.replicate(keys or (), n, workers, branching_factor, delete)
        return msgspec.structs.asdict(placed)

    async def rebalance(self, comm: Any = None, keys: Any = None, workers: Any = None) -> dict:
        """Even out the bytes held among ``workers`` (all running workers when None) by
        moving the data of ``keys`` (any when None) from the workers holding more than
        the mean to those holding less.  ``{"status": "OK"}``, or ``"partial-fail"``
        with the ``keys`` that hold no data."""
        placed = await self.replication.rebalance(keys, workers)
        return msgspec.structs.asdict(placed)

    def coerce_address(self, addr: Any, resolve: bool = True) -> str:
        """A worker's address from its address (``host:port``, a tuple), or its name;
        with ``resolve`` a host name in it becomes the host's IP address."""
        if addr in self.state.workers_by_name:
            return self.state.workers_by_name[addr]
        address = normalize_address(addr)
        return introspection.resolve(address) if resolve else address

    def worker_info(self, ws: WorkerRecord) -> dict:
        """What the scheduler knows of a worker, as plain values."""
        return introspection.worker_info(ws)

    # dask.distributed's documented methods, as adapters (see scheduler/methods.py)
    adaptive_target = methods.adaptive_target
    add_client = methods.add_client
    add_keys = methods.add_keys
    add_worker = methods.add_worker
    cancel_key = methods.cancel_key
    check_idle_saturated = methods.check_idle_saturated
    client_heartbeat = methods.client_heartbeat
    client_releases_keys = methods.client_releases_keys
    close = methods.close
    close_worker = methods.close_worker
    decide_worker = methods.decide_worker
    feed = methods.feed
    gather = methods.gather
    get_comm_cost = methods.get_comm_cost
    get_task_duration = methods.get_task_duration
    get_worker_service_addr = methods.get_worker_service_addr
    handle_long_running = methods.handle_long_running
    handle_worker = methods.handle_worker
    proxy = methods.proxy
    reevaluate_occupancy = methods.reevaluate_occupancy
    remove_client = methods.remove_client
    remove_worker = methods.remove_worker
    report = methods.report
    reschedule = methods.reschedule
    restart = methods.restart
    retire_workers = methods.retire_workers
    run_function = methods.run_function
    scatter = methods.scatter
    send_task_to_worker = methods.send_task_to_worker
    start_ipython = methods.start_ipython
    stimulus_cancel = methods.stimulus_cancel
    stimulus_missing_data = methods.stimulus_missing_data
    stimulus_task_erred = methods.stimulus_task_erred
    stimulus_task_finished = methods.stimulus_task_finished
    transition = methods.transition
    transitions = methods.transitions
    update_data = methods.update_data
    update_graph = methods.update_graph
    valid_workers = methods.valid_workers
    worker_objective = methods.worker_objective
    worker_send = methods.worker_send
    workers_to_close = methods.workers_to_close

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self.server.listen(self._listen_address)
        if not self.address.startswith("inproc://"):
            # A client in this process (of a LocalCluster) talks to it in memory: no
            # encoding, and no socket calls that wait for the GIL while a thread is busy.
            self.inproc_address = (await self.server.listen("inproc://")).address
        if self.scheduler_file:
            with open(self.scheduler_file, "w") as f:
                json.dump({"address": self.address, "id": self.id, "type": "Scheduler"}, f)
        await self.http.serve(self._listen_address)
        for extension in self.extensions:
            extension.start()
        await self.plugin_registry.start_plugins()
        logger.info("Scheduler at: %s", self.address)

    async def _close(self) -> None:
        await self.plugin_registry.close_plugins()
        for extension in self.extensions:
            extension.stop()
        for stream in [*self.worker_streams.values(), *self.client_streams.values()]:
            stream.abort()
        await self.http.close()
        await self.server.close()
        await self.pool.close()
        if self.scheduler_file and os.path.exists(self.scheduler_file):
            os.remove(self.scheduler_file)

    # ------------------------------------------------------------------ state machine

    def handle(self, *events: ev.AnyEvent) -> None:
        """Hand events to the state machine and carry out what it answers: messages
        go out on their peers' streams, the rest to the extension that takes them."""
        if not events:
            return
        for instruction in self.state.handle(*events):
            if isinstance(instruction, ins.ToWorker):
                stream = self.worker_streams.get(instruction.worker)
            elif isinstance(instruction, ins.ForServer):
                for handler in self.instruction_handlers.get(type(instruction), ()):
                    handler(instruction)
                continue
            else:
                stream = self.client_streams.get(instruction.client)
            if stream is None or stream.closed():
                continue
            if isinstance(instruction, ins.KeyErred):
                instruction = msgspec.structs.replace(
                    instruction,
                    exception=_serializable(instruction.exception),
                    traceback=_serializable(instruction.traceback),
                )
            stream.send(instruction)

    def is_connected(self, peer: str) -> bool:
        """Whether the stream of this worker or client is open."""
        stream = self.worker_streams.get(peer) or self.client_streams.get(peer)
        return stream is not None and not stream.closed()

    async def after_flush(self, client: str | None, uid: str | None) -> None:
        """Until ``client``'s stream delivered its flush marker ``uid``."""
        await self.flushes.wait(client, uid)

    def disconnect(self, peer: str) -> bool:
        """Close the stream of this worker or client (its reader then removes it);
        False if there is none."""
        stream = self.worker_streams.get(peer) or self.client_streams.get(peer)
        if stream is None:
            return False
        stream.abort()
        return True

    async def _handle_messages(self, messages: list) -> bool:
        """Handle one batch of a stream's messages, in order; False if its peer
        unregistered.

        Each part of a graph is handled on its own, with the cycle collector paused,
        and the streams may send what it started before the next part is handled.
        """
        events: list = []
        for msg in messages:
            handler = self.message_handlers.get(type(msg))
            if handler is None and type(msg) is not ev.UpdateGraph:
                events.append(msg)
                continue
            self.handle(*events)
            events = []
            if handler is not None:
                if handler(msg) is False:
                    return False
                continue
            with gc_paused():
                self.handle(msg)
            # (a read of a message already received does not yield to the loop)
            await asyncio.sleep(0)
        self.handle(*events)
        return True

    # ------------------------------------------------------------------ handlers

    async def _handle_register_worker(self, comm: Any, msg: rq.RegisterWorker) -> None:
        address = msg.address
        name = msg.name
        if address in self.state.workers or (
            name is not None and name in self.state.workers_by_name
        ):
            await comm.write(error_message(ValueError(f"name or address taken: {name!r}")))
            return
        stream = BatchedSend(comm, send_limit=send_buffer_limit())
        self.worker_streams[address] = stream
        self.handle(methods.worker_added(msg, time.time()))
        await comm.write(rq.Registered(self.id, plugins=self.plugin_registry.registered()))
        logger.info("Worker %s registered", address)
        self.lifecycle.workers_changed()
        safe = False
        try:
            await read_messages(comm, FROM_WORKER, address, self._handle_messages)
            safe = not comm.closed()
        finally:
            self.worker_streams.pop(address, None)
            stream.abort()
            if self.status == "running":
                reason = self.lifecycle.exit_reasons.pop(address, "")
                self.handle(
                    ev.RemoveWorker(f"remove-worker-{address}", address, safe=safe, reason=reason)
                )
                logger.info("Worker %s removed", address)
                self.lifecycle.workers_changed()

    async def _handle_register_client(self, comm: Any, msg: rq.RegisterClient) -> None:
        client = msg.client
        stream = BatchedSend(comm, send_limit=send_buffer_limit())
        self.client_streams[client] = stream
        self.handle(ev.AddClient(f"add-client-{client}", client))
        await comm.write(rq.Registered(self.id, services=self.service_ports))
        try:
            await read_messages(comm, FROM_CLIENT, client, self._handle_messages)
        finally:
            self.client_streams.pop(client, None)
            stream.abort()
            if self.status == "running":
                self.handle(ev.RemoveClient(f"remove-client-{client}", client))

    def _handle_who_has(self, comm: Any, msg: rq.WhoHas) -> dict:
        tasks = self.state.tasks
        return {
            key: tuple(ws.address for ws in tasks[key].who_has) if key in tasks else ()
            for key in msg.keys
        }

    def _handle_story(self, comm: Any, msg: rq.Story) -> list:
        return self.state.story(*msg.keys)

    async def _handle_terminate(self, comm: Any, msg: rq.Terminate) -> str:
        asyncio.get_running_loop().create_task(self.close())
        return "OK"

    _repr_html_ = scheduler_html  # (the notebook's HTML: widgets/reprs.py)

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self.address if self.status == 'running' else ''!r}, "
            f"workers: {len(self.state.workers)}, tasks: {len(self.state.tasks)}>"
        )


def _seconds(value: Any, config_key: str) -> float | None:
    """A duration given, or else configured, in seconds (``None``: not set)."""
    if value is None:
        value = dask.config.get(config_key, default=None)
    return parse_timedelta(value) if value else None


def _serializable(value: Any) -> Any:
    if value is None or isinstance(value, Serialize | Serialized):
        return value
    return Serialize(value)
