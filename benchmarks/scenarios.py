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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from benchmarks.tasks import (
    add,
    first_started,
    inc,
    mark_and_sleep,
    noop,
    sleep_20ms,
    sleep_50ms,
    stamped_inc,
)

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
    timeout: float = 300  # seconds per run unless --timeout is given


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
    "lock-round-trips",
    headline="per_s",
    unit="round trips/s",
    higher_is_better=True,
    details=("seconds",),
)
def lock_round_trips(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """``lock.acquire(); lock.release()`` of one named Lock from the client, in a loop."""
    rounds = 100 if quick else 1_000
    lock = lib.Lock("benchmark-lock")  # (the client is the default one)
    for _ in range(10):  # warm-up
        lock.acquire()
        lock.release()
    start = time.perf_counter()
    for _ in range(rounds):
        if not lock.acquire():
            raise AssertionError("acquire returned False")
        lock.release()
    seconds = time.perf_counter() - start
    if lock.locked():
        raise AssertionError("the lock is still held")
    return {"per_s": rounds / seconds, "seconds": seconds, "rounds": rounds}


@scenario(
    "queue-put-get",
    headline="items_per_s",
    unit="items/s",
    higher_is_better=True,
    details=("seconds",),
)
def queue_put_get(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """``queue.put(i)`` of 2,000 items from the client, then as many ``queue.get()``."""
    items = 200 if quick else 2_000
    queue = lib.Queue("benchmark-queue")
    queue.put(-1)
    queue.get()  # warm-up
    start = time.perf_counter()
    for i in range(items):
        queue.put(i)
    got = [queue.get() for _ in range(items)]
    seconds = time.perf_counter() - start
    if got != list(range(items)):
        raise AssertionError("the queue gave the items back out of order or changed")
    return {"items_per_s": items / seconds, "seconds": seconds, "items": items}


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


@scenario(
    "unbalanced-map",
    headline="makespan_s",
    unit="s",
    higher_is_better=False,
    details=("workers_used",),
    own_cluster=True,
)
def unbalanced_map(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """80 tasks of 50 ms placed on the first of four one-thread workers, with
    ``allow_other_workers=True``: 1 s if the load is balanced, 4 s if it is not."""
    n = 20 if quick else 80
    with connected(lib, {**kwargs, "n_workers": 4}) as (_, client):
        first = sorted(client.scheduler_info()["workers"])[0]
        client.submit(sleep_50ms, -1, workers=[first], pure=False).result()  # (warm-up)
        start = time.perf_counter()
        futures = client.map(
            sleep_50ms, range(n), workers=[first], allow_other_workers=True, pure=False
        )
        if client.gather(futures) != list(range(n)):
            raise AssertionError("wrong results")
        makespan = time.perf_counter() - start
        used = {w for holders in client.who_has(futures).values() for w in holders}
    return {"makespan_s": makespan, "workers_used": len(used)}


@scenario(
    "adapt",
    headline="total_s",
    unit="s",
    higher_is_better=False,
    details=("results_s", "down_s", "max_workers"),
    own_cluster=True,
    timeout=180,
)
def adapt(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """``cluster.adapt(minimum=0, maximum=4)`` on a cluster of no workers, then a burst of
    400 tasks of 20 ms: seconds until all results are in, then (futures released) until
    no worker is left; Adaptive's defaults (1 s interval, 3 checks before scaling down)."""
    n = 100 if quick else 400
    with connected(lib, {**kwargs, "n_workers": 0}) as (cluster, client):

        def workers() -> int:
            return len(client.scheduler_info()["workers"])

        start = time.perf_counter()
        cluster.adapt(minimum=0, maximum=4)
        futures = client.map(sleep_20ms, range(n), pure=False)
        most = 0
        while not all(future.done() for future in futures):  # (noting the workers there are)
            most = max(most, workers())
            time.sleep(0.02)
        results = time.perf_counter()
        if client.gather(futures) != list(range(n)):
            raise AssertionError("wrong results")
        del futures
        deadline = results + 120
        while workers():
            if time.perf_counter() > deadline:
                raise AssertionError(f"{workers()} workers left 120 s after the results")
            time.sleep(0.02)
        down = time.perf_counter()
    return {
        "total_s": down - start,
        "results_s": results - start,
        "down_s": down - results,
        "max_workers": most,
    }


@scenario(
    "recovery",
    headline="median_s",
    unit="s",
    higher_is_better=False,
    details=("max_s", "replaced_s"),
    own_cluster=True,
    kinds=("processes",),
)
def recovery(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """Time from SIGKILL of a worker process to its task running again on another worker.

    A long task is pinned to one worker (``allow_other_workers=True``) and leaves a marker
    file named after its process and start time; the benchmark kills that process and
    waits for a marker from another process; then it lets the task finish.  Also
    shown: ``replaced_s``, from the kill until the nanny's new worker is connected.
    """
    import os
    import signal
    import tempfile

    rounds = 2 if quick else 5
    samples: list[float] = []
    replaced: list[float] = []
    with connected(lib, kwargs) as (_, client), tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            client.wait_for_workers(kwargs["n_workers"])
            target = sorted(client.scheduler_info()["workers"])[0]
            before = set(os.listdir(directory))
            future = client.submit(
                mark_and_sleep,
                directory,
                60,
                workers=[target],
                allow_other_workers=True,
                pure=False,
            )
            (marker,) = _new_markers(directory, before, 30)
            victim = int(marker.split("-")[0])
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            rerun = _new_markers(directory, before | {marker}, 30)[0]  # (the victim is dead)
            samples.append(float(rerun.split("-", 1)[1]) - killed)
            replaced.append(_replaced_after(client, target, kwargs["n_workers"]) - killed)
            open(os.path.join(directory, "stop"), "w").close()
            future.result()
            os.remove(os.path.join(directory, "stop"))
    return {
        "median_s": statistics.median(samples),
        "max_s": max(samples),
        "replaced_s": statistics.median(replaced),
    }


def _replaced_after(client: Any, gone: str, n_workers: int) -> float:
    """Wait until ``n_workers`` workers, none of them ``gone``, are connected; the time."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = client.scheduler_info()["workers"]
        if len(workers) == n_workers and gone not in workers:
            return time.time()
        time.sleep(0.002)
    raise TimeoutError(f"the killed worker was not replaced within 30 s: {workers}")


def _new_markers(directory: str, seen: set[str], timeout: float) -> list[str]:
    import os

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(set(os.listdir(directory)) - seen)
        if new:
            return new
        time.sleep(0.002)
    raise TimeoutError(f"no new marker in {directory} within {timeout} s")


# ---------------------------------------------------------------------------------------
# Collections and large graphs.  These run on the process-based cluster only.  Heavy
# imports (numpy, pandas, dask.array, dask.dataframe, psutil) happen inside the scenarios
# so that the scenarios above do not need them.


@contextmanager
def connected(lib: ModuleType, kwargs: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """Start ``LocalCluster(**kwargs)`` and a client with all workers; close both after."""
    with lib.LocalCluster(**kwargs) as cluster, lib.Client(cluster) as client:
        if kwargs["n_workers"]:
            client.wait_for_workers(kwargs["n_workers"])
        yield cluster, client


def _timed_compute(client: Any, expr: Any) -> tuple[Any, Figures]:
    """``client.compute(expr).result()``, with ``seconds`` from the call to the result and
    ``submit_s`` until ``compute`` returned."""
    start = time.perf_counter()
    future = client.compute(expr)
    submitted = time.perf_counter()
    result = future.result()
    elapsed = time.perf_counter() - start
    return result, {"seconds": elapsed, "submit_s": submitted - start}


@scenario(
    "array-mean",
    headline="seconds",
    unit="s",
    higher_is_better=False,
    details=("submit_s",),
    kinds=("processes",),
)
def array_mean(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """``client.compute((x + x.T).mean()).result()`` on a random array of 100 chunks."""
    import dask
    import dask.array as da
    import numpy as np

    n = 1_000 if quick else 4_000
    x = da.random.default_rng(0).random((n, n), chunks=n // 10)
    expr = (x + x.T).mean()
    # Reference values, computed in this process before the timed part: the same graph on
    # dask's local threaded scheduler, and numpy on the very same (seeded) data.
    (expected,) = dask.compute(expr, scheduler="threads")
    data = x.compute(scheduler="threads")
    reference = float((data + data.T).mean())
    del data
    if not np.isclose(expected, reference, rtol=1e-9, atol=0):
        raise AssertionError(f"threaded dask gave {expected!r}, numpy {reference!r}")

    result, figures = _timed_compute(client, expr)
    if not np.isclose(result, expected, rtol=1e-9, atol=0):
        raise AssertionError(f"mean is {result!r}, expected {expected!r}")
    return {
        **figures,
        "chunks": x.npartitions,
        "tasks": len(expr.__dask_graph__()),
    }


@scenario(
    "dataframe-groupby",
    headline="seconds",
    unit="s",
    higher_is_better=False,
    details=("submit_s",),
    kinds=("processes",),
)
def dataframe_groupby(lib: ModuleType, client: Any, quick: bool) -> Figures:
    """``client.compute(df.groupby("k").x.mean()).result()`` on 20 in-memory partitions."""
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    rows = 1_000_000 if quick else 10_000_000
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"k": rng.integers(0, 1_000, rows), "x": rng.random(rows)})
    expected = pdf.groupby("k").x.mean()
    ddf = dd.from_pandas(pdf, npartitions=20)
    expr = ddf.groupby("k").x.mean()

    result, figures = _timed_compute(client, expr)
    del expr, ddf, pdf
    result = result.sort_index()
    if not result.index.equals(expected.index):
        raise AssertionError(f"got {len(result)} groups, expected {len(expected)}")
    if not np.allclose(result.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=0):
        raise AssertionError("group means differ from pandas")
    return {
        **figures,
        "rows": rows,
        "groups": len(expected),
    }


def _earliest_stamp(client: Any) -> float:
    """The earliest :func:`stamped_inc` start time across the client's workers."""
    workers = client.scheduler_info()["workers"]
    asked = [client.submit(first_started, workers=[w], pure=False) for w in workers]
    stamps = [t for t in client.gather(asked) if t is not None]
    if not stamps:
        raise AssertionError("no worker ran stamped_inc")
    return min(stamps)


@scenario(
    "graph-100k",
    headline="map_total_s",
    unit="s",
    higher_is_better=False,
    details=(
        "map_first_task_s",
        "map_first_s",
        "tree_accept_s",
        "tree_first_task_s",
        "tree_total_s",
    ),
    own_cluster=True,
    kinds=("processes",),
    timeout=1800,
)
def graph_100k(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """Schedule many small tasks: a two-step ``client.map`` chain, then a delayed tree.

    Each part gets a fresh cluster (start-up not timed), so the tree does not share the
    scheduler with the released map futures.  ``*_first_task_s`` is the time from
    submission until the first task began on a worker (the earliest wall-clock stamp the
    root tasks left in the worker processes).
    """
    import dask

    tasks = 10_000 if quick else 100_000
    figures: Figures = {"tasks": tasks}

    # (a) client.map(inc, range(tasks / 2)) followed by client.map(inc, <those futures>).
    half = tasks // 2
    with connected(lib, kwargs) as (_, client):
        wall_start, start = time.time(), time.perf_counter()
        a = client.map(stamped_inc, range(half))
        b = client.map(inc, a)
        submitted = time.perf_counter()
        first = b[0].result()
        first_done = time.perf_counter()
        lib.wait(b)
        done = time.perf_counter()
        results = client.gather(b)
        first_task = _earliest_stamp(client) - wall_start
        del a, b
    if first != 2 or results != list(range(2, half + 2)):
        raise AssertionError("client.map chain gave wrong results")
    del results
    figures.update(
        map_submit_s=submitted - start,
        map_first_task_s=first_task,
        map_first_s=first_done - start,
        map_total_s=done - start,
    )

    # (b) ``tasks`` delayed leaves inc(i), reduced pairwise with add into a binary tree.
    build = time.perf_counter()
    delayed_inc, delayed_add = dask.delayed(stamped_inc), dask.delayed(add)
    level = [delayed_inc(i) for i in range(tasks)]
    while len(level) > 1:
        paired = [delayed_add(x, y) for x, y in zip(level[::2], level[1::2])]
        level = paired + level[len(paired) * 2 :]
    (tree,) = level
    del level, paired
    figures["tree_build_s"] = time.perf_counter() - build
    with connected(lib, kwargs) as (_, client):
        wall_start, start = time.time(), time.perf_counter()
        future = client.compute(tree)
        accepted = time.perf_counter()
        total = future.result()
        done = time.perf_counter()
        first_task = _earliest_stamp(client) - wall_start
        del future
    if total != sum(range(tasks)) + tasks:
        raise AssertionError(f"tree reduction gave {total!r}")
    figures.update(
        tree_tasks=2 * tasks - 1,
        tree_accept_s=accepted - start,
        tree_first_task_s=first_task,
        tree_total_s=done - start,
    )
    return figures


@scenario(
    "scheduler-memory",
    headline="bytes_per_task",
    unit="B/task",
    higher_is_better=False,
    details=("growth_mb",),
    own_cluster=True,
    kinds=("processes",),
    better="less memory",
    worse="more memory",
    timeout=900,
)
def scheduler_memory(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """RSS growth of the process hosting the scheduler while finished tasks are held.

    With ``processes=True`` the scheduler runs in this process and only the workers are
    subprocesses; the growth therefore also includes this client's futures.
    """
    import gc

    import psutil

    tasks = 10_000 if quick else 100_000
    process = psutil.Process()

    def rss_after_settling() -> int:
        time.sleep(0.5)  # let pending messages (results, releases) be handled
        gc.collect()
        return process.memory_info().rss

    with connected(lib, kwargs) as (cluster, client):
        if not isinstance(cluster.scheduler, lib.Scheduler):
            raise AssertionError(f"scheduler is not in this process: {cluster.scheduler!r}")
        # Warm-up with other keys, then release them.
        warmup = client.map(inc, range(-1_000, 0))
        if client.gather(warmup) != list(range(-999, 1)):
            raise AssertionError("warm-up gave wrong results")
        del warmup
        before = rss_after_settling()
        futures = client.map(inc, range(tasks))
        lib.wait(futures)
        after = rss_after_settling()
        ok = client.gather(futures) == list(range(1, tasks + 1))
        del futures
    if not ok:
        raise AssertionError("wrong results")
    growth = after - before
    return {
        "bytes_per_task": growth / tasks,
        "growth_mb": growth / 2**20,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "tasks": tasks,
    }


# ---------------------------------------------------------------------------------------
# Over TLS: the latency and map-throughput scenarios on a cluster whose connections all
# use TLS with temporary credentials (``Security.temporary()``, mutual authentication),
# on both libraries.  Compare their ratios with those of ``latency`` and
# ``map-throughput`` in the same run.


@contextmanager
def tls_connected(lib: ModuleType, kwargs: dict[str, Any]) -> Iterator[Any]:
    """A client of a fresh ``LocalCluster(security=Security.temporary(), **kwargs)``."""
    security = lib.Security.temporary()
    with lib.LocalCluster(security=security, **kwargs) as cluster, lib.Client(cluster) as client:
        if not cluster.scheduler_address.startswith("tls://"):
            raise AssertionError(f"not a TLS cluster: {cluster.scheduler_address}")
        client.wait_for_workers(kwargs["n_workers"])
        yield client


@scenario(
    "tls-latency",
    headline="median_ms",
    unit="ms",
    higher_is_better=False,
    details=("p90_ms",),
    own_cluster=True,
    kinds=("processes",),
)
def tls_latency(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """``latency`` over TLS."""
    with tls_connected(lib, kwargs) as client:
        return latency(lib, client, quick)


@scenario(
    "tls-map-throughput",
    headline="tasks_per_s",
    unit="tasks/s",
    higher_is_better=True,
    details=("seconds",),
    own_cluster=True,
    kinds=("processes",),
)
def tls_map_throughput(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """``map-throughput`` over TLS."""
    with tls_connected(lib, kwargs) as client:
        return map_throughput(lib, client, quick)


# The dashboard's scenarios register themselves (their module needs the registry above).
from benchmarks import dashboard as _dashboard  # noqa: E402, F401
