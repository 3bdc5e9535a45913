"""SpecCluster: a scheduler and workers made from specifications, kept as specified.

Theory of operation
-------------------
*Specs.*  A spec is ``{"cls": a class (or its dotted name), "options": {...}}``, with
``"group": [suffixes]`` when one entry starts several workers (named ``name +
suffix``).  ``worker_spec`` maps worker names to specs; the ``worker=`` spec is the
template of new workers.  :meth:`SpecCluster._correct_state` starts and closes workers
until the running ones (``workers``) match ``worker_spec``; :meth:`SpecCluster.scale`
only edits the spec, then corrects the state.  A worker that goes away is retired at
the scheduler first, so that its data moves to the workers that stay.

*The scheduler.*  It runs in this process (a :class:`~distributary.Scheduler`) or
elsewhere (any class with the :class:`~distributary.deploy.process.ProcessInterface`
shape, such as SSHCluster's).  The cluster talks to it with requests, in either case;
of a scheduler elsewhere it keeps the worker table up to date with a long poll
(``watch_workers``), and reads it straight from the scheduler in this process.

*Workers that end.*  The cluster waits for each worker object's end (``finished()``):
one that closed, for whatever reason, leaves ``workers``.  Its spec stays (the plan),
so that the next correction starts it anew, as after a restart, unless its nanny
gave up on it (its ``failure``), which the cluster logs and drops from the plan.

*Loops.*  In blocking mode everything runs on the shared background loop of
:class:`~distributary.utils.loop.LoopRunner`, released when the cluster closes; in
asynchronous mode on the caller's loop.  A cluster nobody closed is closed when it is
garbage collected or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, parse_bytes, parse_timedelta

from distributary.core import ConnectionPool
from distributary.dashboard.address import scheduler_dashboard_link
from distributary.deploy.logs import Log, Logs, log_text
from distributary.deploy.specs import check_spec, member_names, resolve, spec_names, whole
from distributary.node import parse_memory_limit
from distributary.protocol import deploy as rq_d
from distributary.protocol import introspection as rq_i
from distributary.protocol import requests as rq
from distributary.scheduler.server import Scheduler
from distributary.security import as_security
from distributary.utils.loop import LoopRunner
from distributary.utils.process import cpu_count

if TYPE_CHECKING:
    from distributary.deploy.adaptive import Adaptive

logger = logging.getLogger("distributary.deploy")

_EXIT_CLOSE_TIMEOUT = 10.0  # seconds a forgotten cluster may take to close at exit
_RETIRE_TIMEOUT = 60.0  # seconds for the scheduler to move a leaving worker's data
_WATCH_TIMEOUT = 10.0  # seconds of one long poll of the worker table
_GONE = ("closing", "closed", "failed")  # statuses of worker objects that are replaced


class SpecCluster:
    """A cluster made from a full specification of its scheduler and workers.

    ``scheduler`` and each value of ``workers`` (a dict by worker name) are specs:
    ``{"cls": Scheduler, "options": {...}}``, ``{"cls": Worker or Nanny or any class with
    their interface, "options": {...}}``; ``worker`` is the spec of the new workers that
    :meth:`scale` adds.  ``cluster.worker_spec`` is the plan, ``cluster.workers`` the
    worker objects running.  Use ``asynchronous=True`` and ``await`` (or ``async
    with``) inside an event loop; close it with ``close()`` or a ``with`` block.
    ``silence_logs`` is a logging level for distributary's loggers while it runs;
    ``shutdown_on_close=False`` leaves a cluster nobody closed running at interpreter
    exit, and ``shutdown_scheduler=False`` the scheduler when the cluster closes.
    """

    def __init__(
        self,
        workers: dict | None = None,
        scheduler: dict | None = None,
        worker: dict | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        security: Any = None,
        silence_logs: int | bool = False,
        name: str | None = None,
        shutdown_on_close: bool = True,
        shutdown_scheduler: bool = True,
    ):
        self.security = as_security(security, type(self).__name__, temporary=True)
        self.scheduler_spec = check_spec(
            scheduler or {"cls": Scheduler, "options": {"dashboard": True}}, "scheduler"
        )
        self.worker_spec: dict[Any, dict] = {
            key: check_spec(spec, f"worker {key!r}") for key, spec in (workers or {}).items()
        }
        self.new_spec = None if worker is None else check_spec(worker, "worker=")
        if security not in (None, False):  # (every server of the cluster gets it)
            for spec in (self.scheduler_spec, *self.worker_spec.values(), self.new_spec):
                if spec is not None:
                    spec["options"] = {"security": self.security, **spec.get("options", {})}
        self.name = name if name is not None else uuid.uuid4().hex[:8]
        self.asynchronous = asynchronous
        self.shutdown_on_close = shutdown_on_close
        self.shutdown_scheduler = shutdown_scheduler
        self.status = "created"
        self.scheduler: Any = None
        self.workers: dict[Any, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._i = 0  # the number of the next new worker's name
        self._silence_logs = silence_logs
        self._old_log_level: int | None = None
        self._pool: ConnectionPool | None = None
        self._table = rq_d.WorkerTable(-1, {"workers": {}, "services": {}})
        self._background: set[asyncio.Task] = set()
        self._running_specs: dict[Any, dict] = {}  # the spec each worker object started with
        self._cluster_manager_logs: list[tuple[datetime.datetime, str]] = []
        self._adaptive: Adaptive | None = None
        self._runner: LoopRunner | None = None
        self._lock: asyncio.Lock | None = None
        self._closed: asyncio.Event | None = None
        self._finalizer: weakref.finalize | None = None
        if not asynchronous:
            self._runner = LoopRunner.acquire()
            self.loop = self._runner.loop
            try:
                self._runner.run(self._start())
            except BaseException:
                self._release_runner()
                raise

    # ------------------------------------------------------------------ properties

    @property
    def scheduler_address(self) -> str:
        """Where clients and workers reach the scheduler."""
        if self.scheduler is None or self.scheduler.status != "running":
            return "<Not Connected>"
        return self.scheduler.address

    @property
    def scheduler_info(self) -> dict:
        """The scheduler's identity: its address, services and workers (by address)."""
        if isinstance(self.scheduler, Scheduler) and self.scheduler.status == "running":
            return self.scheduler.identity()
        return self._table.identity

    @property
    def dashboard_link(self) -> str:
        """The address of the scheduler's dashboard, ``""`` if it has none."""
        if isinstance(self.scheduler, Scheduler):
            return self.scheduler.dashboard_link
        if self.scheduler_address.startswith("<"):
            return ""
        services = self.scheduler_info.get("services", {})
        return scheduler_dashboard_link(self.scheduler_address, services)

    @property
    def plan(self) -> set:
        """The names of the workers the spec asks for (group members each)."""
        return set(member_names(self.worker_spec))

    @property
    def requested(self) -> set:
        """The names of the workers started and still asked for."""
        return set(member_names({k: v for k, v in self.worker_spec.items() if k in self.workers}))

    @property
    def observed(self) -> set:
        """The names of the workers registered with the scheduler."""
        return {info["name"] for info in self.scheduler_info["workers"].values()}

    # ------------------------------------------------------------------ start and close

    async def _start(self) -> SpecCluster:
        if self.status != "created":
            if self.status == "starting":
                raise RuntimeError("The cluster is already starting")
            if self.status in ("closing", "closed"):
                raise RuntimeError(f"{self!r} is closed")
            return self
        self.status = "starting"
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        if self._silence_logs:
            distributary_logger = logging.getLogger("distributary")
            self._old_log_level = distributary_logger.level
            level = logging.WARNING if self._silence_logs is True else self._silence_logs
            distributary_logger.setLevel(level)
        try:
            spec = self.scheduler_spec
            self.scheduler = resolve(spec["cls"])(**spec.get("options", {}))
            if self.shutdown_on_close:
                self._finalizer = weakref.finalize(
                    self, _close_forgotten, self._runner, self.scheduler, self.workers
                )
            await self.scheduler
            self._pool = ConnectionPool(
                role="cluster", connection_args=self.security.get_connection_args("client")
            )
            inproc = getattr(self.scheduler, "inproc_address", None)
            if inproc:
                self._pool.routes[self.scheduler.address] = inproc
            if not isinstance(self.scheduler, Scheduler):
                self._table = await self._call(rq_d.WatchWorkers())
                self._background_task(
                    _watch_workers(weakref.ref(self), self._pool, self.scheduler.address)
                )
            await self._correct_state_now()
        except BaseException:
            await self._close()
            raise
        if self.status == "starting":  # not closed meanwhile
            self.status = "running"
        return self

    async def _call(self, request: rq.Request, timeout: float | None = None) -> Any:
        if self._pool is None:
            raise RuntimeError(f"{self!r} has not started")
        return await self._pool.call(self.scheduler.address, request, timeout=timeout)

    def _update_table(self, table: rq_d.WorkerTable) -> None:
        self._table = table

    def close(self, timeout: Any = None) -> Any:
        """Close the workers, then the scheduler (awaitable when asynchronous)."""
        if self.asynchronous:
            return self._close(timeout)
        if self._runner is None:
            return None
        try:
            self._runner.run(self._close(timeout))
        finally:
            self._release_runner()
        return None

    async def _close(self, timeout: Any = None) -> None:
        if self.status == "closed":
            return
        if self.status == "closing" and self._closed is not None:
            await self._closed.wait()
            return
        self.status = "closing"
        if self._adaptive is not None:
            self._adaptive.stop(reason="cluster-closing")
        seconds = parse_timedelta(timeout) if timeout is not None else None
        try:
            await asyncio.wait_for(self._close_all(), seconds)
        except asyncio.TimeoutError:
            _kill_processes(self.workers)
            raise TimeoutError(f"{self!r} did not close within {seconds} s") from None
        finally:
            self.workers.clear()
            if self._finalizer is not None:
                self._finalizer.detach()
            if self._old_log_level is not None:
                logging.getLogger("distributary").setLevel(self._old_log_level)
            self.status = "closed"
            if self._closed is not None:
                self._closed.set()

    async def _close_all(self) -> None:
        tasks = [t for t in self._background if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._lock is not None:
            async with self._lock:  # no worker may be starting meanwhile
                await _close_nodes(self.workers.values())
        if self._pool is not None:
            await self._pool.close()
        if self.scheduler is not None and self.shutdown_scheduler:
            await self.scheduler.close()

    def _release_runner(self) -> None:
        if self._runner is not None:
            self._runner.release()
            self._runner = None
        self.status = "closed"

    def __enter__(self) -> SpecCluster:
        if self.asynchronous:
            raise TypeError(f"An asynchronous {type(self).__name__} needs `async with`")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> SpecCluster:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self._close()

    def __await__(self):
        async def start() -> SpecCluster:
            await self._start()
            await self._correct_state_now()
            return self

        return start().__await__()

    def _sync(self, coro: Coroutine) -> Any:
        """Run ``coro``: awaitable when asynchronous, else until done."""
        if self.asynchronous:
            return asyncio.ensure_future(coro)
        if self._runner is None:
            coro.close()
            raise RuntimeError(f"{self!r} is closed")
        return self._runner.run(coro)

    def _background_task(self, coro: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ scaling

    def _threads_per_worker(self) -> int:
        """Threads of each new worker (``nthreads`` of the ``worker`` spec, else the cores)."""
        options = self._new_spec_or_error("cores=").get("options", {})
        for key in ("nthreads", "ncores", "threads", "cores"):
            if options.get(key):
                return int(options[key])
        return cpu_count()

    def _memory_per_worker(self) -> int:
        """Bytes of memory of each new worker (``memory_limit`` of the ``worker`` spec)."""
        options = self._new_spec_or_error("memory=").get("options", {})
        limit = options.get("memory_limit", options.get("memory", "auto"))
        memory = parse_memory_limit(limit, self._threads_per_worker())
        if not memory:
            raise ValueError("scale(memory=...) needs workers with a memory_limit")
        return memory

    def _new_spec_or_error(self, what: str) -> dict:
        if self.new_spec is None:
            raise ValueError(
                f"{type(self).__name__} has no worker= spec to make new workers from ({what})"
            )
        return self.new_spec

    def _workers_for(self, n: int, memory: str | int | None, cores: int | None) -> int:
        n = whole(n, "n")
        if memory is not None:
            n = max(n, math.ceil(parse_bytes(memory) / self._memory_per_worker()))
        if cores is not None:
            n = max(n, math.ceil(whole(cores, "cores") / self._threads_per_worker()))
        return n

    def scale(self, n: int = 0, memory: str | int | None = None, cores: int | None = None) -> Any:
        """Run ``n`` workers (or enough for ``memory`` bytes or ``cores`` threads).

        Workers that go are retired first (their data moves to those that stay).
        Blocking mode returns when the workers have started or closed; asynchronous
        mode returns an awaitable that does.  A worker that fails to start raises its
        error here and leaves the plan.
        """
        n = self._workers_for(n, memory, cores)
        return self._sync(self._scale(n))

    async def _scale(
        self, n: int, memory: str | int | None = None, cores: int | None = None
    ) -> None:
        n = self._workers_for(n, memory, cores)
        if len(self.worker_spec) > n:
            not_yet_launched = set(self.worker_spec) - self.observed - set(self.workers)
            for key in [k for k in self.worker_spec if k in not_yet_launched]:
                if len(self.worker_spec) <= n:
                    break
                del self.worker_spec[key]
        while len(self.worker_spec) > n:
            self.worker_spec.popitem()
        if self.status not in ("closing", "closed"):
            while len(self.worker_spec) < n:
                self.worker_spec.update(self.new_worker_spec())
        await self._correct_state_now()

    scale_up = scale

    def scale_down(self, workers: Iterable) -> Any:
        """Retire and close these workers (names or addresses) and leave them out of the
        plan (awaitable when asynchronous)."""
        return self._sync(self._scale_down(list(workers)))

    async def _scale_down(self, workers: list, only_retired: bool = False) -> None:
        """Take these workers out of the plan and close them, retired first; with
        ``only_retired``, those whose data could not move elsewhere stay."""
        names = spec_names(self.worker_spec, self.scheduler_info["workers"], workers)
        if only_retired and names:
            members = member_names({name: self.worker_spec[name] for name in names})
            request = rq.RetireWorkers(
                names=tuple(members), close_workers=False, remove=True, timeout=_RETIRE_TIMEOUT
            )
            await self._call(request, timeout=_RETIRE_TIMEOUT + 5)
            table = self.scheduler_info["workers"].values()
            staying = {str(info["name"]) for info in table if info["name"] in set(members)}
            names = [
                name
                for name in names
                if not staying & {str(m) for m in member_names({name: self.worker_spec[name]})}
            ]
        for name in names:
            self.worker_spec.pop(name, None)
        await self._correct_state_now()

    def _new_worker_name(self, worker_number: int) -> Any:
        """The name of the ``worker_number``-th new worker (a subclass may change it)."""
        return worker_number

    def new_worker_spec(self) -> dict:
        """The name and spec of the next new worker: ``{name: spec}``."""
        spec = self._new_spec_or_error("scale")
        name = self._new_worker_name(self._i)
        taken = {*self.worker_spec, *self.workers, *self.observed}
        while name in taken:
            self._i += 1
            name = self._new_worker_name(self._i)
        self._i += 1
        return {name: spec}

    def _correct_state(self) -> Awaitable[None]:
        """Start and close workers until they match ``worker_spec`` (a future)."""
        return asyncio.ensure_future(self._correct_state_now())

    async def _correct_state_now(self) -> None:
        if self._lock is None:  # not started: the spec applies when it starts
            return
        async with self._lock:
            if self.status in ("closing", "closed"):
                return
            gone = [name for name, node in self.workers.items() if node.status in _GONE]
            if gone:
                await _close_nodes(self.workers.pop(name) for name in gone)
            to_close = [name for name in self.workers if name not in self.worker_spec]
            if to_close:
                await self._retire(to_close)
                await _close_nodes(self.workers.pop(name) for name in to_close)
            to_open = [name for name in self.worker_spec if name not in self.workers]
            errors = []
            for name in to_open:
                try:
                    self.workers[name] = self._make_worker(name, self.worker_spec[name])
                except Exception as exc:
                    errors.append(_noted(exc, name))
                    del self.worker_spec[name]
            to_start = [name for name in to_open if name in self.workers]
            results = await asyncio.gather(
                *(_start_node(self.workers[name]) for name in to_start), return_exceptions=True
            )
        for name, result in zip(to_start, results):
            if isinstance(result, BaseException):
                node = self.workers.pop(name, None)
                self.worker_spec.pop(name, None)
                if node is not None:
                    await _close_nodes([node])
                errors.append(_noted(result, name))
            else:
                self._watch_node(name, self.workers[name])
        if errors:
            raise errors[0]

    def _make_worker(self, name: Any, spec: dict) -> Any:
        options = dict(spec.get("options", {}))
        options.setdefault("name", name)
        node = resolve(spec["cls"])(self.scheduler.address, **options)
        self._running_specs[name] = spec
        return node

    async def _retire(self, names: list) -> None:
        """Move the data of the workers leaving to those that stay (if any stay)."""
        if len(names) >= len(self.workers) or self.scheduler.status != "running":
            return
        request = rq.RetireWorkers(
            names=tuple(member_names({name: self._running_specs.get(name, {}) for name in names})),
            close_workers=False,
            remove=True,
            timeout=_RETIRE_TIMEOUT,
        )
        try:
            await self._call(request, timeout=_RETIRE_TIMEOUT + 5)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.warning("Could not retire workers %s before closing them: %r", names, exc)

    def _watch_node(self, name: Any, node: Any) -> None:
        """When a worker object ends by itself, it leaves ``workers``."""
        finished = getattr(node, "finished", None)
        if finished is not None:
            self._background_task(_node_finished(weakref.ref(self), name, node, finished))

    def _node_finished(self, name: Any, node: Any) -> None:
        if self.workers.get(name) is not node or self.status != "running":
            return
        del self.workers[name]
        self._running_specs.pop(name, None)
        failure = getattr(node, "failure", None)
        if failure:
            self.worker_spec.pop(name, None)
            self._log(f"Worker {name!r} failed and left the cluster: {failure}", logging.ERROR)
        else:
            self._log(f"Worker {name!r} closed", logging.INFO)

    def wait_for_workers(self, n_workers: int, timeout: Any = None) -> Any:
        """Wait until at least ``n_workers`` workers are registered with the scheduler;
        TimeoutError after ``timeout``."""
        whole(n_workers, "n_workers")
        return self._sync(self._wait_for_workers(n_workers, timeout))

    async def _wait_for_workers(self, n_workers: int, timeout: Any = None) -> None:
        if self.status in ("closing", "closed") or self._pool is None:
            raise RuntimeError(f"{self!r} is closed")
        await self._call(rq.WaitForWorkers(n_workers, timeout))

    # ------------------------------------------------------------------ adaptivity

    def adapt(
        self,
        *args: Any,
        minimum: float = 0,
        maximum: float = math.inf,
        minimum_cores: int | None = None,
        maximum_cores: int | None = None,
        minimum_memory: str | None = None,
        maximum_memory: str | None = None,
        **kwargs: Any,
    ) -> Adaptive:
        """Scale the cluster with the load, between ``minimum`` and ``maximum`` workers
        (or as many as ``*_cores`` threads or ``*_memory`` bytes ask for); the other
        keywords go to :class:`~distributary.Adaptive` (``interval``,
        ``target_duration``, ``wait_count``, ...), or to the Adaptive class given first
        (or as ``Adaptive=``).  Returns the Adaptive, running."""
        from distributary.deploy.adaptive import Adaptive

        if len(args) > 1:
            raise TypeError("adapt() takes at most one positional argument (an Adaptive class)")
        cls = args[0] if args else kwargs.pop("Adaptive", Adaptive)
        if minimum_cores is not None:
            minimum = max(minimum, math.ceil(minimum_cores / self._threads_per_worker()))
        if minimum_memory is not None:
            minimum = max(
                minimum, math.ceil(parse_bytes(minimum_memory) / self._memory_per_worker())
            )
        if maximum_cores is not None:
            maximum = min(maximum, math.floor(maximum_cores / self._threads_per_worker()))
        if maximum_memory is not None:
            maximum = min(
                maximum, math.floor(parse_bytes(maximum_memory) / self._memory_per_worker())
            )
        adaptive = cls(self, minimum=minimum, maximum=maximum, **kwargs)
        if self._adaptive is not None:
            self._adaptive.stop(reason="replaced")
        self._adaptive = adaptive
        return adaptive

    # ------------------------------------------------------------------ logs

    def _log(self, message: str, level: int = logging.INFO) -> None:
        """Keep ``message`` in the cluster manager's log (``get_logs()["Cluster"]``)."""
        self._cluster_manager_logs.append((datetime.datetime.now(), message))
        logger.log(level, "%s: %s", self.name, message)

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: Any = True) -> Any:
        """The logs of the cluster manager, the scheduler and the workers (all, or
        those named: addresses or names), by part (awaitable when asynchronous)."""
        return self._sync(self._get_logs(cluster, scheduler, workers))

    async def _get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: Any = True
    ) -> Logs:
        logs = Logs()
        if cluster:
            logs["Cluster"] = Log(
                "\n".join(
                    f"{when:%Y-%m-%d %H:%M:%S} {line}" for when, line in self._cluster_manager_logs
                )
            )
        if scheduler:
            logs["Scheduler"] = log_text(await self._call(rq_i.GetLogs()))
        if workers:
            named = None if workers is True else tuple(workers)
            for address, records in (await self._call(rq_i.WorkerLogs(None, named))).items():
                logs[address] = log_text(records)
        return logs

    # ------------------------------------------------------------------ display

    def _worker_rows(self) -> list[dict]:
        return [
            {
                "name": info["name"],
                "address": address,
                "nthreads": info["nthreads"],
                "memory_limit": info["memory_limit"],
                "status": info.get("status"),
            }
            for address, info in self.scheduler_info["workers"].items()
        ]

    def __repr__(self) -> str:
        rows = self._worker_rows() if self.status == "running" else []
        text = (
            f"{type(self).__name__}({self.name}, {self.scheduler_address!r}, "
            f"workers={len(rows)}, threads={sum(row['nthreads'] for row in rows)}"
        )
        memory = [row["memory_limit"] for row in rows]
        if memory and all(memory):
            text += f", memory={format_bytes(sum(memory))}"
        return text + ")"

    def _repr_html_(self) -> str:
        from distributary.widgets import render

        adaptive = self._adaptive
        if adaptive is not None and adaptive.state in ("starting", "running"):
            scaling = f"Adaptive: minimum={adaptive.minimum}, maximum={adaptive.maximum}"
        else:
            scaling = "Manual"
        return render(
            "cluster.html.j2",
            type=type(self).__name__,
            name=self.name,
            status=self.status,
            scheduler_address=self.scheduler_address,
            dashboard_link=self.dashboard_link,
            workers=self._worker_rows() if self.status == "running" else [],
            details=[("Scaling", scaling)],
        )


def _noted(exc: BaseException, name: Any) -> BaseException:
    exc.add_note(f"(while starting worker {name!r} of the cluster)")
    return exc


async def _node_finished(
    ref: weakref.ref, name: Any, node: Any, finished: Callable[[], Awaitable]
) -> None:
    """Tell the cluster (if it is still there) when a worker object has ended."""
    await finished()
    cluster = ref()
    if cluster is not None:
        cluster._node_finished(name, node)


async def _watch_workers(ref: weakref.ref, pool: ConnectionPool, address: str) -> None:
    """Keep the worker table of a scheduler elsewhere up to date, for as long as the
    cluster (held weakly: it may be collected meanwhile) is there and running."""
    while True:
        cluster = ref()
        if cluster is None or cluster.status not in ("starting", "running"):
            return
        version = cluster._table.version
        del cluster
        request = rq_d.WatchWorkers(version, _WATCH_TIMEOUT)
        try:
            table = await pool.call(address, request, timeout=_WATCH_TIMEOUT + 5)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info("Could not read the worker table of the scheduler: %r", exc)
            await asyncio.sleep(1)
            continue
        cluster = ref()
        if cluster is not None:
            cluster._update_table(table)


async def _start_node(node: Any) -> None:
    await node


async def _close_nodes(nodes: Any) -> None:
    results = await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("Error while closing a worker: %r", result)


def _kill_processes(workers: dict) -> None:
    """Last resort: SIGKILL the worker processes of nannies, blocking."""
    for worker in workers.values():
        process = getattr(worker, "process", None)
        if process is not None and hasattr(process, "kill_now"):
            process.kill_now()


def _close_forgotten(runner: LoopRunner | None, scheduler: Any, workers: dict) -> None:
    """Close a cluster that was garbage collected or left open at exit, without hanging."""
    if runner is not None:

        async def close_all() -> None:
            await _close_nodes(workers.values())
            await scheduler.close()

        try:
            runner.run(close_all(), _EXIT_CLOSE_TIMEOUT)
        except Exception as exc:  # e.g. collected on the loop's own thread
            logger.debug("Could not close a forgotten cluster cleanly: %r", exc)
        runner.release()
    _kill_processes(workers)
