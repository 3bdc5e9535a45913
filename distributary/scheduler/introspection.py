"""Looking into the cluster from the scheduler: who it is and what its workers hold and
run, their logs, versions and call stacks, and the events logged on topics.

Theory of operation
-------------------
What the scheduler knows (its identity, each worker's keys, threads and tasks, the
bytes of each key) is read from the state at once.  What only a worker knows (its logs,
versions, the stacks of its running tasks) is asked of the workers named
(:meth:`Introspection.workers_list`: addresses, names or hosts), or of their nannies, in
parallel (:meth:`Introspection.broadcast`).

Events are ``(time, msg)`` pairs kept by topic, the last
``distributed.admin.low-level-log-length`` of each: logged by clients (a request), by
workers (on their stream, so that an event a task logged arrives before the task's
result) and by the scheduler itself (:meth:`Introspection.log_event`).  ``msg`` is plain
data, kept as a message would carry it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

import dask.config

from distributary.comm.addressing import get_address_host_port, normalize_address
from distributary.protocol import introspection as rq_i
from distributary.protocol import requests as rq
from distributary.protocol.requests import Request
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.records import WorkerRecord
from distributary.utils.versions import get_versions

_ON_ERROR = ("raise", "return", "ignore")


class Introspection(SchedulerExtension):
    """The scheduler's answers about itself and its workers, and its events."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.started = time.time()
        length = dask.config.get("distributed.admin.low-level-log-length", default=1000)
        self.events: defaultdict[str, deque] = defaultdict(lambda: deque(maxlen=length))
        # told of each event logged, as ``(topic, msg)`` (the scheduler plugins' log_event)
        self.event_listeners: list[Callable[[str, Any], None]] = []
        self.instruction_handlers.update(
            {
                ins.WorkerAdded: lambda i: self._worker_event(i.address, "add-worker"),
                ins.WorkerRemoved: lambda i: self._worker_event(i.address, "remove-worker"),
            }
        )
        self.handlers.update(
            {
                rq.Identity: lambda comm, msg: self.identity(),
                rq_i.HasWhat: lambda comm, msg: self.has_what(msg.workers),
                rq_i.Processing: lambda comm, msg: self.processing(msg.workers),
                rq_i.NThreads: lambda comm, msg: self.nthreads(msg.workers),
                rq_i.NBytes: lambda comm, msg: self.nbytes(msg.keys, msg.summary),
                rq_i.ClusterCallStack: lambda comm, msg: self.call_stacks(msg.keys),
                rq_i.WorkerLogs: lambda comm, msg: self.worker_logs(msg.n, msg.workers, msg.nanny),
                rq_i.ClusterVersions: lambda comm, msg: self.versions(msg.packages),
                rq_i.LogEvent: lambda comm, msg: self.log_event(msg.topic, msg.msg),
                rq_i.GetEvents: lambda comm, msg: self.get_events(msg.topic),
            }
        )
        self.message_handlers[rq_i.WorkerLogEvent] = lambda msg: self.log_event(msg.topic, msg.msg)

    def start(self) -> None:
        self.started = time.time()

    # ------------------------------------------------------------------ the scheduler's view

    def identity(self) -> dict[str, Any]:
        """The scheduler's type, id, address, start time and workers (by address)."""
        workers = self.scheduler.state.workers.values()
        return {
            "type": "Scheduler",
            "id": self.scheduler.id,
            "address": self.scheduler.address,
            "services": dict(self.scheduler.service_ports),
            "started": self.started,
            "n_workers": len(workers),
            "total_threads": sum(ws.nthreads for ws in workers),
            "total_memory": sum(ws.memory_limit for ws in workers),
            "workers": {ws.address: worker_info(ws) for ws in workers},
        }

    def workers_list(self, workers: Iterable | None) -> list[str]:
        """The addresses of the workers named (addresses, names or hosts: all the workers
        of a host), in that order; all workers when None.  ValueError naming those not
        found."""
        state = self.scheduler.state
        if workers is None:
            return list(state.workers)
        if isinstance(workers, str):
            workers = [workers]
        found: dict[str, None] = {}
        unknown = []
        for worker in workers:
            host = isinstance(worker, str) and worker not in state.workers_by_name
            if host and worker in state.workers_by_host:
                found.update(dict.fromkeys(sorted(state.workers_by_host[worker])))
                continue
            try:
                address = self.scheduler.coerce_address(worker)
            except (TypeError, ValueError):
                address = None
            if address in state.workers:
                found[address] = None
            else:
                unknown.append(worker)
        if unknown:
            raise ValueError(f"No such worker(s): {', '.join(map(repr, unknown))}")
        return list(found)

    def coerce_hostname(self, host: Any) -> Any:
        """The host of the worker named ``host``; else ``host`` itself."""
        state = self.scheduler.state
        address = state.workers_by_name.get(host)
        return state.workers[address].host if address is not None else host

    def has_what(self, workers: Iterable | None = None) -> dict[str, tuple]:
        """The keys held by each worker named (all when None), by address."""
        workers_ = self.scheduler.state.workers
        return {a: tuple(ts.key for ts in workers_[a].has_what) for a in self.workers_list(workers)}

    def processing(self, workers: Iterable | None = None) -> dict[str, tuple]:
        """The keys being processed by each worker named (all when None), by address."""
        workers_ = self.scheduler.state.workers
        return {
            a: tuple(ts.key for ts in workers_[a].processing) for a in self.workers_list(workers)
        }

    def nthreads(self, workers: Iterable | None = None) -> dict[str, int]:
        """The threads of each worker named (all when None), by address."""
        workers_ = self.scheduler.state.workers
        return {a: workers_[a].nthreads for a in self.workers_list(workers)}

    def nbytes(self, keys: Iterable | None = None, summary: bool = True) -> dict:
        """The bytes of each key held on the workers (of ``keys`` only, unless None: the
        others are left out); with ``summary``, added up by key prefix."""
        tasks = self.scheduler.state.tasks
        held = tasks.values() if keys is None else (tasks[k] for k in keys if k in tasks)
        held = [ts for ts in held if ts.who_has]
        if not summary:
            return {ts.key: ts.nbytes for ts in held}
        totals: dict[str, int] = defaultdict(int)
        for ts in held:
            totals[ts.prefix] += ts.nbytes
        return dict(totals)

    # ------------------------------------------------------------------ asking the workers

    async def broadcast(
        self,
        msg: Request | dict,
        workers: Iterable | None = None,
        hosts: Iterable | None = None,
        nanny: bool = False,
        on_error: str = "raise",
    ) -> dict[str, Any]:
        """Send the request ``msg`` to each worker named (or to its nanny) and gather the
        replies, by worker address.  With neither ``workers`` nor ``hosts``: every
        worker.  What a worker raises (or the error reaching it) is raised
        (``on_error="raise"``), returned in place of its reply ("return"), or that
        worker left out ("ignore")."""
        if not isinstance(msg, Request | dict):
            raise TypeError(f"broadcast needs a request to send as msg, not {msg!r:.50}")
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")
        addresses = [] if workers is None and hosts is not None else self.workers_list(workers)
        by_host = self.scheduler.state.workers_by_host
        for host in hosts or ():
            addresses.extend(sorted(by_host.get(self.coerce_hostname(host), ())))
        targets = dict.fromkeys(addresses, msg)
        return await self._ask(targets, nanny, on_error)

    async def _ask(
        self, targets: dict[str, Request | dict], nanny: bool, on_error: str
    ) -> dict[str, Any]:
        """The reply of each worker (or its nanny) to its request, by worker address."""
        workers = self.scheduler.state.workers
        peers = nannies(workers, targets) if nanny else list(targets)
        pool = self.scheduler.pool

        async def ask(peer: str, msg: Request | dict) -> Any:
            try:
                return await pool.call(peer, msg)
            except Exception as exc:
                if on_error == "raise":
                    raise
                return exc

        replies = await asyncio.gather(*(ask(p, msg) for p, msg in zip(peers, targets.values())))
        return {
            address: reply
            for address, reply in zip(targets, replies)
            if not (on_error == "ignore" and isinstance(reply, Exception))
        }

    async def call_stacks(self, keys: Iterable | None = None) -> dict[str, dict]:
        """The stacks of the tasks running now, by worker address and key: of ``keys``
        (and of the tasks they wait for) unless None; workers running none left out."""
        state = self.scheduler.state
        if keys is None:
            targets: dict[str, Any] = dict.fromkeys(state.workers, rq_i.CallStack())
        else:
            running: dict[str, list] = defaultdict(list)
            todo, seen = list(keys), set()
            while todo:
                ts = state.tasks.get(todo.pop())
                if ts is None or ts in seen:
                    continue
                seen.add(ts)
                if ts.state == "waiting":
                    todo.extend(dep.key for dep in ts.dependencies)
                elif ts.state == "processing" and ts.processing_on is not None:
                    running[ts.processing_on.address].append(ts.key)
            targets = {a: rq_i.CallStack(tuple(ks)) for a, ks in running.items()}
        stacks = await self._ask(targets, nanny=False, on_error="ignore")
        return {address: found for address, found in stacks.items() if found}

    async def worker_logs(
        self, n: int | None = None, workers: Iterable | None = None, nanny: bool = False
    ) -> dict[str, list]:
        """The recent logs of each worker named (all when None), or of its nanny, by
        worker address: ``(level, message)`` pairs, newest first."""
        return await self.broadcast(rq_i.GetLogs(n), workers=workers, nanny=nanny)

    async def versions(self, packages: Iterable[str] = ()) -> dict[str, Any]:
        """The versions of the scheduler and of each worker (those that answer)."""
        packages = tuple(packages)
        workers = await self.broadcast(rq_i.GetVersions(packages), on_error="ignore")
        return {"scheduler": get_versions(packages), "workers": workers}

    # ------------------------------------------------------------------ events

    def log_event(self, topic: str | Iterable[str], msg: Any) -> None:
        """Keep ``(now, msg)`` under ``topic`` (or each of several topics); ``msg`` is
        plain data (TypeError otherwise)."""
        topics = rq_i.check_topic(topic)
        event = (time.time(), rq_i.plain(msg, "An event's msg"))
        for name in (topics,) if isinstance(topics, str) else topics:
            self.events[name].append(event)
            for listener in self.event_listeners:
                listener(name, event[1])

    def _worker_event(self, address: str, action: str) -> None:
        """Workers joining and leaving are events too, under "all" and the worker's
        address, as in dask.distributed."""
        self.log_event(["all", address], {"action": action, "worker": address})

    def get_events(self, topic: str | None = None) -> tuple | dict[str, tuple]:
        """The ``(time, msg)`` events of ``topic``, oldest first; of every topic, by
        topic, when None."""
        if topic is None:
            return {name: tuple(events) for name, events in self.events.items()}
        events = self.events.get(topic)
        return tuple(events) if events is not None else ()


def nannies(workers: dict[str, WorkerRecord], addresses: Iterable[str]) -> list[str]:
    """The nannies of the workers at ``addresses``; ValueError naming those without one."""
    addresses = list(addresses)
    missing = [a for a in addresses if not workers[a].nanny]
    if missing:
        raise ValueError(f"Worker(s) without a nanny: {', '.join(missing)}")
    return [workers[a].nanny for a in addresses]


def worker_info(ws: WorkerRecord) -> dict[str, Any]:
    """What the scheduler knows of a worker, as plain values (the keys of
    dask.distributed's ``scheduler_info()["workers"]`` and some of our own)."""
    return {
        "type": "Worker",
        "id": ws.name,
        "name": ws.name,
        "host": ws.host,
        "pid": ws.pid,
        "nthreads": ws.nthreads,
        "memory_limit": ws.memory_limit,
        "resources": dict(ws.resources),
        "local_directory": ws.local_directory,
        "services": dict(ws.services),
        "nanny": ws.nanny,
        "status": ws.status,
        "last_seen": ws.last_seen,
        "metrics": ws.metrics,
        "nbytes": ws.nbytes,
        "processing": len(ws.processing),
        "stored": len(ws.has_what),
    }


def resolve(address: str) -> str:
    """``address`` with its host name (if it is not an IP address) resolved to the
    host's IP address; as it is if that fails or it is not a TCP address."""
    try:
        host, port = get_address_host_port(address)
    except ValueError:  # not TCP
        return address
    try:
        ipaddress.ip_address(host)
        return address
    except ValueError:  # a host name
        pass
    ip = _ip_of(host)
    scheme = address.partition("://")[0]  # (tcp or tls)
    return normalize_address(f"{scheme}://{ip}:{port}") if ip is not None else address


@functools.lru_cache(maxsize=256)
def _ip_of(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None
