"""The Scheduler's documented methods, as thin adapters over what it already has.

dask.distributed's Scheduler has many methods, most of them handlers of its own
messages.  Each here is a plain function whose first parameter is the scheduler,
attached to :class:`~distributary.scheduler.server.Scheduler` as a method: it hands the
state machine the event that says the same thing (``stimulus_task_finished`` a
``TaskFinished``, ``cancel_key`` a ``CancelKeys``, ...), reads the records and the
placement rules (``decide_worker``, ``worker_objective``, ...), or calls what the
server and its extensions do (``restart``, ``retire_workers``, ``gather``, ...).
Methods that take ``comm`` first keep it, as dask's handlers do; it is unused unless
said otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, get_args

import msgspec
from dask.utils import parse_timedelta

from distributary.comm.addressing import (
    get_address_host,
    get_address_host_port,
    unparse_host_port,
)
from distributary.core import read_messages
from distributary.core.run import run_function as run_request
from distributary.node import ServerNode
from distributary.protocol import requests as rq
from distributary.protocol.client_messages import ToClient
from distributary.protocol.errors import rebuild_exception
from distributary.protocol.serialize import Serialize, Serialized, deserialize
from distributary.protocol.tasks import dumps_node, dumps_task
from distributary.protocol.worker_messages import FROM_WORKER, ToWorker
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler import placement
from distributary.scheduler.lifecycle import stimulus
from distributary.scheduler.records import TaskRecord, TaskState, WorkerRecord
from distributary.utils import ipython

if TYPE_CHECKING:
    from distributary.scheduler.server import Scheduler

logger = logging.getLogger("distributary.scheduler")

_STATES = frozenset(get_args(TaskState))


# ---------------------------------------------------------------------- records


def _task(scheduler: Scheduler, ts: Any) -> TaskRecord:
    """The record of a task, given itself or its key (KeyError naming an unknown key)."""
    if isinstance(ts, TaskRecord):
        return ts
    try:
        return scheduler.state.tasks[ts]
    except KeyError:
        raise KeyError(f"the scheduler has no task {ts!r}") from None


def _worker(scheduler: Scheduler, ws: Any) -> WorkerRecord:
    """The record of a worker, given itself, its address or its name."""
    if isinstance(ws, WorkerRecord):
        return ws
    address = scheduler.coerce_address(ws, resolve=False)
    try:
        return scheduler.state.workers[address]
    except KeyError:
        raise KeyError(f"the scheduler has no worker {ws!r}") from None


def decide_worker(scheduler: Scheduler, ts: Any) -> WorkerRecord | None:
    """The worker record placement would run ``ts`` (a task record or key) on now, or
    None if it would wait (queued, or no worker fits)."""
    return placement.decide_worker(scheduler.state, _task(scheduler, ts))


def valid_workers(scheduler: Scheduler, ts: Any) -> set[WorkerRecord] | bool:
    """The worker records ``ts`` may run on (by its worker, host and resource
    restrictions), or True when any worker will do."""
    addresses = placement.valid_workers(scheduler.state, _task(scheduler, ts))
    if addresses is None:
        return True
    return {scheduler.state.workers[a] for a in addresses}


def worker_objective(scheduler: Scheduler, ts: Any, ws: Any) -> tuple[float, str]:
    """What running ``ts`` on ``ws`` would cost, lowest best, as placement compares it:
    ``(estimated start in seconds, worker address)``."""
    ts = _task(scheduler, ts)
    duration = placement.task_duration(scheduler.state, ts)
    return placement.worker_objective(ts, _worker(scheduler, ws), duration)


def get_comm_cost(scheduler: Scheduler, ts: Any, ws: Any) -> float:
    """Estimated seconds to move the dependencies of ``ts`` that ``ws`` lacks to it."""
    return placement.comm_cost(_task(scheduler, ts), _worker(scheduler, ws))


def get_task_duration(scheduler: Scheduler, ts: Any, default: float | None = None) -> float:
    """Expected run time of ``ts`` (without moving data): the mean of its prefix's runs,
    else ``default`` (``distributed.scheduler.unknown-task-duration``, 0.5 s, if None)."""
    return placement.task_duration(scheduler.state, _task(scheduler, ts), default)


def check_idle_saturated(scheduler: Scheduler, ws: Any, occ: float | None = None) -> None:
    """Put the worker among the idle ones if it has room for more tasks, else take it
    out (a worker's load is counted in tasks: ``occ``, seconds of work, is refused)."""
    if occ is not None:
        raise NotImplementedError(
            "check_idle_saturated(occ=...) is not supported: load is counted in tasks"
        )
    scheduler.state.update_idle(_worker(scheduler, ws))


def reevaluate_occupancy(scheduler: Scheduler, worker_index: int = 0) -> None:
    """Check again which workers, from the ``worker_index``-th on, are idle (see
    :func:`check_idle_saturated`)."""
    for ws in list(scheduler.state.workers.values())[worker_index:]:
        scheduler.state.update_idle(ws)


def adaptive_target(scheduler: Scheduler, comm: Any = None, target_duration: Any = "5s") -> int:
    """How many workers the current work asks for: enough to run the tasks queued,
    waiting for a worker or running in about ``target_duration`` (at most one per
    such task), twice the workers there are when they hold more than 60% of their
    memory, and no fewer than those there is no reason to close."""
    return scheduler.lifecycle.adaptive_target(parse_timedelta(target_duration))


# ---------------------------------------------------------------------- events


def _report(cls: type, scheduler: Scheduler, key: Any, worker: Any, fields: dict) -> Any:
    """A worker's report ``cls`` on the current run of ``key``: the worker defaults to
    the one it is processing on, the other fields to ``fields``; only the report's own
    fields (and ``stimulus_id``) may be given."""
    unknown = sorted(set(fields) - set(cls.__struct_fields__))
    if unknown:
        raise TypeError(f"{cls.op} got unexpected keyword arguments {unknown}")
    ts = scheduler.state.tasks.get(key)
    on = ts.processing_on if ts is not None else None
    fields.setdefault("run_id", ts.run_id if ts is not None else 0)
    fields.setdefault("stimulus_id", stimulus(cls.op))
    if worker is None:
        worker = on.address if on is not None else ""
    return cls(key=key, worker=worker, **fields)


def stimulus_task_finished(
    scheduler: Scheduler, key: Any = None, worker: str | None = None, **kwargs: Any
) -> None:
    """The task ``key`` finished on ``worker`` (by default the worker running it), which
    holds its result: it is in memory, its clients' futures done.  ``kwargs``: the
    report's ``nbytes``, ``type``, ``duration``, ``run_id`` and ``stimulus_id``."""
    kwargs.setdefault("nbytes", 0)
    scheduler.handle(_report(ev.TaskFinished, scheduler, key, worker, kwargs))


def stimulus_task_erred(
    scheduler: Scheduler,
    key: Any = None,
    worker: str | None = None,
    exception: Any = None,
    traceback: Any = None,
    **kwargs: Any,
) -> None:
    """The task ``key`` raised ``exception`` on ``worker`` (by default the worker running
    it): it is retried if it has retries left, else erred for its clients.  ``kwargs``:
    ``exception_text``, ``traceback_text``, ``run_id`` and ``stimulus_id``."""
    kwargs.setdefault("exception_text", repr(exception))
    kwargs.update(exception=exception, traceback=traceback)
    scheduler.handle(_report(ev.TaskErred, scheduler, key, worker, kwargs))


def handle_long_running(
    scheduler: Scheduler, key: Any = None, worker: str | None = None, compute_duration: Any = None
) -> None:
    """The task ``key`` seceded from ``worker``'s threads: it no longer counts against
    the worker's room, and is not stolen."""
    if compute_duration is not None:
        raise NotImplementedError("handle_long_running(compute_duration=...) is not supported")
    scheduler.handle(_report(ev.LongRunning, scheduler, key, worker, {}))


def reschedule(scheduler: Scheduler, key: Any = None, worker: str | None = None) -> None:
    """Take the task ``key`` off ``worker`` (by default the one running it) and place it
    again; nothing if it is not running there."""
    scheduler.handle(_report(ev.TaskRescheduled, scheduler, key, worker, {}))


def stimulus_missing_data(
    scheduler: Scheduler,
    cause: Any = None,
    key: Any = None,
    worker: str | None = None,
    ensure: bool = True,
    **kwargs: Any,
) -> None:
    """``worker`` does not hold the data of ``key`` after all (``cause`` is the key whose
    run found out): it is no longer a replica; with no copy left the key is computed
    again.  ``kwargs``: ``stimulus_id``."""
    if not ensure:
        raise NotImplementedError("stimulus_missing_data(ensure=False) is not supported")
    unknown = sorted(set(kwargs) - {"stimulus_id"})
    if unknown:
        raise TypeError(f"stimulus_missing_data got unexpected keyword arguments {unknown}")
    stimulus_id = kwargs.get("stimulus_id") or stimulus(f"missing-data-{cause}")
    scheduler.handle(ev.MissingData(stimulus_id, key=key, errant_worker=worker or ""))


def add_keys(scheduler: Scheduler, comm: Any = None, worker: str | None = None, keys=()) -> str:
    """``worker`` holds the data of these keys: a replica of each one in memory (the
    worker is told to drop the others)."""
    scheduler.handle(ev.AddKeys(stimulus("add-keys"), tuple(keys), worker=worker or ""))
    return "OK"


def cancel_key(
    scheduler: Scheduler, key: Any, client: str, retries: int = 5, force: bool = False
) -> None:
    """Cancel ``client``'s future of ``key`` (every client's with ``force``): it is
    released if nobody else wants it.  A key not known is nothing to cancel (``retries``
    is taken for dask's signature: there is nothing to wait for)."""
    stimulus_cancel(scheduler, None, [key], client, force)


def stimulus_cancel(
    scheduler: Scheduler,
    comm: Any,
    keys: Iterable | None = None,
    client: str | None = None,
    force: bool = False,
) -> None:
    """Cancel ``client``'s futures of ``keys`` (every client's with ``force``)."""
    keys = tuple(keys or ())
    scheduler.handle(ev.CancelKeys(stimulus("cancel"), keys, force, client=client or ""))


def client_releases_keys(
    scheduler: Scheduler, keys: Iterable | None = None, client: str | None = None
) -> None:
    """``client`` no longer wants these keys: those nobody needs are released."""
    keys = tuple(keys or ())
    scheduler.handle(ev.ClientReleasesKeys(stimulus("release"), keys, client=client or ""))


def client_heartbeat(scheduler: Scheduler, client: str | None = None) -> str:
    """A client says it is alive ("OK"; ValueError for a client not connected).  The
    scheduler notices a client gone by its stream closing, so there is nothing to note."""
    if client not in scheduler.state.clients:
        raise ValueError(f"no client {client!r} is connected")
    return "OK"


def remove_client(scheduler: Scheduler, client: str | None = None) -> None:
    """Forget ``client``: its wants are released (as when its stream closes)."""
    scheduler.handle(ev.RemoveClient(stimulus("remove-client"), client))


def transitions(
    scheduler: Scheduler, recommendations: Mapping, stimulus_id: str | None = None
) -> None:
    """Move each task to the state recommended (``{key: state}``), then on as the
    transitions recommend, until none is left; the messages they make go out."""
    bad = {key: state for key, state in recommendations.items() if state not in _STATES}
    if bad:
        raise ValueError(f"not task states: {bad}; they are {sorted(_STATES)}")
    event = ev.Transitions(stimulus_id or stimulus("transitions"), dict(recommendations))
    scheduler.handle(event)


def transition(scheduler: Scheduler, key: Any, finish: str, *args: Any, **kwargs: Any) -> dict:
    """Move the task ``key`` to ``finish``, and on until no recommendation is left (see
    :func:`transitions`); returns the recommendations left: none.  ``kwargs``:
    ``stimulus_id``."""
    unknown = sorted(set(kwargs) - {"stimulus_id"})
    if args or unknown:
        raise TypeError(f"transition takes no further arguments: {list(args)}, {unknown}")
    _task(scheduler, key)
    transitions(scheduler, {key: finish}, kwargs.get("stimulus_id"))
    return {}


def update_graph(
    scheduler: Scheduler,
    client: str | None = None,
    tasks: Mapping | None = None,
    keys: Iterable | None = None,
    dependencies: Mapping | None = None,
    restrictions: Mapping | None = None,
    priority: Mapping | None = None,
    loose_restrictions: Iterable | None = None,
    resources: Mapping | None = None,
    submitting_task: Any = None,
    retries: Mapping | None = None,
    user_priority: int = 0,
    actors: Any = None,
    fifo_timeout: Any = 0,
) -> None:
    """Add tasks for ``client``, which wants ``keys``.

    ``tasks`` maps each key to its task: a payload as a client makes it, a dask graph
    node (``Task``) or a call ``(function, *args)`` (arguments not naming other
    keys).  ``dependencies``, ``restrictions`` (workers), ``priority``, ``resources``
    and ``retries`` are by key; ``loose_restrictions`` lists the keys that may run
    elsewhere; ``user_priority`` comes first in every key's priority.
    """
    if client is None:
        raise ValueError("update_graph needs the client the tasks are for")
    for name, value in (("actors", actors), ("submitting_task", submitting_task)):
        if value:
            raise NotImplementedError(f"update_graph({name}=...) is not supported yet")
    if parse_timedelta(fifo_timeout):
        raise NotImplementedError("update_graph(fifo_timeout=...): priorities are the caller's")
    dependencies, restrictions = dependencies or {}, restrictions or {}
    priority, resources, retries = priority or {}, resources or {}, retries or {}
    loose = set(loose_restrictions or ())
    specs = []
    for key, task in (tasks or {}).items():
        workers = restrictions.get(key)
        order = priority.get(key, 0)
        specs.append(
            ev.TaskSpec(
                key,
                _payload(task),
                dependencies=tuple(dependencies.get(key, ())),
                priority=(-user_priority, *(order if isinstance(order, tuple) else (order,))),
                retries=retries.get(key, 0),
                workers=None if workers is None else tuple(_names(workers)),
                allow_other_workers=key in loose,
                resources=resources.get(key),
            )
        )
    wanted = tuple(keys or ())
    event = ev.UpdateGraph(stimulus("update-graph"), tuple(specs), wanted, client=client)
    scheduler.handle(event)


def _payload(task: Any) -> Any:
    if isinstance(task, dict):
        return task
    if isinstance(task, tuple) and task and callable(task[0]):
        return dumps_task(task[0], task[1:], None)[0]
    return dumps_node(task)


def _names(workers: Any) -> list:
    return [workers] if isinstance(workers, str) else list(workers)


# ---------------------------------------------------------------------- workers


async def add_worker(
    scheduler: Scheduler,
    comm: Any = None,
    address: str | None = None,
    keys: Iterable = (),
    nthreads: int | None = None,
    name: Any = None,
    resolve_address: bool = True,
    nbytes: Mapping | None = None,
    types: Mapping | None = None,
    now: float | None = None,
    resources: Mapping | None = None,
    host_info: Any = None,
    memory_limit: int | None = None,
    metrics: Any = None,
    pid: int = 0,
    services: Any = None,
    local_directory: str | None = None,
    nanny: str | None = None,
    extra: Any = None,
) -> str:
    """Add a worker at ``address`` with ``nthreads`` threads, holding the data of
    ``keys`` (their ``nbytes`` and ``types`` by key).  Given ``comm`` (a worker's
    connection), it becomes the worker's stream and this returns when it closes; without
    it the worker has no stream (tasks placed there wait until it is removed)."""
    for option, value in (("host_info", host_info), ("metrics", metrics), ("extra", extra)):
        if value:
            raise NotImplementedError(f"add_worker({option}=...) is not supported yet")
    if not address or not nthreads:
        raise ValueError("add_worker needs the worker's address and its nthreads")
    address = scheduler.coerce_address(address, resolve=resolve_address)
    register = rq.RegisterWorker(
        address,
        nthreads,
        name,
        memory_limit,
        dict(resources or {}),
        nanny,
        pid,
        local_directory or "",
        dict(services or {}),
    )
    if comm is not None:
        await scheduler._handle_register_worker(comm, register)
        return "OK"
    state = scheduler.state
    if address in state.workers or (name is not None and name in state.workers_by_name):
        raise ValueError(f"name or address taken: {name!r}, {address!r}")
    added = worker_added(register, now or time.time())
    scheduler.handle(added)
    if keys:
        who_has = {key: (address,) for key in keys}
        nbytes, types = dict(nbytes or {}), dict(types or {})
        scheduler.handle(ev.ScatterData(added.stimulus_id, who_has, nbytes, types))
    scheduler.lifecycle.workers_changed()
    return "OK"


def worker_added(msg: rq.RegisterWorker, now: float) -> ev.AddWorker:
    """The event of the worker that ``msg`` registers, at ``now``."""
    return ev.AddWorker(
        f"register-worker-{msg.address}",
        msg.address,
        msg.nthreads,
        name=msg.name,
        memory_limit=msg.memory_limit or 0,
        resources=dict(msg.resources or {}),
        nanny=msg.nanny,
        host=get_address_host(msg.address),
        time=now,
        pid=msg.pid,
        local_directory=msg.local_directory,
        services=dict(msg.services),
    )


async def handle_worker(scheduler: Scheduler, comm: Any = None, worker: str | None = None) -> None:
    """Read the stream ``comm`` of the registered ``worker`` until it closes: what the
    worker tells goes to the state machine."""
    await read_messages(comm, FROM_WORKER, worker, scheduler._handle_messages)


async def add_client(scheduler: Scheduler, comm: Any, client: str | None = None) -> None:
    """Register ``client`` on its connection ``comm``, which becomes its stream (read
    until it closes; the client is then removed)."""
    await scheduler._handle_register_client(comm, rq.RegisterClient(client))


async def remove_worker(
    scheduler: Scheduler,
    comm: Any = None,
    address: str | None = None,
    safe: bool = False,
    close: bool = True,
) -> str:
    """Remove the worker at ``address`` (or named so): its tasks are placed again and
    the data only it held is lost (counted against its tasks unless ``safe``); its
    stream is closed, and with ``close`` it is asked to close (a nanny restarts it).
    "already-removed" if there is no such worker."""
    address = scheduler.coerce_address(address, resolve=False)
    if address not in scheduler.state.workers:
        return "already-removed"
    scheduler.handle(ev.RemoveWorker(stimulus("remove-worker"), address, safe=safe))
    scheduler.lifecycle.workers_changed()
    if close:
        try:
            await scheduler.pool.call(address, rq.CloseWorker(nanny=False), timeout=5)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info("Could not ask worker %s to close: %r", address, exc)
    scheduler.disconnect(address)
    return "OK"


async def close_worker(
    scheduler: Scheduler, stream: Any = None, worker: str | None = None, safe: bool | None = None
) -> None:
    """Remove ``worker`` (``safe``: nothing counts against its tasks) and close it for
    good, its nanny too."""
    address = scheduler.coerce_address(worker, resolve=False)
    await remove_worker(scheduler, address=address, safe=bool(safe), close=False)
    await scheduler.lifecycle.close_worker(address)


def workers_to_close(
    scheduler: Scheduler,
    comm: Any = None,
    memory_ratio: float | None = None,
    n: int | None = None,
    key: Callable | None = None,
    minimum: int | None = None,
    target: int | None = None,
    attribute: str = "address",
) -> list:
    """Workers that can be closed at little cost: running nothing and holding little.

    At most ``n`` of them, keeping ``target`` and ``minimum`` workers and memory for
    ``memory_ratio`` times the data held (2 when none of these is given); workers of the
    same ``key(worker record)`` are closed together.  Their ``attribute`` values."""
    return scheduler.lifecycle.workers_to_close(
        n=n,
        target=target,
        minimum=minimum or 0,
        memory_ratio=memory_ratio,
        key=key,
        attribute=attribute,
    )


async def retire_workers(
    scheduler: Scheduler,
    comm: Any = None,
    workers: list[str] | None = None,
    remove: bool = True,
    close_workers: bool = False,
    names: list | None = None,
    **kwargs: Any,
) -> dict[str, dict]:
    """Gracefully retire workers: copy the data only they hold to others first.

    ``workers`` (addresses) or ``names``; with neither, :meth:`workers_to_close`
    chooses (``kwargs`` go to it).  ``remove`` drops them from the scheduler at once,
    ``close_workers`` also closes them (and their nannies).  Returns ``{address:
    info}`` of the workers retired.
    """
    return await scheduler.lifecycle.retire_workers(
        workers, names=names, close_workers=close_workers, remove=remove, **kwargs
    )


async def restart(
    scheduler: Scheduler, client: str | None = None, timeout: Any = 3, wait_for_workers: bool = True
) -> None:
    """Forget all tasks and data, restart the worker processes (workers without a nanny
    are closed) and, with ``wait_for_workers``, wait ``timeout`` for them to return
    (TimeoutError).  ``client`` (who asked) is logged."""
    if client is not None:
        logger.info("Restart asked by client %s", client)
    await scheduler.lifecycle.restart(parse_timedelta(timeout), wait_for_workers)


def get_worker_service_addr(
    scheduler: Scheduler, worker: str, service_name: str, protocol: bool = False
) -> Any:
    """Where the named service of ``worker`` listens: ``(host, port)``, or the full
    address with ``protocol``; None if it has none.  Workers serve ``"dashboard"`` (their
    HTTP server: /metrics, /health), and their nanny is ``"nanny"``."""
    ws = _worker(scheduler, worker)
    if service_name == "nanny":
        if not ws.nanny:
            return None
        return ws.nanny if protocol else get_address_host_port(ws.nanny)
    port = ws.services.get(service_name)
    if port is None:
        return None
    tcp = ws.address.startswith(("tcp://", "tls://"))
    host = ws.host if tcp else "127.0.0.1"  # (inproc: loopback)
    return f"tcp://{unparse_host_port(host, port)}" if protocol else (host, port)


# ---------------------------------------------------------------------- messages and data


def worker_send(scheduler: Scheduler, worker: str, msg: ToWorker) -> None:
    """Send ``msg`` (a message for workers, as the state machine makes) on ``worker``'s
    stream."""
    if not isinstance(msg, ToWorker):
        raise TypeError(f"worker_send takes a message for workers, not {type(msg).__name__}")
    stream = scheduler.worker_streams.get(worker)
    if stream is None or stream.closed():
        raise ValueError(f"there is no open stream to worker {worker!r}")
    stream.send(msg)


def send_task_to_worker(scheduler: Scheduler, worker: str, key: Any) -> None:
    """Send the task ``key`` again to ``worker``, which it is processing on."""
    ts = _task(scheduler, key)
    if ts.processing_on is None or ts.processing_on.address != worker:
        raise ValueError(f"{key!r} is not processing on {worker!r}")
    worker_send(scheduler, worker, ins.compute_task(ts, stimulus("send-task")))


def report(scheduler: Scheduler, msg: ToClient, ts: Any = None, client: str | None = None) -> None:
    """Send ``msg`` (a message for clients) to ``client``; else to the clients wanting
    ``ts`` (a task record or key); else to every client.  It is sent as current: as if
    the state machine made it now."""
    if not isinstance(msg, ToClient):
        raise TypeError(f"report takes a message for clients, not {type(msg).__name__}")
    if client is not None:
        clients: Iterable[str] = [client]
    elif ts is not None:
        task = scheduler.state.tasks.get(ts.key if isinstance(ts, TaskRecord) else ts)
        clients = task.who_wants if task is not None else ()
    else:
        clients = list(scheduler.client_streams)
    for name in clients:
        stream = scheduler.client_streams.get(name)
        if stream is not None and not stream.closed():
            ack = scheduler.state.ack(name)  # (current: the client applies it)
            stream.send(msgspec.structs.replace(msg, client=name, ack=ack))


async def proxy(
    scheduler: Scheduler,
    comm: Any = None,
    msg: Any = None,
    worker: str | None = None,
    serializers: Any = None,
) -> Any:
    """Send the request ``msg`` to ``worker`` (address or name); its reply."""
    _no_serializers("proxy", serializers)
    return await scheduler.pool.call(scheduler.coerce_address(worker, resolve=False), msg)


async def gather(
    scheduler: Scheduler, comm: Any = None, keys: Iterable | None = None, serializers: Any = None
) -> dict:
    """The data of ``keys`` from the workers holding it: ``{"status": "OK", "data":
    {key: serialized value}}`` (``distributary.protocol.serialize.deserialize`` gives
    the value; the scheduler does not unpickle data), or ``{"status": "error",
    "keys": [...]}`` naming those no worker gave."""
    _no_serializers("gather", serializers)
    keys = list(keys or ())
    by_worker: dict[str, list] = {}
    for key in keys:
        ts = scheduler.state.tasks.get(key)
        holders = sorted(ws.address for ws in ts.who_has) if ts is not None else []
        if holders:
            by_worker.setdefault(holders[0], []).append(key)
    calls = [scheduler.pool.call(w, rq.GetData(tuple(ks))) for w, ks in by_worker.items()]
    data: dict = {}
    for reply in await asyncio.gather(*calls, return_exceptions=True):
        if not isinstance(reply, BaseException):
            data.update(reply.data)
    missing = [key for key in keys if key not in data]
    if missing:
        return {"status": "error", "keys": missing}
    return {"status": "OK", "data": data}


async def scatter(
    scheduler: Scheduler,
    comm: Any = None,
    data: Mapping | None = None,
    workers: Any = None,
    client: str | None = None,
    broadcast: bool = False,
    timeout: Any = 2,
) -> list:
    """Put ``data`` (``{key: value}``) on ``workers`` (all when None; waiting up to
    ``timeout`` for one), each key on the next worker in turn, on every one with
    ``broadcast``; ``client`` (if given) wants the keys.  Returns the keys."""
    if not isinstance(data, Mapping):
        raise TypeError(f"scatter takes data as a dict {{key: value}}, not {type(data).__name__}")
    if not scheduler.state.workers:
        await scheduler.lifecycle.wait_for_workers(1, parse_timedelta(timeout))
    targets = sorted(scheduler.workers_list(workers))
    copies = len(targets) if broadcast else 1
    placed: dict[str, dict] = {}
    for i, (key, value) in enumerate(data.items()):
        for j in range(copies):
            value = value if isinstance(value, Serialize | Serialized) else Serialize(value)
            placed.setdefault(targets[(i + j) % len(targets)], {})[key] = value
    replies = await asyncio.gather(
        *(scheduler.pool.call(worker, rq.UpdateData(chunk)) for worker, chunk in placed.items())
    )
    who_has: dict = {}
    nbytes: dict = {}
    types: dict = {}
    for (worker, chunk), reply in zip(placed.items(), replies):
        for key in chunk:
            who_has.setdefault(key, []).append(worker)
        nbytes.update(reply.nbytes)
        types.update(reply.types)
    update_data(scheduler, who_has=who_has, nbytes=nbytes, client=client, types=types)
    return list(data)


def update_data(
    scheduler: Scheduler,
    comm: Any = None,
    who_has: Mapping | None = None,
    nbytes: Mapping | None = None,
    client: str | None = None,
    serializers: Any = None,
    types: Mapping | None = None,
) -> None:
    """Workers hold data put there from outside: ``who_has`` (``{key: [addresses]}``),
    with its ``nbytes`` (and ``types``) by key; ``client`` (if given) wants the keys."""
    _no_serializers("update_data", serializers)
    holders = {key: tuple(addresses) for key, addresses in (who_has or {}).items()}
    event = ev.ScatterData(
        stimulus("update-data"), holders, dict(nbytes or {}), dict(types or {}), client=client or ""
    )
    scheduler.handle(event)


def _no_serializers(method: str, serializers: Any) -> None:
    if serializers is not None:
        raise NotImplementedError(f"{method}(serializers=...) is not supported yet")


# ---------------------------------------------------------------------- the scheduler


async def run_function(
    scheduler: Scheduler,
    stream: Any,
    function: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    wait: bool = True,
) -> Any:
    """Run ``function(*args, **kwargs)`` in the scheduler's event loop (awaited if a
    coroutine function, unless not ``wait``), given the scheduler as ``dask_scheduler``
    if it takes that; its result, or what it raised."""
    request = rq.RunFunction(Serialize(function), Serialize(args), Serialize(kwargs or {}), wait)
    ran = await run_request(request, scheduler, "dask_scheduler")
    if ran.error is not None:
        raise rebuild_exception(ran.error)
    return None if ran.result is None else deserialize(ran.result)


async def feed(
    scheduler: Scheduler,
    comm: Any,
    function: Callable | None = None,
    setup: Callable | None = None,
    teardown: Callable | None = None,
    interval: Any = "1s",
    **kwargs: Any,
) -> None:
    """Write ``function(scheduler)`` to ``comm`` every ``interval`` until it closes.

    With ``setup``, ``state = setup(scheduler)`` first, ``function(scheduler, state)``
    each time and ``teardown(scheduler, state)`` at the end.  Runs arbitrary code in the
    scheduler: for diagnostics.
    """
    if kwargs:
        raise TypeError(f"feed got unexpected keyword arguments {sorted(kwargs)}")
    if function is None:
        raise ValueError("feed needs a function")
    seconds = parse_timedelta(interval)
    state = setup(scheduler) if setup is not None else None
    try:
        while scheduler.status == "running" and not comm.closed():
            await comm.write(function(scheduler, state) if setup else function(scheduler))
            await asyncio.sleep(seconds)
    finally:
        if teardown is not None:
            teardown(scheduler, state)


async def close(
    scheduler: Scheduler, comm: Any = None, fast: bool = False, close_workers: bool = False
) -> None:
    """Close the scheduler (idempotent); with ``close_workers`` close its workers first
    (their nannies too).  ``fast`` is taken for dask's signature: closing never waits
    for work to finish."""
    if close_workers and scheduler.status == "running":
        lifecycle = scheduler.lifecycle
        await asyncio.gather(*(lifecycle.close_worker(a) for a in list(scheduler.state.workers)))
    await ServerNode.close(scheduler)


def start_ipython(scheduler: Scheduler, comm: Any = None) -> dict:
    """Start an IPython kernel in the scheduler's process, with ``scheduler`` in its
    namespace; its connection info (the same kernel when asked again).  Needs ipykernel
    (``distributary[ipython]``)."""
    info = getattr(scheduler, "_ipython", None)
    if info is None:
        host = get_address_host(scheduler.address)
        info = scheduler._ipython = ipython.start_kernel({"scheduler": scheduler}, host)
    return info
