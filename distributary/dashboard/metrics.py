"""Prometheus metrics of the scheduler and of the workers, named as dask.distributed names
them (``dask_scheduler_workers``, ``dask_scheduler_tasks{state=...}``,
``dask_worker_tasks``, ``dask_worker_memory_bytes{type=...}``, ...).

Each node has a registry of its own (several nodes may share a process), holding the
process, platform and garbage-collector collectors of prometheus_client and a collector
that reads the node's state when ``/metrics`` is scraped, and only then: nothing is
counted per task.  The counters of workers and clients that came and went are kept by
:class:`Arrivals` (an event per worker or client, not per task).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from distributary.scheduler import instructions as ins
from distributary.scheduler import records as scheduler_records
from distributary.scheduler.records import FIRE_AND_FORGET
from distributary.worker import state as worker_state

if TYPE_CHECKING:
    from distributary.scheduler.state import SchedulerState
    from distributary.worker.state import WorkerState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The task states reported (with 0 when no task is in one), as dask.distributed lists them.
SCHEDULER_TASK_STATES = scheduler_records.HELD_STATES
WORKER_TASK_STATES = worker_state.HELD_STATES
WORKER_STATES = ("idle", "partially_saturated", "saturated", "paused", "retiring")


class Arrivals:
    """How many workers and clients were added and removed since the scheduler started:
    counted from the state machine's notices (``instruction_handlers``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.instruction_handlers: dict[type, Callable[[Any], None]] = {
            ins.WorkerAdded: lambda i: self._count("workers_added"),
            ins.WorkerRemoved: lambda i: self._count("workers_removed"),
            ins.ClientAdded: lambda i: self._count("clients_added", i.client),
            ins.ClientRemoved: lambda i: self._count("clients_removed", i.client),
        }

    def _count(self, what: str, client: str = "") -> None:
        if client != FIRE_AND_FORGET:
            self.counts[what] += 1


def registry(collector: Any) -> CollectorRegistry:
    """A registry of ``collector`` and of prometheus_client's process, platform and
    garbage-collector collectors."""
    result = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=result)
    PlatformCollector(registry=result)
    GCCollector(registry=result)
    result.register(collector)
    return result


def exposition(metrics: CollectorRegistry) -> bytes:
    """The metrics in the Prometheus text format."""
    return generate_latest(metrics)


class SchedulerCollector:
    """The scheduler's metrics, read from its state when scraped.

    ``desired_workers`` gives how many workers the work asks for (``adaptive_target``).
    """

    def __init__(
        self, state: SchedulerState, arrivals: Arrivals, desired_workers: Callable[[], int]
    ):
        self.state = state
        self.arrivals = arrivals
        self.desired_workers = desired_workers

    def describe(self) -> list:
        return []  # (the registry need not collect to find the names)

    def collect(self) -> Iterator[Metric]:
        state, counts = self.state, self.arrivals.counts
        clients = sum(1 for client in state.clients if client != FIRE_AND_FORGET)
        yield _gauge("dask_scheduler_clients", "Number of clients connected", clients)
        yield _counter(
            "dask_scheduler_client_connections_added",
            "Total number of client connections added",
            counts["clients_added"],
        )
        yield _counter(
            "dask_scheduler_client_connections_removed",
            "Total number of client connections removed",
            counts["clients_removed"],
        )
        yield _gauge(
            "dask_scheduler_desired_workers",
            "Number of workers scheduler needs for task graph",
            self.desired_workers(),
        )
        workers = GaugeMetricFamily(
            "dask_scheduler_workers", "Number of workers known by scheduler", labels=["state"]
        )
        for name, n in worker_states(state).items():
            workers.add_metric([name], n)
        yield workers
        yield _counter(
            "dask_scheduler_workers_added", "Total number of workers added", counts["workers_added"]
        )
        yield _counter(
            "dask_scheduler_workers_removed",
            "Total number of workers removed",
            counts["workers_removed"],
        )
        by_state: Counter[str] = Counter()
        output: Counter[str] = Counter()
        prefixes: set[str] = set()
        for ts in state.tasks.values():
            by_state[ts.state] += 1
            prefixes.add(ts.prefix)
            if ts.who_has:
                output[ts.prefix] += max(ts.nbytes, 0)
        tasks = GaugeMetricFamily(
            "dask_scheduler_tasks", "Number of tasks known by scheduler", labels=["state"]
        )
        for name in SCHEDULER_TASK_STATES:
            tasks.add_metric([name], by_state[name])
        yield tasks
        nbytes = GaugeMetricFamily(
            "dask_scheduler_tasks_output_bytes",
            "Current number of bytes in memory (without duplicates) for each prefix",
            labels=["task_prefix_name"],
        )
        for prefix in sorted(prefixes):
            nbytes.add_metric([prefix], output[prefix])
        yield nbytes


def worker_states(state: SchedulerState) -> dict[str, int]:
    """How many workers are idle, partially saturated (some threads busy), saturated (all
    of them), paused or retiring."""
    counts = dict.fromkeys(WORKER_STATES, 0)
    for ws in state.workers.values():
        if ws.status == "paused":
            counts["paused"] += 1
        elif ws.status == "closing_gracefully":
            counts["retiring"] += 1
        elif ws.occupied <= 0:
            counts["idle"] += 1
        elif ws.occupied < ws.nthreads:
            counts["partially_saturated"] += 1
        else:
            counts["saturated"] += 1
    return counts


class WorkerCollector:
    """A worker's metrics, read from its state when scraped: ``memory()`` gives its
    ``process``, ``managed`` and ``spilled`` bytes."""

    def __init__(self, state: WorkerState, memory: Callable[[], dict[str, int]]):
        self.state = state
        self.memory = memory

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        state = self.state
        by_state = Counter(ts.state for ts in state.tasks.values())
        tasks = GaugeMetricFamily(
            "dask_worker_tasks", "Number of tasks at worker.", labels=["state"]
        )
        for name in WORKER_TASK_STATES:
            tasks.add_metric([name], by_state[name])
        yield tasks
        yield _gauge("dask_worker_threads", "Number of worker threads", state.nthreads)
        memory = self.memory()
        managed = memory.get("managed", 0)
        breakdown = GaugeMetricFamily(
            "dask_worker_memory_bytes", "Memory breakdown", labels=["type"]
        )
        breakdown.add_metric(["managed"], managed)
        breakdown.add_metric(["unmanaged"], max(memory.get("process", 0) - managed, 0))
        breakdown.add_metric(["spilled"], memory.get("spilled", 0))
        yield breakdown
        flights = [ts for tasks_ in state.in_flight_peers.values() for ts in tasks_]
        yield _gauge(
            "dask_worker_transfer_incoming_bytes",
            "Total size of open data transfers from other workers",
            sum(max(ts.nbytes, 0) for ts in flights),
        )
        yield _gauge(
            "dask_worker_transfer_incoming_count",
            "Number of open data transfers from other workers",
            len(state.in_flight_peers),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
