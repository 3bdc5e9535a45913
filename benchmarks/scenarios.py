"""Scenario registry and the scenarios themselves.

A scenario is a function decorated with :func:`scenario`.  By default it receives
``(lib, client, quick)``: a connected client on a fresh ``LocalCluster`` started by the
harness, whose start-up is not timed.  With ``own_cluster=True`` it receives
``(lib, cluster_kwargs, quick)`` instead and creates (and closes) its own cluster, so
that start-up and shutdown can be measured.  Either way it returns a dict of figures.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from benchmarks.tasks import add, inc, noop

Figures = dict[str, float]
ScenarioFn = Callable[[ModuleType, Any, bool], Figures]

CLUSTER_KINDS = ("processes", "threads")


@dataclass(frozen=True)
class Scenario:
    """A registered benchmark scenario."""

    name: str
    fn: ScenarioFn
    headline: str  # key of the figure compared between libraries
    unit: str  # unit of the headline figure, for display
    higher_is_better: bool
    details: tuple[str, ...] = ()  # further figures shown next to the headline
    own_cluster: bool = False  # fn gets cluster kwargs and builds its own cluster
    kinds: tuple[str, ...] = CLUSTER_KINDS
    better: str = "faster"  # word for "distributary wins", e.g. "2.3x faster"
    worse: str = "slower"


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, **options: Any) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register the decorated function as scenario ``name`` (options: see ``Scenario``)."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS:
            raise ValueError(f"duplicate scenario {name!r}")
        SCENARIOS[name] = Scenario(name=name, fn=fn, **options)
        return fn

    return register


def cluster_kwargs(kind: str) -> dict[str, Any]:
    """Return the ``LocalCluster`` keyword arguments for a cluster kind."""
    if kind not in CLUSTER_KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}")
    return {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": kind == "processes",
        "dashboard_address": None,
        "silence_logs": logging.CRITICAL,
    }


@scenario("latency", headline="median_ms", unit="ms", higher_is_better=False, details=("p90_ms",))
def latency(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """Round-trip time of ``client.submit(inc, i).result()``, one task at a time."""
    warmup, rounds = (5, 50) if quick else (20, 200)
    samples = []
    for i in range(warmup + rounds):
        start = time.perf_counter()
        result = client.submit(inc, i).result()
        elapsed = time.perf_counter() - start
        if result != i + 1:
            raise AssertionError(f"inc({i}) returned {result!r}")
        if i >= warmup:
            samples.append(elapsed * 1000)
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": statistics.quantiles(samples, n=10)[8],
        "min_ms": min(samples),
        "rounds": rounds,
    }


@scenario(
    "map-throughput",
    headline="tasks_per_s",
    unit="tasks/s",
    higher_is_better=True,
    details=("seconds",),
)
def map_throughput(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """Tasks per second of ``client.map`` over independent no-op tasks plus ``gather``."""
    n = 1_000 if quick else 10_000
    start = time.perf_counter()
    futures = client.map(noop, range(n))
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    if len(results) != n:
        raise AssertionError(f"gathered {len(results)} results, expected {n}")
    return {"tasks_per_s": n / elapsed, "seconds": elapsed, "tasks": n}


@scenario(
    "tree-reduction",
    headline="tasks_per_s",
    unit="tasks/s",
    higher_is_better=True,
    details=("seconds",),
)
def tree_reduction(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """Pairwise reduction of ``inc`` leaves with ``add``, submitted level by level."""
    leaves = 100 if quick else 1_000
    start = time.perf_counter()
    level = client.map(inc, range(leaves))
    while len(level) > 1:
        paired = [client.submit(add, a, b) for a, b in zip(level[::2], level[1::2])]
        level = paired + level[len(paired) * 2 :]
    total = level[0].result()
    elapsed = time.perf_counter() - start
    expected = sum(range(leaves)) + leaves
    if total != expected:
        raise AssertionError(f"reduction gave {total!r}, expected {expected}")
    tasks = 2 * leaves - 1
    return {"tasks_per_s": tasks / elapsed, "seconds": elapsed, "tasks": tasks}


@scenario(
    "cluster-lifecycle",
    headline="total_s",
    unit="s",
    higher_is_better=False,
    details=("start_s", "close_s"),
    own_cluster=True,
)
def cluster_lifecycle(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """Time to start a cluster and connect a client with all workers, then to close both."""
    start = time.perf_counter()
    cluster = lib.LocalCluster(**kwargs)
    client = lib.Client(cluster)
    client.wait_for_workers(kwargs["n_workers"])
    started = time.perf_counter()
    if client.submit(inc, 1).result() != 2:
        raise AssertionError("inc(1) != 2")
    closing = time.perf_counter()
    client.close()
    cluster.close()
    closed = time.perf_counter()
    start_s, close_s = started - start, closed - closing
    return {"total_s": start_s + close_s, "start_s": start_s, "close_s": close_s}
