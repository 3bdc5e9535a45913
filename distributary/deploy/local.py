"""LocalCluster: a scheduler and workers on this machine, in threads or in processes.

It is a :class:`~distributary.deploy.spec.SpecCluster` whose specs it makes from
dask.distributed's keywords (``n_workers``, ``threads_per_worker``, ``processes``,
...): a Scheduler, and Nannies (worker processes) or Workers (threads of this process).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from distributary.deploy.spec import SpecCluster
from distributary.nanny.server import Nanny
from distributary.node import parse_memory_limit
from distributary.scheduler.server import Scheduler
from distributary.security import as_security
from distributary.utils.keywords import LOCAL_CLUSTER_NOT_YET, check_keywords
from distributary.utils.process import cpu_count
from distributary.worker.server import Worker


class LocalCluster(SpecCluster):
    """A scheduler and workers on this machine.

    ``LocalCluster(n_workers=..., threads_per_worker=..., processes=...)`` starts them
    and returns when every worker is registered; workers run in separate processes
    (each under a :class:`~distributary.Nanny`) unless ``processes=False``.  Use
    ``asynchronous=True`` and ``await`` (or ``async with``) inside an event loop.
    Close it with ``close()`` or a ``with`` block.  Its scheduler serves the dashboard on
    ``dashboard_address`` (``None``: no dashboard); ``loop`` is accepted and not used.
    Scale it with :meth:`~SpecCluster.scale` or :meth:`~SpecCluster.adapt`.
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
        security = as_security(security, "LocalCluster", temporary=True)
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
        if protocol is None:
            if host and "://" in host:
                protocol = host.split("://")[0]
            elif security.require_encryption:
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
        worker_kwargs.update(
            host=host,
            nthreads=threads_per_worker,
            protocol=protocol,
            interface=interface,
            dashboard_address=worker_dashboard_address,
            silence_logs=silence_logs,
            security=security,
        )
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": host,
                "port": scheduler_port,
                "protocol": protocol,
                "interface": interface,
                "dashboard_address": dashboard_address,
                "security": security,
                "blocked_handlers": blocked_handlers,
                **(scheduler_kwargs or {}),
            },
        }
        worker = {"cls": worker_class, "options": worker_kwargs}
        super().__init__(
            workers={i: worker for i in range(n_workers)},
            scheduler=scheduler,
            worker=worker,
            asynchronous=asynchronous,
            security=security,
            silence_logs=silence_logs,
            name=name,
        )


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
