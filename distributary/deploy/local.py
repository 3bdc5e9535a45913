"""LocalCluster: a scheduler and workers on this machine, in threads or in processes.

Theory of operation: the cluster keeps a *worker spec*, ``{name: {"cls": ..., "options":
...}}``, and :meth:`LocalCluster._correct_state` starts and closes workers until the
running ones match it; :meth:`LocalCluster.scale` only edits the spec.  In blocking
mode everything runs on the shared background loop of
:class:`~distributary.utils.loop.LoopRunner`, which the cluster releases when it closes;
in asynchronous mode it runs on the caller's loop.  A cluster nobody closed is closed
when it is garbage collected or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
import warnings
import weakref
from typing import Any

from dask.utils import format_bytes, parse_bytes, parse_timedelta

from distributary.nanny.server import Nanny
from distributary.node import parse_memory_limit
from distributary.scheduler.server import Scheduler
from distributary.security import as_security
from distributary.utils.keywords import LOCAL_CLUSTER_NOT_YET, check_keywords
from distributary.utils.loop import LoopRunner
from distributary.utils.process import cpu_count
from distributary.worker.server import Worker

logger = logging.getLogger("distributary.deploy")

_EXIT_CLOSE_TIMEOUT = 10.0  # seconds a forgotten cluster may take to close at exit
_GONE = ("closing", "closed")  # statuses of workers that are replaced


class LocalCluster:
    """A scheduler and workers on this machine.

    ``LocalCluster(n_workers=..., threads_per_worker=..., processes=...)`` starts them
    and returns when every worker is registered; workers run in separate processes
    (each under a :class:`~distributary.Nanny`) unless ``processes=False``.  Use
    ``asynchronous=True`` and ``await`` (or ``async with``) inside an event loop.
    Close it with ``close()`` or a ``with`` block.  ``loop`` and the dashboard
    addresses are accepted for compatibility and not used: there is no dashboard yet.
    """

    def __init__(
        self,
        name: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool | None = None,
        loop: Any = None,
        start: Any = None,
        host: str | None = None,
        ip: str | None = None,
        scheduler_port: int = 0,
        silence_logs: int | bool | None = logging.WARN,
        dashboard_address: str | None = ":8787",
        worker_dashboard_address: str | None = None,
        diagnostics_port: Any = None,
        services: dict | None = None,
        worker_services: dict | None = None,
        service_kwargs: dict | None = None,
        asynchronous: bool = False,
        security: Any = None,
        protocol: str | None = None,
        blocked_handlers: list | None = None,
        interface: str | None = None,
        worker_class: type | None = None,
        scheduler_kwargs: dict | None = None,
        **worker_kwargs: Any,
    ):
        not_yet = {
            "diagnostics_port": diagnostics_port,
            "services": services,
            "worker_services": worker_services,
            "service_kwargs": service_kwargs,
        }
        check_keywords("LocalCluster", not_yet, LOCAL_CLUSTER_NOT_YET)
        # security= (h-security): a Security, True for temporary credentials, or None
        self.security = security = as_security(security, "LocalCluster", temporary=True)
        if ip is not None:
            warnings.warn(
                "The `ip` parameter is deprecated; use `host`", DeprecationWarning, stacklevel=2
            )
            host = ip
        if start is not None:
            warnings.warn(
                "The `start` parameter is deprecated and has no effect",
                DeprecationWarning,
                stacklevel=2,
            )
        if processes is None:
            processes = worker_class is None or issubclass(worker_class, Nanny)
        if worker_class is None:
            worker_class = Nanny if processes else Worker
        self.processes = processes
        self.name = name if name is not None else uuid.uuid4().hex[:8]
        self.asynchronous = asynchronous
        self.status = "created"

        if protocol is None:
            if host and "://" in host:
                protocol = host.split("://")[0]
            elif security.require_encryption:  # (h-security)
                protocol = "tls"
            elif not processes and not scheduler_port:
                protocol = "inproc"
            else:
                protocol = "tcp"
        protocol = protocol.rstrip(":/")
        if host and "://" in host:
            host = host.split("://", 1)[1]
        if host is None and protocol != "inproc" and interface is None:
            host = "127.0.0.1"

        n_workers, threads_per_worker = _workers_and_threads(
            n_workers, threads_per_worker, processes
        )
        if n_workers and "memory_limit" not in worker_kwargs:
            worker_kwargs["memory_limit"] = parse_memory_limit(1 / n_workers, 1)
        self._threads_per_worker = threads_per_worker
        worker_kwargs.update(
            host=host,
            nthreads=threads_per_worker,
            protocol=protocol,
            interface=interface,
            dashboard_address=worker_dashboard_address,
            silence_logs=silence_logs,
            security=security,  # (h-security)
        )
        self.scheduler_spec = {
            "cls": Scheduler,
            "options": {
                "host": host,
                "port": scheduler_port,
                "protocol": protocol,
                "interface": interface,
                "dashboard_address": dashboard_address,
                "security": security,  # (h-security)
                "blocked_handlers": blocked_handlers,  # (h-security)
                **(scheduler_kwargs or {}),
            },
        }
        self.new_spec = {"cls": worker_class, "options": worker_kwargs}
        self.worker_spec: dict[Any, dict] = {i: self.new_spec for i in range(n_workers)}
        self._next_name = n_workers
        self._silence_logs = silence_logs
        self._old_log_level: int | None = None

        self.scheduler: Scheduler | None = None
        self.workers: dict[Any, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
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
    def dashboard_link(self) -> str:
        """The dashboard's address: ``''``, as there is no dashboard yet."""
        return ""

    # ------------------------------------------------------------------ start and close

    async def _start(self) -> LocalCluster:
        if self.status != "created":
            if self.status == "starting":
                raise RuntimeError("The cluster is already starting")
            return self
        self.status = "starting"
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        if self._silence_logs:
            distributary_logger = logging.getLogger("distributary")
            self._old_log_level = distributary_logger.level
            distributary_logger.setLevel(self._silence_logs)
        try:
            self.scheduler = self.scheduler_spec["cls"](**self.scheduler_spec["options"])
            self._finalizer = weakref.finalize(
                self, _close_forgotten, self._runner, self.scheduler, self.workers
            )
            await self.scheduler
            await self._correct_state()
        except BaseException:
            await self._close()
            raise
        if self.status == "starting":  # not closed meanwhile
            self.status = "running"
        return self

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
        if self._lock is not None:
            async with self._lock:  # no worker may be starting meanwhile
                await _close_nodes(self.workers.values())
        if self.scheduler is not None:
            await self.scheduler.close()

    def _release_runner(self) -> None:
        if self._runner is not None:
            self._runner.release()
            self._runner = None
        self.status = "closed"

    def __enter__(self) -> LocalCluster:
        if self.asynchronous:
            raise TypeError("An asynchronous LocalCluster needs `async with`")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> LocalCluster:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self._close()

    def __await__(self):
        return self._start().__await__()

    # ------------------------------------------------------------------ scaling

    def scale(self, n: int = 0, memory: str | int | None = None, cores: int | None = None) -> Any:
        """Run ``n`` workers (or enough for ``memory`` bytes or ``cores`` threads).

        Blocking mode returns when the workers have started or closed; asynchronous
        mode returns an awaitable that does.
        """
        threads = self._threads_per_worker or cpu_count()
        if memory is not None:
            limit = self.new_spec["options"].get("memory_limit", "auto")
            per_worker = parse_memory_limit(limit, threads)
            if per_worker:
                n = max(n, math.ceil(parse_bytes(memory) / per_worker))
        if cores is not None:
            n = max(n, math.ceil(cores / threads))
        while len(self.worker_spec) > n:
            self.worker_spec.popitem()
        if self.status not in ("closing", "closed"):
            while len(self.worker_spec) < n:
                self.worker_spec[self._next_name] = self.new_spec
                self._next_name += 1
        if self.asynchronous:
            return asyncio.ensure_future(self._correct_state())
        if self._runner is not None:
            self._runner.run(self._correct_state())
        return None

    async def _correct_state(self) -> None:
        """Start and close workers until they match ``worker_spec`` (a worker that closed,
        as a restart closes in-process workers, is started anew)."""
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
                await _close_nodes(self.workers.pop(name) for name in to_close)
            to_open = [name for name in self.worker_spec if name not in self.workers]
            for name in to_open:
                spec = self.worker_spec[name]
                self.workers[name] = spec["cls"](
                    self.scheduler.address, name=name, **spec["options"]
                )
            results = await asyncio.gather(
                *(self.workers[name].start() for name in to_open), return_exceptions=True
            )
        errors = []
        for name, result in zip(to_open, results):
            if isinstance(result, BaseException):
                self.workers.pop(name, None)
                self.worker_spec.pop(name, None)
                errors.append(result)
        if errors:
            raise errors[0]

    def wait_for_workers(self, n_workers: int, timeout: Any = None) -> Any:
        """Wait until at least ``n_workers`` workers are registered with the scheduler."""
        if self.asynchronous:
            return self._wait_for_workers(n_workers, timeout)
        if self._runner is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._runner.run(self._wait_for_workers(n_workers, timeout))

    async def _wait_for_workers(self, n_workers: int, timeout: Any = None) -> None:
        if self.scheduler is None or self.status in ("closing", "closed"):
            raise RuntimeError(f"{self!r} is closed")
        seconds = None if timeout is None else parse_timedelta(timeout)
        await self.scheduler.lifecycle.wait_for_workers(n_workers, seconds)

    # ------------------------------------------------------------------ display

    def _n_registered(self) -> int:
        return len(self.scheduler.state.workers) if self.scheduler is not None else 0

    def __repr__(self) -> str:
        records = list(self.scheduler.state.workers.values()) if self.scheduler else []
        text = (
            f"{type(self).__name__}({self.name}, {self.scheduler_address!r}, "
            f"workers={len(records)}, threads={sum(ws.nthreads for ws in records)}"
        )
        memory = [ws.memory_limit for ws in records]
        if memory and all(memory):
            text += f", memory={format_bytes(sum(memory))}"
        return text + ")"


def _workers_and_threads(
    n_workers: int | None, threads_per_worker: int | None, processes: bool
) -> tuple[int, int | None]:
    """dask.distributed's defaults: processes share the cores out, threads take them all."""
    cpus = cpu_count()
    if n_workers is None and threads_per_worker is None:
        if not processes:
            return 1, cpus
        if cpus <= 4:
            return cpus, 1
        n_workers = min(f for f in range(1, cpus + 1) if cpus % f == 0 and f * f >= cpus)
        return n_workers, cpus // n_workers
    if n_workers is None:
        n_workers = max(1, cpus // threads_per_worker) if processes else 1
    if threads_per_worker is None and n_workers:
        threads_per_worker = max(1, math.ceil(cpus / n_workers))  # rather too many than few
    return n_workers, threads_per_worker


async def _close_nodes(nodes: Any) -> None:
    results = await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("Error while closing a worker: %r", result)


def _kill_processes(workers: dict) -> None:
    """Last resort: SIGKILL the worker processes of nannies, blocking."""
    for worker in workers.values():
        process = getattr(worker, "process", None)
        if process is not None:
            process.kill_now()


def _close_forgotten(runner: LoopRunner | None, scheduler: Scheduler, workers: dict) -> None:
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
