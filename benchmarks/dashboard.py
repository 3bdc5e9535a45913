"""Scenarios of the dashboard: what an open status page costs the scheduler, and how long a
cluster with a dashboard takes to start.

The page is opened in headless chromium (``/usr/bin/chromium``, or ``$CHROMIUM``) driven
by playwright, on the same machine as the cluster, as a user's browser would be.
dask.distributed's dashboard needs bokeh.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from benchmarks.scenarios import Figures, scenario
from benchmarks.tasks import inc, noop

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Seconds a page is given to load and draw before the timing starts.
SETTLE_S = 3.0


@contextmanager
def status_page(link: str) -> Iterator[Any]:
    """The page at ``link`` open in headless chromium (loaded, and given time to draw)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(link, wait_until="load")
            page.wait_for_timeout(SETTLE_S * 1000)
            yield page
        finally:
            browser.close()


def _map_rate(lib: ModuleType, kwargs: dict[str, Any], n: int, page: bool) -> float:
    """Tasks per second of ``gather(map(noop, range(n)))`` on a fresh cluster, with its
    status page open in a browser or with no dashboard at all."""
    options = {**kwargs, "dashboard_address": ":0" if page else None}
    with lib.LocalCluster(**options) as cluster, lib.Client(cluster) as client:
        client.wait_for_workers(kwargs["n_workers"])
        client.gather(client.map(inc, range(1_000)))  # (warm-up: other keys)
        link = client.dashboard_link
        if page and not link:
            raise AssertionError(f"{lib.__name__}: no dashboard link with dashboard_address=':0'")
        with status_page(link) if page else _nothing():
            start = time.perf_counter()
            results = client.gather(client.map(noop, range(n)))
            elapsed = time.perf_counter() - start
        if len(results) != n:
            raise AssertionError(f"gathered {len(results)} results, expected {n}")
    return n / elapsed


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@scenario(
    "dashboard-throughput",
    headline="ratio",
    unit="x",
    higher_is_better=True,
    details=("with_page_tasks_per_s", "without_tasks_per_s"),
    own_cluster=True,
    better="less slowed down",
    worse="more slowed down",
    timeout=1_500,  # (dask.distributed's map is slow with its page open)
)
def dashboard_throughput(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """Throughput of a 10,000-task map with the status page open in headless chromium,
    divided by the throughput with no dashboard (each on a fresh cluster; 4 rounds, in
    alternating order; medians)."""
    n, rounds = (2_000, 1) if quick else (10_000, 4)
    without, with_page = [], []
    for i in range(rounds):  # (which goes first alternates: the second run is warmer)
        for page in (False, True) if i % 2 == 0 else (True, False):
            (with_page if page else without).append(_map_rate(lib, kwargs, n, page))
    rate_without, rate_with = statistics.median(without), statistics.median(with_page)
    return {
        "ratio": rate_with / rate_without,
        "with_page_tasks_per_s": rate_with,
        "without_tasks_per_s": rate_without,
        "tasks": n,
        "rounds": rounds,
    }


@scenario(
    "dashboard-cluster-start",
    headline="first_start_s",
    unit="s",
    higher_is_better=False,
    details=("first_answer_s", "next_start_s"),
    own_cluster=True,
)
def dashboard_cluster_start(lib: ModuleType, kwargs: dict[str, Any], quick: bool) -> Figures:
    """Seconds from ``LocalCluster(dashboard_address=":0")`` until a client sees every
    worker (``*_start_s``), and until the dashboard answers too (``first_answer_s``):
    the first start in the process, which imports what the dashboard needs, and the
    median of the next ones."""
    import urllib.request

    starts, answers = [], []
    for _ in range(2 if quick else 4):
        start = time.perf_counter()
        with (
            lib.LocalCluster(**{**kwargs, "dashboard_address": ":0"}) as cluster,
            lib.Client(cluster) as client,
        ):
            client.wait_for_workers(kwargs["n_workers"])
            starts.append(time.perf_counter() - start)
            link = client.dashboard_link
            with urllib.request.urlopen(link.replace("/status", "/health"), timeout=30) as r:
                if r.read() != b"ok":
                    raise AssertionError(f"{link}: /health did not say ok")
            answers.append(time.perf_counter() - start)
    return {
        "first_start_s": starts[0],
        "first_answer_s": answers[0],
        "next_start_s": statistics.median(starts[1:]),
    }
