"""Client: submit work to a distributary cluster and get results back.

A blocking Client runs its asynchronous machinery on a background event-loop
thread (:class:`~distributary.utils.loop.LoopRunner`); with ``asynchronous=True``
it runs on the caller's loop and its methods return awaitables.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.config
from dask.base import tokenize
from dask.utils import funcname, parse_timedelta

from distributary.client.cluster import ClusterMixin
from distributary.client.collections import CollectionsMixin
from distributary.client.datasets import DatasetsMixin
from distributary.client.future import Future
from distributary.client.graphs import part_size
from distributary.client.outbox import OutboxMixin
from distributary.client.state import ClientState, FutureState
from distributary.client.structures import collect_futures, substitute_results
from distributary.comm import CommClosedError, connect
from distributary.comm.addressing import normalize_address
from distributary.core import BatchedSend, ConnectionPool
from distributary.exceptions import FutureLostError
from distributary.protocol.serialize import Serialize, deserialize
from distributary.protocol.tasks import dumps_task, register_reference_type
from distributary.utils.loop import LoopRunner, in_loop, sync

logger = logging.getLogger("distributary.client")

register_reference_type(Future)

_default_client: Client | None = None
# Every client that was made the default, by age: when the default closes, the most
# recent one still running takes over (as in dask.distributed).
_default_clients: weakref.WeakValueDictionary[int, Client] = weakref.WeakValueDictionary()
_default_counter = itertools.count()


def default_client() -> Client:
    """The client that ``dask.compute`` and friends use, or ValueError if none."""
    client = _default_client
    if client is None or client.status == "closed":
        running = [c for _, c in sorted(_default_clients.items()) if c.status == "running"]
        if not running:
            raise ValueError("No clients found. Start a client with Client(...) first")
        client = running[-1]
    return client


def get_client() -> Client:
    """The client to use here: the default client of this process."""
    return default_client()


# What dask.compute and friends use while a distributary client is the default; the
# settings that were there before come back when no default client is left.
_DASK_SETTINGS = ("scheduler", "dataframe.shuffle.method", "array.rechunk.method")
_dask_settings_before: dict | None = None


def _use_for_dask(client: Client | None) -> None:
    global _dask_settings_before
    if client is not None:
        if _dask_settings_before is None:
            _dask_settings_before = {k: dask.config.get(k, None) for k in _DASK_SETTINGS}
        dask.config.set(
            {
                "scheduler": client,
                "dataframe.shuffle.method": "tasks",
                "array.rechunk.method": "tasks",
            }
        )
    elif _dask_settings_before is not None:
        dask.config.set(_dask_settings_before)
        _dask_settings_before = None


class Client(CollectionsMixin, DatasetsMixin, ClusterMixin, OutboxMixin):
    """Connect to a cluster and submit computation to it.

    ``Client()`` starts a ``LocalCluster`` (closed with the client);
    ``Client("tcp://host:port")`` or ``Client(cluster)`` connects to a running one.
    """

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
        self.id = f"{name or 'Client'}-{uuid.uuid4()}"
        self.asynchronous = asynchronous
        self.status = "newly-created"
        self.cluster: Any = None
        self._own_cluster = False
        self._set_as_default = set_as_default
        self._cluster_kwargs = kwargs
        self._timeout = parse_timedelta(
            timeout if timeout is not None else dask.config.get("distributed.comm.timeouts.connect")
        )
        self._core = ClientState()
        self._lock = threading.RLock()  # around every call into ``_state``
        self._dropped: deque = deque()  # keys of Futures gone, not yet counted
        self._flush_scheduled = False
        self._restart_waiters: set[asyncio.Event] = set()  # set when a restart is reported
        self._graph_builder: ThreadPoolExecutor | None = None
        self._batched: BatchedSend | None = None
        self._stream_task: asyncio.Task | None = None
        self.pool = ConnectionPool(limit=connection_limit, role="client")
        self.scheduler_address: str | None = None
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
        global _default_client
        self.scheduler_address = normalize_address(address)
        scheduler = getattr(self.cluster, "scheduler", None)  # in this process?
        if (
            getattr(scheduler, "inproc_address", None)
            and scheduler.address == self.scheduler_address
        ):
            self.pool.routes[self.scheduler_address] = scheduler.inproc_address
        route = self.pool.routes.get(self.scheduler_address, self.scheduler_address)
        comm = await connect(route, timeout=self._timeout)
        await comm.write({"op": "register-client", "client": self.id, "reply": False})
        reply = await asyncio.wait_for(comm.read(), self._timeout)
        if reply.get("status") != "OK":
            await comm.close()
            raise RuntimeError(f"The scheduler refused this client: {reply}")
        self._batched = BatchedSend(comm)
        self._stream_task = asyncio.get_running_loop().create_task(self._read_stream(comm))
        self.status = "running"
        if self._set_as_default:
            _default_client = self
            _default_clients[next(_default_counter)] = self
            _use_for_dask(self)

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
        if self.status == "closed":
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
        global _default_client
        if self.status == "closed":
            return
        self.status = "closing"
        if self._batched is not None:
            await self._batched.close(timeout=2)
        if self._stream_task is not None:
            self._stream_task.cancel()
        await self.pool.close()
        if self._graph_builder is not None:
            self._graph_builder.shutdown(wait=False, cancel_futures=True)
        self._cancel_everything("client closed")
        if self.asynchronous and self._own_cluster and self.cluster is not None:
            await self.cluster.close()
        self.status = "closed"
        if _default_client is self:
            _default_client = None
        if dask.config.get("scheduler", None) is self:
            try:
                _use_for_dask(default_client())
            except ValueError:
                _use_for_dask(None)

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The default client of this process; ValueError if there is none."""
        return default_client()

    def sync(self, func: Callable, *args: Any, timeout: Any = None, **kwargs: Any) -> Any:
        """Run ``func`` (a coroutine function) on the client's loop and return its result.

        An asynchronous client returns the awaitable instead.
        """
        timeout = parse_timedelta(timeout) if timeout is not None else None
        if self.asynchronous or in_loop(self.loop):
            coro = func(*args, **kwargs)
            return asyncio.wait_for(coro, timeout) if timeout is not None else coro
        self._check_open()
        return sync(self.loop, func(*args, **kwargs), timeout)

    def _check_open(self) -> None:
        if self.status in ("closing", "closed"):
            raise RuntimeError(f"{self!r} is closed; start a new Client to submit work")

    @property
    def futures(self) -> dict[Any, FutureState]:
        """What this client knows of each key it holds, by key."""
        return self._core.futures

    # ------------------------------------------------------------------ the scheduler stream

    async def _read_stream(self, comm: Any) -> None:
        try:
            while True:
                msgs = await comm.read()
                if isinstance(msgs, dict):
                    msgs = (msgs,)
                done: list[FutureState] = []
                with self._lock:
                    restarts = self._core.restarts
                    for msg in msgs:
                        if isinstance(msg, dict):
                            done.extend(self._core.handle(msg))
                    restarted = self._core.restarts != restarts
                self._wake(done)
                if restarted:
                    for event in self._restart_waiters:
                        event.set()
        except CommClosedError:
            if self.status == "running":
                logger.warning("Lost the connection to the scheduler at %s", self.scheduler_address)
                self.status = "closed"
                self._cancel_everything("lost the connection to the scheduler")

    def _cancel_everything(self, reason: str) -> None:
        with self._lock:
            done = self._core.cancel_all(reason)
        self._wake(done)

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
        if key is None:
            key = _make_key(func, args, kwargs, pure)
        options = _task_options(workers, resources, retries, allow_other_workers)
        return self._submit_calls(func, [args], [key], kwargs, (-priority,), options)[0]

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
        options = _task_options(workers, resources, retries, allow_other_workers)
        size = batch_size or part_size()
        return self._submit_calls(func, calls, keys, kwargs, (-priority,), options, size)

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
        with self._lock:
            self._count_dropped()
            records, pending = self._core.submit(keys)
        todo = []
        seen = set()  # (a key given twice is sent once)
        for index, (args, key) in enumerate(zip(calls, keys)):
            if key in pending.wanted and key not in seen:
                seen.add(key)
                todo.append((index, args, key))

        def parts() -> Iterator[tuple[list[dict], list]]:
            for start in range(0, len(todo), size):
                tasks = []
                for index, args, key in todo[start : start + size]:
                    payload, deps = dumps_task(func, args, kwargs)
                    task = {"key": key, "payload": payload, "priority": (*priority, index)}
                    task.update(options)
                    if deps:
                        task["dependencies"] = tuple(deps)
                    tasks.append(task)
                yield tasks, [task["key"] for task in tasks]

        if todo:  # (each part goes out as soon as it is pickled)
            self._send_graph(pending, parts(), keys)
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
        return self.sync(self._gather, futures, errors=errors)

    async def _gather(self, futures: Any, errors: str = "raise") -> Any:
        found = collect_futures(futures)
        for future in found:
            await future._wait()
        bad = set()
        for future in found:
            if future.status == "finished":
                continue
            if errors == "raise":
                await future._result()
            bad.add(future.key)
        records = {f.key: f._state for f in found if f.key not in bad}
        data = await self._fetch(records)
        return substitute_results(futures, data, bad)

    async def _gather_one(self, future: Future) -> Any:
        return (await self._fetch({future.key: future._state}))[future.key]

    async def _fetch(self, records: dict[Any, FutureState]) -> dict:
        """Get the data of finished keys (``{key: record}``) from the workers holding it."""
        results: dict = {}
        missing = list(records)
        for attempt in range(10):
            by_worker: dict[str, list] = {}
            unknown = []
            for key in missing:
                workers = records[key].workers
                if workers:
                    by_worker.setdefault(workers[0], []).append(key)
                else:
                    unknown.append(key)
            if unknown:
                who_has = await self.pool.call(
                    self.scheduler_address, {"op": "who-has", "keys": unknown}
                )
                for key, holders in who_has.items():
                    if holders:
                        by_worker.setdefault(holders[0], []).append(key)
            replies = await asyncio.gather(
                *(self._get_data(worker, wanted) for worker, wanted in by_worker.items())
            )
            for reply in replies:
                results.update(reply)
            missing = [key for key in missing if key not in results]
            if not missing:
                return results
            for key in missing:
                records[key].workers = ()
            await asyncio.sleep(0.01 * 2**attempt)
            for key in missing:
                await self._wait_for(records[key])
                if records[key].status in ("error", "cancelled"):
                    raise FutureLostError(key)
        raise FutureLostError(missing[0])

    async def _get_data(self, worker: str, keys: list) -> dict:
        try:
            reply = await self.pool.call(worker, {"op": "get-data", "keys": keys})
        except OSError:
            return {}
        return {key: deserialize(value) for key, value in reply["data"].items()}

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

        A list gives a list of futures, a dict a dict, a single object one future.
        """
        # positionally: ``timeout=`` would be taken by ``sync`` itself
        return self.sync(self._scatter, data, workers, broadcast, hash, timeout)

    async def _scatter(
        self, data: Any, workers: Any, broadcast: bool, hash: bool, timeout: Any
    ) -> Any:
        self._check_open()
        if isinstance(data, dict):
            items = dict(data)
        else:
            single = not isinstance(data, list | tuple | set | frozenset | Iterator)
            values = [data] if single else list(data)
            names = [
                f"{type(v).__name__}-{tokenize(v) if hash else uuid.uuid4().hex}" for v in values
            ]
            items = dict(zip(names, values))
        targets = await self._scatter_targets(workers, broadcast, timeout)
        placement: dict[str, dict] = {}
        for i, (key, value) in enumerate(items.items()):
            for worker in targets if broadcast else [targets[i % len(targets)]]:
                placement.setdefault(worker, {})[key] = value
        who_has: dict = {}
        nbytes: dict = {}
        types: dict = {}
        for worker, chunk in placement.items():
            reply = await self.pool.call(
                worker,
                {"op": "update-data", "data": {k: Serialize(v) for k, v in chunk.items()}},
            )
            for key in chunk:
                who_has.setdefault(key, []).append(worker)
            nbytes.update(reply["nbytes"])
            types.update(reply["types"])
        self._check_open()
        with self._lock:
            self._count_dropped()
            done = self._core.scattered(who_has, nbytes, types)
            records, _ = self._core.claim(items)
        self._schedule_flush()
        self._wake(done)
        futures = {key: Future(key, self, record) for key, record in zip(items, records)}
        if isinstance(data, dict):
            return futures
        result = list(futures.values())
        return result[0] if single else result

    async def _scatter_targets(self, workers: Any, broadcast: bool, timeout: Any) -> list[str]:
        deadline = asyncio.get_running_loop().time() + (
            parse_timedelta(timeout) if timeout is not None else self._timeout
        )
        while True:
            info = await self._scheduler_info()
            available = info["workers"]
            if workers is not None:
                wanted = [workers] if isinstance(workers, str) else list(workers)
                by_name = {w["name"]: a for a, w in available.items()}
                targets = [by_name.get(w, w) for w in wanted]
                targets = [t for t in targets if t in available]
            else:
                targets = sorted(available)
            if targets:
                return targets
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("No workers to scatter data to")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ control

    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
    ) -> Any:
        """Cancel futures: stop their tasks if nobody else wants them and release data."""
        return self.sync(self._cancel, futures, force=force, reason=reason)

    async def _cancel(self, futures: Any, force: bool = False, reason: str | None = None) -> None:
        keys = [f.key for f in collect_futures(futures)]
        self._check_open()
        with self._lock:
            done = self._core.cancel(keys, reason or "cancel", force)
        self._schedule_flush()
        self._wake(done)

    def retry(self, futures: Any, asynchronous: bool | None = None) -> Any:
        """Run erred futures' tasks again."""
        return self.sync(self._retry, futures)

    async def _retry(self, futures: Any) -> None:
        keys = [f.key for f in collect_futures(futures)]
        self._check_open()
        with self._lock:
            self._core.retry(keys)
        self._schedule_flush()

    def _add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        def run() -> None:
            self.loop.run_in_executor(None, fn, future)

        def register() -> None:
            if future._state.done():
                run()
            else:
                future._state.callbacks.append(run)

        if in_loop(self.loop):
            register()
        else:
            self.loop.call_soon_threadsafe(register)

    def __repr__(self) -> str:
        where = self.scheduler_address or "not connected"
        return f"<Client: {where!r} status={self.status}>"


def _make_key(func: Callable, args: tuple, kwargs: dict, pure: bool) -> str:
    if pure:
        return f"{funcname(func)}-{tokenize(func, kwargs, *args)}"
    return f"{funcname(func)}-{uuid.uuid4().hex}"


def _task_options(workers: Any, resources: Any, retries: Any, allow_other_workers: bool) -> dict:
    options: dict = {}
    if workers is not None:
        options["workers"] = [workers] if isinstance(workers, str) else list(workers)
        options["allow_other_workers"] = allow_other_workers
    if resources:
        options["resources"] = dict(resources)
    if retries:
        options["retries"] = int(retries)
    return options
