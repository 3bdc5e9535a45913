"""Client: submit work to a distributary cluster and get results back.

A blocking Client runs its asynchronous machinery on a background event-loop
thread (:class:`~distributary.utils.loop.LoopRunner`); with ``asynchronous=True``
it runs on the caller's loop and its methods return awaitables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dask.config
from dask.base import tokenize
from dask.utils import funcname, parse_timedelta

from distributary.client import (
    cluster,
    data,
    diagnostics,
    introspection,
    ipython,
    plugins,
    registry,
    replay,
)
from distributary.client.calls import scheduler_method
from distributary.client.collections import GraphRunner
from distributary.client.datasets import NO_DEFAULT, DatasetRequests, Datasets
from distributary.client.executor import ClientExecutor
from distributary.client.future import Future
from distributary.client.graphs import (
    SubmissionWindows,
    check_graph_options,
    no_actors,
    part_size,
    per_key_restrictions,
    task_options,
)
from distributary.client.outbox import Outbox
from distributary.client.registry import default_client
from distributary.client.state import ClientState, FutureState
from distributary.client.structures import collect_futures
from distributary.client.transfer import DataTransfer
from distributary.comm import connect
from distributary.comm.addressing import normalize_address
from distributary.core import BatchedSend, ConnectionPool, read_messages
from distributary.dashboard.address import scheduler_dashboard_link
from distributary.protocol import requests as rq
from distributary.protocol.client_messages import TO_CLIENT, FromClient, TaskSpec
from distributary.protocol.tasks import dumps_task, register_reference_type
from distributary.security import client_security
from distributary.utils.keywords import check_client_keywords
from distributary.utils.loop import LoopRunner, in_loop, sync
from distributary.widgets.reprs import client_html
from distributary.worker.context import out_of_the_pool_while_blocked

logger = logging.getLogger("distributary.client")

register_reference_type(Future)


class Client:
    """Connect to a cluster and submit computation to it.

    ``Client()`` starts a ``LocalCluster`` (closed with the client; other keywords are
    its); ``Client("tcp://host:port")`` or ``Client(cluster)`` connects to a running one.
    ``loop`` and ``heartbeat_interval`` have no effect (the client runs its own loop and
    its stream tells when the scheduler is gone); data always goes straight between the
    client and the workers (``direct_to_workers``).  ``security``: a Security (by default
    its cluster's), or True for temporary credentials, with the LocalCluster it starts.
    """

    # A Client is an I/O shell around its ClientState: its ``Outbox`` (the state, its
    # lock and the scheduler stream) and helpers for graphs, data transfers and
    # datasets, each told only what it needs.  It is the ``FutureOwner`` of its futures.

    def __init__(
        self,
        address: Any = None,
        loop: Any = None,
        timeout: Any = None,
        set_as_default: bool = True,
        scheduler_file: str | None = None,
        security: Any = None,
        asynchronous: bool = False,
        name: str | None = None,
        heartbeat_interval: Any = None,
        direct_to_workers: bool | None = None,
        connection_limit: int = 512,
        **kwargs: Any,
    ):
        check_client_keywords(address, scheduler_file, direct_to_workers, kwargs)
        self.security = client_security(security, address, scheduler_file, kwargs)
        self.id = f"{name or 'Client'}-{uuid.uuid4()}"
        self._asynchronous = bool(asynchronous)
        self.status = "newly-created"
        self.cluster: Any = None
        self._own_cluster = False
        self._set_as_default = set_as_default
        self._cluster_kwargs = kwargs
        self._timeout = parse_timedelta(
            timeout if timeout is not None else dask.config.get("distributed.comm.timeouts.connect")
        )
        self._core = ClientState()
        self._outbox = Outbox(self._core, self)
        self._restart_waiters: set[asyncio.Event] = set()  # set when a restart is reported
        self._stream_task: asyncio.Task | None = None
        self._starting: asyncio.Task | None = None  # (start() of an asynchronous client)
        args = self.security.get_connection_args("client")
        self.pool = ConnectionPool(limit=connection_limit, role="client", connection_args=args)
        self._graphs = GraphRunner(self, self._outbox, self.gather)
        self._windows = SubmissionWindows()
        self._transfer = DataTransfer(
            self, self._outbox, self.pool, self._call_scheduler, self._timeout
        )
        self._datasets = DatasetRequests(self.id, self, self._outbox, self._call_scheduler)
        self._placement = data.PlacementRequests(self.id, self._outbox, self._call_scheduler)
        self.scheduler_address: str | None = None
        self._scheduler_services: dict[str, int] = {}  # (their ports, as it registered us)
        self.scheduler_file = scheduler_file
        if scheduler_file is not None:
            with open(scheduler_file) as f:
                address = json.load(f)["address"]
        if address is not None and not hasattr(address, "scheduler_address"):
            address = normalize_address(address)
        self._address_arg = address
        self._runner: LoopRunner | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        if not asynchronous:
            self._runner = LoopRunner.acquire()
            self.loop = self._runner.loop
            try:
                self._start_blocking()
            except BaseException:
                self._runner.release()
                self._runner = None
                self.status = "closed"
                raise

    # ------------------------------------------------------------------ lifecycle

    def _start_blocking(self) -> None:
        address = self._address_arg
        if address is None:
            from distributary.deploy.local import LocalCluster

            self.cluster = LocalCluster(**self._cluster_kwargs)
            self._own_cluster = True
            address = self.cluster.scheduler_address
        elif hasattr(address, "scheduler_address"):
            self.cluster = address
            address = address.scheduler_address
        sync(self.loop, self._connect(address), None)

    async def _start(self) -> Client:
        if self._starting is not None and self._starting is not asyncio.current_task():
            return await self._starting
        if self.status == "running":
            return self
        self.loop = asyncio.get_running_loop()
        address = self._address_arg
        if address is None:
            from distributary.deploy.local import LocalCluster

            self.cluster = await LocalCluster(asynchronous=True, **self._cluster_kwargs)
            self._own_cluster = True
            address = self.cluster.scheduler_address
        elif hasattr(address, "scheduler_address"):
            self.cluster = address
            address = address.scheduler_address
        await self._connect(address)
        return self

    async def _connect(self, address: str) -> None:
        self.scheduler_address = normalize_address(address)
        scheduler = getattr(self.cluster, "scheduler", None)  # in this process?
        if (
            getattr(scheduler, "inproc_address", None)
            and scheduler.address == self.scheduler_address
        ):
            self.pool.routes[self.scheduler_address] = scheduler.inproc_address
        route = self.pool.routes.get(self.scheduler_address, self.scheduler_address)
        comm = await connect(route, timeout=self._timeout, **self.pool.connection_args)
        await comm.write(rq.RegisterClient(self.id))
        reply = await asyncio.wait_for(comm.read(), self._timeout)
        try:
            self._scheduler_services = rq.decode_reply(rq.RegisterClient, reply).services
        except Exception as exc:
            await comm.close()
            raise RuntimeError(f"The scheduler refused this client: {exc}") from None
        self._outbox.stream = BatchedSend(comm)
        self._stream_task = asyncio.get_running_loop().create_task(self._read_stream(comm))
        self.status = "running"
        if self._set_as_default:
            registry.make_default(self)

    def __await__(self):
        return self._start().__await__()

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self._close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, timeout: Any = None) -> Any:
        """Close the client (and the LocalCluster it started, if any)."""
        if self.asynchronous:
            return self._close()
        if self._runner is None:  # (closed; the scheduler may have gone first)
            return None
        try:
            sync(self.loop, self._close(), parse_timedelta(timeout) if timeout else None)
        finally:
            if self._own_cluster and self.cluster is not None:
                self.cluster.close()
            if self._runner is not None:
                self._runner.release()
                self._runner = None
        return None

    async def _close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closing"
        await self._outbox.close()
        if self._stream_task is not None:
            self._stream_task.cancel()
        await self.pool.close()
        self._outbox.cancel_everything("client closed")
        if self.asynchronous and self._own_cluster and self.cluster is not None:
            await self.cluster.close()
        self.status = "closed"
        registry.leave(self)

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The default client of this process; ValueError if there is none (always
        without ``allow_global``: there is no client made current by a context)."""
        if not allow_global:
            raise ValueError("No clients found")
        return default_client()

    @property
    def asynchronous(self) -> bool:
        """Whether the methods of this client return awaitables (``asynchronous=True``)."""
        return self._asynchronous

    def sync(
        self,
        func: Callable,
        *args: Any,
        timeout: Any = None,
        asynchronous: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``func`` (a coroutine function) on the client's loop and return its result.

        An asynchronous client (or ``asynchronous=True``, to be awaited in the client's
        loop) returns the awaitable instead.
        """
        timeout = parse_timedelta(timeout) if timeout is not None else None
        if asynchronous is None:
            asynchronous = self.asynchronous
        if asynchronous or in_loop(self.loop):
            coro = func(*args, **kwargs)
            return asyncio.wait_for(coro, timeout) if timeout is not None else coro
        self._check_open()
        with out_of_the_pool_while_blocked():
            return sync(self.loop, func(*args, **kwargs), timeout)

    def _check_open(self) -> None:
        self._outbox.check_open()

    def _call_scheduler(self, msg: dict | rq.Request, **kwargs: Any) -> Any:
        """An rpc call to the scheduler (awaitable)."""
        return self.pool.call(self.scheduler_address, msg, **kwargs)

    @property
    def futures(self) -> dict[Any, FutureState]:
        """What this client knows of each key it holds, by key."""
        return self._core.futures

    # ------------------------------------------------------------------ the scheduler stream

    async def _read_stream(self, comm: Any) -> None:
        await read_messages(comm, TO_CLIENT, self.id, self._handle_reports)
        if self.status == "running":
            logger.warning("Lost the connection to the scheduler at %s", self.scheduler_address)
            self.status = "closed"
            self._outbox.cancel_everything("lost the connection to the scheduler")

    def _handle_reports(self, reports: list) -> None:
        done: list[FutureState] = []
        with self._outbox.lock:
            restarts = self._core.restarts
            for report in reports:
                done.extend(self._core.handle(report))
            restarted = self._core.restarts != restarts
        self._outbox.wake(done)
        if restarted:
            for event in self._restart_waiters:
                event.set()

    # ------------------------------------------------------------------ submit and map

    def submit(
        self,
        func: Callable,
        *args: Any,
        key: Any = None,
        workers: Any = None,
        resources: dict | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: Any = "100 ms",
        allow_other_workers: bool = False,
        actor: bool = False,
        actors: bool = False,
        pure: bool = True,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; return a Future of its result."""
        if not callable(func):
            raise TypeError(f"First argument to submit must be callable, got {func!r}")
        no_actors(actor or actors)
        if key is None:
            key = _make_key(func, args, kwargs, pure)
        options = task_options(workers, resources, retries, allow_other_workers)
        order = self._windows.priority(priority, fifo_timeout)
        return self._submit_calls(func, [args], [key], kwargs, order, options)[0]

    def map(
        self,
        func: Callable,
        *iterables: Iterable,
        key: Any = None,
        workers: Any = None,
        retries: int | None = None,
        resources: dict | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        fifo_timeout: Any = "100 ms",
        actor: bool = False,
        actors: bool = False,
        pure: bool = True,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """Run ``func`` over the items of one or more iterables; return a list of Futures.

        The tasks go to the scheduler ``batch_size`` at a time (by default
        ``distributed.client.graph-part-tasks``), so the first start while the rest are
        still being pickled.
        """
        if not callable(func):
            raise TypeError(f"First argument to map must be callable, got {func!r}")
        if not iterables:
            raise ValueError("map needs at least one iterable")
        no_actors(actor or actors)
        calls = list(zip(*iterables))
        if isinstance(key, list | tuple):
            if len(key) != len(calls):
                raise ValueError(f"map got {len(key)} keys for {len(calls)} calls")
            keys = list(key)
        else:
            name = key or funcname(func)
            if pure:
                func_token = tokenize(func)
                keys = [f"{name}-{tokenize(func_token, kwargs, *call)}" for call in calls]
            else:
                keys = [f"{name}-{uuid.uuid4().hex}" for _ in calls]
        options = task_options(workers, resources, retries, allow_other_workers)
        size = batch_size or part_size()
        order = self._windows.priority(priority, fifo_timeout)
        return self._submit_calls(func, calls, keys, kwargs, order, options, size)

    def _submit_calls(
        self,
        func: Callable,
        calls: list,
        keys: list,
        kwargs: dict,
        priority: tuple,
        options: dict,
        size: int = 1,
    ) -> list[Future]:
        """Send a task per call, ``size`` tasks per message; return their futures."""
        self._check_open()
        with self._outbox.lock:
            self._outbox.count_dropped()
            records, pending = self._core.submit(keys)
        todo = []
        seen = set()  # (a key given twice is sent once)
        for index, (args, key) in enumerate(zip(calls, keys)):
            if key in pending.wanted and key not in seen:
                seen.add(key)
                todo.append((index, args, key))

        def parts() -> Iterator[tuple[list[TaskSpec], list]]:
            for start in range(0, len(todo), size):
                tasks = []
                for index, args, key in todo[start : start + size]:
                    payload, deps = dumps_task(func, args, kwargs)
                    task = {"key": key, "payload": payload, "priority": (*priority, index)}
                    task.update(options)
                    if deps:
                        task["dependencies"] = tuple(deps)
                    tasks.append(TaskSpec(**task))
                yield tasks, [task.key for task in tasks]

        if todo:  # (each part goes out as soon as it is pickled)
            self._outbox.send_graph(pending, parts(), keys)
        return [Future(key, self, record) for key, record in zip(keys, records)]

    # ------------------------------------------------------------------ results

    def gather(
        self,
        futures: Any,
        errors: str = "raise",
        direct: bool | None = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Wait for futures (in any nesting of lists, tuples, dicts) and return their results.

        ``errors="skip"`` leaves out the futures that erred or were cancelled.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if isinstance(futures, Iterator):
            return (self.gather(f, errors=errors) for f in futures)
        return self.sync(self._transfer.gather, futures, errors=errors, asynchronous=asynchronous)

    # ------------------------------------------------------------------ scatter

    def scatter(
        self,
        data: Any,
        workers: Any = None,
        broadcast: bool = False,
        direct: bool | None = None,
        hash: bool = True,
        timeout: Any = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Move data to the workers; return Futures pointing to it.

        A list gives a list of futures, a dict a dict, a single object one future.  Each
        item goes to one of ``workers`` (all when None) in turn, or with ``broadcast`` to
        each of them (to that many, given a number).  The data always goes straight to
        the workers, whatever ``direct`` says (the scheduler never holds data).
        """
        # positionally: ``timeout=`` would be taken by ``sync`` itself
        scatter = self._transfer.scatter
        return self.sync(
            scatter, data, workers, broadcast, hash, timeout, asynchronous=asynchronous
        )

    # ------------------------------------------------------------------ control

    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
    ) -> Any:
        """Cancel futures: stop their tasks if nobody else wants them and release data."""
        return self.sync(
            self._cancel, futures, force=force, reason=reason, asynchronous=asynchronous
        )

    async def _cancel(self, futures: Any, force: bool = False, reason: str | None = None) -> None:
        keys = [f.key for f in collect_futures(futures)]
        self._check_open()
        with self._outbox.lock:
            done = self._core.cancel(keys, reason or "cancel", force)
        self._outbox.schedule_flush()
        self._outbox.wake(done)

    def retry(self, futures: Any, asynchronous: bool | None = None) -> Any:
        """Run erred futures' tasks again."""
        return self.sync(self._retry, futures, asynchronous=asynchronous)

    async def _retry(self, futures: Any) -> None:
        keys = [f.key for f in collect_futures(futures)]
        self._check_open()
        with self._outbox.lock:
            self._core.retry(keys)
        self._outbox.schedule_flush()

    # ------------------------------------------------------------------ dask graphs and collections

    def get(
        self,
        dsk: Any,
        keys: Any,
        workers: Any = None,
        allow_other_workers: bool | None = None,
        restrictions: dict | None = None,
        loose_restrictions: Any = None,
        resources: dict | None = None,
        sync: bool = True,
        asynchronous: bool | None = None,
        direct: bool | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Compute the ``keys`` of a dask graph on the cluster (dask's scheduler ``get``).

        ``keys`` may be nested lists; the results come back in the same shape.
        With ``sync=False`` the futures come back instead.  ``workers`` restricts every
        task; the older ``restrictions={key: workers}`` some, and ``loose_restrictions``
        names the keys whose restrictions are loose.
        """
        check_graph_options("get", actors, kwargs)
        return self._graphs.get(
            dsk,
            keys,
            sync=sync,
            asynchronous=asynchronous,
            workers=workers,
            allow_other_workers=allow_other_workers,
            per_key=per_key_restrictions(restrictions, loose_restrictions),
            resources=resources,
            retries=retries,
            priority=self._windows.priority(priority, fifo_timeout),
        )

    def compute(
        self,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        workers: Any = None,
        allow_other_workers: bool = False,
        resources: dict | None = None,
        retries: int = 0,
        priority: int = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
        traverse: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections; return a future per collection.

        A list gives a list; with ``sync=True`` the results instead of futures.
        """
        check_graph_options("compute", actors, kwargs)
        return self._graphs.compute(
            collections,
            sync=sync,
            optimize_graph=optimize_graph,
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            retries=retries,
            priority=self._windows.priority(priority, fifo_timeout),
            traverse=traverse,
        )

    def persist(
        self,
        collections: Any,
        optimize_graph: bool = True,
        workers: Any = None,
        allow_other_workers: bool | None = None,
        resources: dict | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections; return them backed by futures on the cluster."""
        check_graph_options("persist", actors, kwargs)
        return self._graphs.persist(
            collections,
            optimize_graph=optimize_graph,
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            retries=retries,
            priority=self._windows.priority(priority, fifo_timeout),
        )

    # ------------------------------------------------------------------ datasets

    def publish_dataset(
        self, *args: Any, name: Any = None, override: bool = False, **kwargs: Any
    ) -> Any:
        """Publish named datasets on the scheduler, for any client to get.

        ``publish_dataset(x=futures, y=collection)`` or ``publish_dataset(value,
        name="x")`` (several positional values are published as one tuple), or
        ``publish_dataset({"x": value})``.  The futures inside (and so their results,
        as long as the dataset exists) are kept by the cluster; values are not
        computed: persist a dask collection before publishing it.  Publishing a name
        that exists raises KeyError unless ``override=True``.
        """
        return self.sync(self._datasets.publish, args, name, override, kwargs)

    def get_dataset(self, name: Any, default: Any = NO_DEFAULT, **kwargs: Any) -> Any:
        """The dataset published as ``name`` (a list of names gives a list of datasets).

        Its futures belong to this client.  A missing name raises KeyError, unless a
        ``default`` is given, which is returned instead.
        """
        return self.sync(self._datasets.get, name, default)

    def list_datasets(self, **kwargs: Any) -> Any:
        """The names of the datasets published on the scheduler."""
        return self.sync(self._datasets.names)

    def unpublish_dataset(self, name: Any, **kwargs: Any) -> Any:
        """Remove the dataset ``name``; its data is freed unless someone else holds it."""
        return self.sync(self._datasets.unpublish, name)

    @property
    def datasets(self) -> Datasets:
        """The published datasets as a mapping: ``client.datasets["x"] = value``, ..."""
        return Datasets(self)

    # ------------------------------------------------------------------ the cluster

    scheduler_info = scheduler_method(introspection.scheduler_info)
    nthreads = scheduler_method(introspection.nthreads)
    ncores = nthreads

    def who_has(self, futures: Any = None, **kwargs: Any) -> Any:
        """The workers holding each future's data."""
        return self.sync(
            introspection.who_has, self._call_scheduler, futures, self.futures, **kwargs
        )

    has_what = scheduler_method(introspection.has_what)
    processing = scheduler_method(introspection.processing)
    nbytes = scheduler_method(introspection.nbytes)
    call_stack = scheduler_method(introspection.call_stack)
    get_versions = scheduler_method(introspection.get_versions)
    get_scheduler_logs = scheduler_method(introspection.get_scheduler_logs)
    get_worker_logs = scheduler_method(introspection.get_worker_logs)
    log_event = scheduler_method(introspection.log_event)
    get_events = scheduler_method(introspection.get_events)

    def story(self, *keys: Any) -> Any:
        """The scheduler's log of these keys' (or futures') transitions, oldest first."""
        return self.sync(introspection.story, self._call_scheduler, keys)

    @property
    def dashboard_link(self) -> str | None:
        """The URL of the dashboard's status page: the cluster's, or the one the
        scheduler serves ("" if none); None before the client connects."""
        link = getattr(self.cluster, "dashboard_link", None)
        if link or self.scheduler_address is None:
            return link
        return scheduler_dashboard_link(self.scheduler_address, self._scheduler_services)

    def restart(self, timeout: Any = 30, wait_for_workers: bool = True, **kwargs: Any) -> Any:
        """Restart the cluster: kill all work, delete all data, start new worker processes.

        Every future of this client is cancelled; the client stays usable.  Workers
        without a nanny are closed, and those of the client's LocalCluster (in-process
        workers) are started anew.  With ``wait_for_workers``, return once as many
        workers as had nannies are back (TimeoutError after ``timeout``).
        """
        return self.sync(
            cluster.restart,
            self._call_scheduler,
            timeout,
            wait_for_workers,
            self._restart_waiters,
            self._outbox.cancel_everything,
            self.cluster,
        )

    retire_workers = scheduler_method(cluster.retire_workers)

    run = scheduler_method(cluster.run)

    run_coroutine = run  # (dask.distributed's older name: run awaits coroutine functions)

    run_on_scheduler = scheduler_method(cluster.run_on_scheduler)

    register_plugin = scheduler_method(plugins.register_plugin)
    register_scheduler_plugin = scheduler_method(plugins.register_scheduler_plugin)
    register_worker_plugin = scheduler_method(plugins.register_worker_plugin)
    unregister_worker_plugin = scheduler_method(plugins.unregister_worker_plugin)
    unregister_scheduler_plugin = scheduler_method(plugins.unregister_scheduler_plugin)
    register_worker_callbacks = scheduler_method(plugins.register_worker_callbacks)
    upload_file = scheduler_method(plugins.upload_file)

    def write_scheduler_file(self, scheduler_file: str) -> None:
        """Write the scheduler's address to a JSON file that ``Client(scheduler_file=...)``,
        workers and nannies can read."""
        if self.scheduler_file is not None and self.scheduler_file == scheduler_file:
            return
        info = self.sync(introspection.scheduler_info, self._call_scheduler)
        cluster.write_scheduler_file(scheduler_file, self.scheduler_address, info)
        self.scheduler_file = scheduler_file

    wait_for_workers = scheduler_method(cluster.wait_for_workers)

    # ------------------------------------------------------------------ data, and the rest

    def replicate(
        self,
        futures: Any,
        n: int | None = None,
        workers: Any = None,
        branching_factor: int = 2,
        **kwargs: Any,
    ) -> Any:
        """Once done, copy the futures' data (worker to worker, a tree copy) onto ``n`` of
        ``workers`` (all when None): one copy on each when ``n`` is None, extra ones dropped."""
        return self.sync(self._placement.replicate, futures, n, workers, branching_factor, **kwargs)

    def rebalance(self, futures: Any = None, workers: Any = None, **kwargs: Any) -> Any:
        """Even out the bytes held among ``workers`` (all when None) by moving the data of
        ``futures`` (any when None) from workers holding more than the mean to the others."""
        return self.sync(self._placement.rebalance, futures, workers, **kwargs)

    set_metadata = scheduler_method(data.set_metadata)
    get_metadata = scheduler_method(data.get_metadata)

    def get_executor(self, **kwargs: Any) -> ClientExecutor:
        """A concurrent.futures Executor running calls here with ``kwargs`` (of ``submit``)."""
        return ClientExecutor(self, **kwargs)

    get_futures_error = scheduler_method(replay.get_futures_error)

    def recreate_error_locally(self, future: Any) -> Any:
        """Run the task that made ``future`` fail here, with its inputs fetched: it raises
        the same exception in this thread, where a debugger can step in."""
        args = (self._call_scheduler, self, self._transfer.gather, future)
        if self.asynchronous:
            return replay.recreate_error_locally(*args)
        return self.sync(replay.erred_call, *args)()

    def normalize_collection(self, collection: Any) -> Any:
        """``collection`` with the tasks this client holds futures of replaced by those."""
        return data.normalize_collection(self, set(self._core.futures), collection)

    get_restrictions = staticmethod(data.get_restrictions)

    def shutdown(self) -> Any:
        """Shut the scheduler and its workers down (through the client's cluster if it has
        one), then close this client."""
        if self.asynchronous:
            return cluster.shutdown(self._call_scheduler, self.cluster, self._close)
        self.sync(cluster.shutdown, self._call_scheduler, self.cluster, self._close)
        return self.close()

    def start(self, timeout: Any = None) -> None:
        """Start connecting an ``asynchronous=True`` client not awaited yet (in the running
        event loop: ``await client`` waits for it); a started client is left as it is."""
        if self.status == "newly-created" and self._starting is None:
            self._timeout = parse_timedelta(timeout) if timeout is not None else self._timeout
            self._starting = asyncio.ensure_future(self._start())

    # ------------------------------------------------------------------ for its futures

    def _acquire(self, key: Any) -> FutureState:
        return self._outbox.acquire(key)

    def _drop(self, key: Any) -> None:
        self._outbox.drop(key)

    def _send(self, cls: type[FromClient], **fields: Any) -> None:
        self._outbox.send(cls, **fields)

    async def _wait_for(self, record: FutureState) -> None:
        await self._outbox.wait_for(record)

    async def _gather_one(self, future: Future) -> Any:
        return await self._transfer.gather_one(future)

    def _add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        self._outbox.add_done_callback(future, fn)

    get_task_stream = scheduler_method(diagnostics.get_task_stream)
    profile = scheduler_method(diagnostics.profile)
    start_ipython_scheduler = ipython.start_ipython_scheduler
    start_ipython_workers = ipython.start_ipython_workers

    _repr_html_ = client_html  # (the notebook's HTML: widgets/reprs.py)

    def __repr__(self) -> str:
        where = self.scheduler_address or "not connected"
        return f"<Client: {where!r} status={self.status}>"


def _make_key(func: Callable, args: tuple, kwargs: dict, pure: bool) -> str:
    if pure:
        return f"{funcname(func)}-{tokenize(func, kwargs, *args)}"
    return f"{funcname(func)}-{uuid.uuid4().hex}"
