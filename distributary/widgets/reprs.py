"""The notebook HTML (``_repr_html_``) of clients, futures, schedulers, workers and nannies.

Each function gathers what its template (``widgets/templates/*.html.j2``) shows and
renders it.  A repr never blocks for long and never fails: a client asks its
scheduler for the workers (within :data:`ASK_WITHIN` seconds) only when it may block;
otherwise it shows what it knows.  A server's ``dashboard_link``, where it has one, is
shown as a link.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from distributary.protocol import requests as rq
from distributary.utils.loop import in_loop, running_loop
from distributary.widgets import render

if TYPE_CHECKING:
    from distributary.client.client import Client
    from distributary.client.future import Future
    from distributary.nanny.server import Nanny
    from distributary.scheduler.server import Scheduler
    from distributary.worker.server import Worker

ASK_WITHIN = 2.0  # seconds a blocking client's repr waits for its scheduler


def worker_rows(workers: dict[str, dict]) -> list[dict]:
    """Rows of a workers table from ``{address: worker info}`` (as ``scheduler_info()``
    gives them)."""
    return [
        {
            "address": address,
            "name": info.get("name"),
            "nthreads": info.get("nthreads", 0),
            "memory_limit": info.get("memory_limit") or 0,
            "status": info.get("status"),
            "dashboard_link": info.get("dashboard_link"),
        }
        for address, info in workers.items()
    ]


def client_html(client: Client) -> str:
    """A client: its scheduler, dashboard and workers."""
    cluster = client.cluster
    return render(
        "client.html.j2",
        id=client.id,
        status=client.status,
        scheduler_address=client.scheduler_address,
        cluster=type(cluster).__name__ if cluster is not None else None,
        dashboard_link=_link(client),
        workers=_client_workers(client),
    )


def _client_workers(client: Client) -> list[dict] | None:
    """The scheduler's workers, if they can be had without blocking an event loop."""
    if client.status != "running":
        return None
    scheduler = getattr(client.cluster, "scheduler", None)
    local = getattr(scheduler, "state", None) is not None
    if local and running_loop() is not None and in_loop(client.loop):
        return worker_rows(scheduler.identity()["workers"])  # (in its loop: safe to read)
    if client.asynchronous or in_loop(client.loop):
        return None
    try:
        info = client.sync(client._call_scheduler, rq.Identity(), timeout=ASK_WITHIN)
    except Exception:  # (gone, or too slow: the repr shows what it knows)
        return None
    return worker_rows(info.get("workers", {}))


def future_html(future: Future) -> str:
    """A future: its key, status, and the type of its result (or its error)."""
    record = future._state
    error = record.error
    return render(
        "future.html.j2",
        key=str(future.key),
        status=record.status,
        type=record.type if record.status == "finished" else "",
        exception=error.exception_text if error is not None else "",
    )


def scheduler_html(scheduler: Scheduler) -> str:
    """A scheduler: its address, dashboard, workers and how much it holds."""
    running = scheduler.status == "running"
    state = scheduler.state
    workers = {
        ws.address: {
            "name": ws.name,
            "nthreads": ws.nthreads,
            "memory_limit": ws.memory_limit,
            "status": ws.status,
        }
        for ws in list(state.workers.values())
    }
    started = getattr(scheduler.introspection, "started", None)
    return render(
        "scheduler.html.j2",
        id=scheduler.id,
        address=scheduler.address if running else None,
        status=scheduler.status,
        dashboard_link=_link(scheduler),
        tasks=len(state.tasks),
        clients=len(state.clients),
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else None,
        workers=worker_rows(workers),
    )


def worker_html(worker: Worker) -> str:
    """A worker: its address, threads, memory, tasks and dashboard."""
    alive = worker.status in ("running", "paused", "closing_gracefully")
    details: list[tuple[str, Any]] = []
    if alive:
        memory = worker.memory()
        details += [
            ("Memory in use", _bytes(memory["process"])),
            ("Results in memory", _bytes(memory["managed"])),
            ("Spilled", _bytes(memory["spilled"])),
        ]
    details += [
        ("Tasks stored", len(worker.state.data)),
        ("Tasks running", f"{worker.state.busy_threads} / {worker.nthreads}"),
    ]
    if worker.nanny:
        details.append(("Nanny", worker.nanny))
    return render(
        "worker.html.j2",
        type="Worker",
        name=worker.name,
        address=worker.address if alive else None,
        status=worker.status,
        scheduler_address=worker.scheduler_address,
        nthreads=worker.nthreads,
        memory_limit=worker.memory_limit,
        dashboard_link=_link(worker),
        details=details,
    )


def nanny_html(nanny: Nanny) -> str:
    """A nanny: its worker process, threads, memory and dashboard."""
    running = nanny.status == "running"
    process = nanny.process
    details: list[tuple[str, Any]] = [("Worker", nanny.worker_address or "not started")]
    if process is not None and process.pid:
        details.append(("Worker process", process.pid))
    return render(
        "worker.html.j2",
        type="Nanny",
        name=nanny.name,
        address=nanny.address if running else None,
        status=nanny.status,
        scheduler_address=nanny.scheduler_address,
        nthreads=nanny.nthreads,
        memory_limit=nanny.memory_limit,
        dashboard_link=_link(nanny),
        details=details,
    )


def _link(server: Any) -> str | None:
    """The ``dashboard_link`` of a server (or client), if it has one."""
    try:
        return getattr(server, "dashboard_link", None) or None
    except Exception:  # (a property that could not tell)
        return None


def _bytes(n: int) -> str:
    return format_bytes(int(n))
