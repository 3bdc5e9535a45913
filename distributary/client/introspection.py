"""The cluster as a client looks into it: its scheduler and workers, where keys are and
what runs, the servers' logs, versions and call stacks, events and keys' stories.

Each function makes its requests to the scheduler through ``call`` (an rpc call to
the client's scheduler: ``await call(msg)``).  Workers are named by address or name
(or host, for all its workers); ``workers=None`` means all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from distributary.client.calls import SchedulerCall, named_workers
from distributary.client.future import Future
from distributary.client.structures import collect_futures
from distributary.protocol import introspection as rq_i
from distributary.protocol import requests as rq
from distributary.utils import versions as v


def _keys(keys: Any) -> tuple:
    """Keys (or futures, for their keys) as a tuple; one key alone too."""
    if isinstance(keys, str | bytes | int | Future):
        keys = [keys]
    return tuple(k.key if isinstance(k, Future) else k for k in keys)


async def scheduler_info(call: SchedulerCall, n_workers: int = -1) -> dict:
    """The scheduler's identity and its workers (the first ``n_workers`` of them,
    unless -1)."""
    info = await call(rq.Identity())
    if n_workers != -1:
        info["workers"] = dict(list(info["workers"].items())[:n_workers])
    return info


async def nthreads(call: SchedulerCall, workers: Any = None) -> dict[str, int]:
    """The threads of each worker (of ``workers``: addresses, names or hosts), by address."""
    return await call(rq_i.NThreads(named_workers(workers)))


async def who_has(call: SchedulerCall, futures: Any, held: Iterable) -> dict:
    """The workers holding the data of each future in ``futures`` (of each key ``held``
    by the client, if ``futures`` is None)."""
    keys = [f.key for f in collect_futures(futures)] if futures is not None else list(held)
    return await call(rq.WhoHas(tuple(keys)))


async def has_what(call: SchedulerCall, workers: Any = None) -> dict[str, tuple]:
    """The keys held by each worker (of ``workers``), by address."""
    return await call(rq_i.HasWhat(named_workers(workers)))


async def processing(call: SchedulerCall, workers: Any = None) -> dict[str, tuple]:
    """The keys being processed by each worker (of ``workers``), by address."""
    return await call(rq_i.Processing(named_workers(workers)))


async def nbytes(call: SchedulerCall, keys: Any = None, summary: bool = True) -> dict:
    """The bytes of each key held on the cluster (of ``keys`` only: those not held are
    left out); with ``summary``, added up by key prefix (``"inc"`` for
    ``"inc-a1b2..."``)."""
    return await call(rq_i.NBytes(None if keys is None else _keys(keys), bool(summary)))


async def call_stack(call: SchedulerCall, futures: Any = None, keys: Any = None) -> dict:
    """The Python stacks of the tasks running now, by worker and key: of the futures
    (or collections) ``futures`` and the ``keys`` (and of what they wait for), or of
    all tasks if neither is given."""
    if futures is None and keys is None:
        return await call(rq_i.ClusterCallStack())
    wanted = [f.key for f in collect_futures(futures)]
    wanted += _keys(keys) if keys is not None else ()
    return await call(rq_i.ClusterCallStack(tuple(wanted)))


async def get_versions(
    call: SchedulerCall, check: bool = False, packages: Iterable[str] | None = None
) -> dict[str, Any]:
    """The versions of the scheduler, of each worker and of this client (and of
    ``packages`` besides those checked).

    Packages whose versions differ (as :func:`~distributary.utils.versions.mismatches`
    tells) raise ValueError with ``check``, else a VersionMismatchWarning.
    """
    extra = (packages,) if isinstance(packages, str) else tuple(packages or ())
    found = await call(rq_i.ClusterVersions(extra))
    result = {"scheduler": found["scheduler"], "workers": found["workers"]}
    result["client"] = v.get_versions(extra)
    rows = v.mismatches(result["client"], result["scheduler"], result["workers"])
    if rows:
        message = v.mismatch_message(rows)
        if check:
            raise ValueError(message)
        warnings.warn(message, v.VersionMismatchWarning, stacklevel=2)
    return result


async def get_scheduler_logs(call: SchedulerCall, n: int | None = None) -> tuple:
    """The scheduler's recent log records, ``(level, message)``, newest first."""
    return await call(rq_i.GetLogs(n))


async def get_worker_logs(
    call: SchedulerCall, n: int | None = None, workers: Any = None, nanny: bool = False
) -> dict[str, tuple]:
    """Each worker's (or, with ``nanny``, its nanny's) recent log records, newest
    first, by worker address."""
    return await call(rq_i.WorkerLogs(n, named_workers(workers), bool(nanny)))


async def log_event(call: SchedulerCall, topic: Any, msg: Any) -> None:
    """Log ``msg`` (plain data) under ``topic`` (a string, or a list of them)."""
    topic = rq_i.check_topic(topic)
    await call(rq_i.LogEvent(topic, rq_i.plain(msg, "An event's msg")))


async def get_events(call: SchedulerCall, topic: str | None = None) -> Any:
    """The ``(time, msg)`` events of ``topic``, oldest first; of every topic, by topic,
    when None."""
    if topic is not None and not isinstance(topic, str):
        raise TypeError(f"An event's topic is a string, not {topic!r}")
    return await call(rq_i.GetEvents(topic))


async def story(call: SchedulerCall, keys: tuple) -> list:
    """The transitions of these keys (or futures) on the scheduler, oldest first:
    ``(key, start, finish, stimulus_id)``."""
    return list(await call(rq.Story(_keys(keys))))
