"""The worker's internal state under the names dask.distributed's docstring gives it
(``worker/legacy.py``): every attribute of the spec's "State" lists exists on a running
worker, and the views tell what the worker's state machine holds."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from conftest import apoll, gen_cluster
from spec_api import SPEC

from distributary import get_worker, secede


def documented_state() -> list[str]:
    """The attribute names of the Worker docstring's "State" lists."""
    text = (SPEC / "worker_nanny_api.txt").read_text()
    state = text[text.index("Informational State") : text.index("Parameters:")]
    return re.findall(r"^  • ([a-z_.]+)", state, flags=re.MULTILINE)


def test_the_spec_lists_are_read():
    names = documented_state()
    assert len(names) == 44
    assert {"task_state", "in_flight_workers", "resource_restrictions"} <= set(names)


@gen_cluster(nthreads=(1, 1))
async def test_every_documented_attribute_exists(c, s, a, b):
    for name in documented_state():
        if "." not in name:  # (data.memory and data.disk are the spill buffer's)
            getattr(a, name)  # (raises if missing)


RELEASE = threading.Event()  # (the workers run in this process)


def blocked_on(x: int) -> int:
    RELEASE.wait(10)
    return x + 1


@gen_cluster(nthreads=(1, 1))
async def test_the_views_show_a_task_running_on_fetched_data(c, s, a, b):
    x = c.submit(lambda: 41, key="x", workers=[a.address])
    await x
    RELEASE.clear()
    y = c.submit(blocked_on, x, key="y", workers=[b.address])
    await apoll(lambda: "y" in b.executing)
    assert b.task_state["y"] == "executing" and b.task_state["x"] == "memory"
    assert b.dependencies["y"] == {"x"} and b.dependents["x"] == {"y"}
    assert b.dep_state == {"x": "memory"}
    assert b.nbytes["x"] > 0 and a.types["x"] == "int"
    assert list(b.active_threads.values()) == ["y"]
    assert next(iter(b.active_threads)) in {t.ident for t in threading.enumerate()}
    assert b.priorities["y"] and b.ready == [] and b.constrained == []
    assert b.in_flight_tasks == {} and b.comm_bytes == 0 and b.data_needed == []
    assert ("x", "flight", "memory") in [entry[:3] for entry in b.log]
    assert b.tasks["y"].state == "executing"
    assert a.task_state == {"x": "memory"}
    RELEASE.set()
    assert await y == 42
    await apoll(lambda: "y" not in b.executing)
    assert b.active_threads == {}
    assert (a.executed_count, b.executed_count) == (1, 1)
    assert b.threads["y"] in {t.ident for t in threading.enumerate()}
    actions = [action for action, _, _ in b.startstops["y"]]
    assert actions == ["transfer", "compute"] and b.exceptions == b.tracebacks == {}
    assert 0 < b.durations["y"] < 10 and b.suspicious_deps == {}


def fails() -> None:
    raise ZeroDivisionError("nope")


@gen_cluster(nthreads=(1,))
async def test_the_views_keep_the_errors_of_tasks_that_ran(c, s, a):
    f = c.submit(fails, key="bad")
    with pytest.raises(ZeroDivisionError):
        await f
    assert "ZeroDivisionError" in a.exceptions["bad"] and "fails" in a.tracebacks["bad"]


def seceded() -> str:
    secede()
    RELEASE.wait(10)
    return get_worker().address


@gen_cluster(nthreads=(1,))
async def test_long_running_and_resource_views(c, s, a):
    RELEASE.clear()
    f = c.submit(seceded, key="long")
    await apoll(lambda: "long" in a.long_running)
    RELEASE.set()
    assert await f == a.address
    await asyncio.wait_for(apoll(lambda: not a.long_running), 5)
    assert a.total_out_connections >= 1 and a.total_in_connections >= 1
    assert a.total_comm_nbytes > 0 and a.batched_stream is a.batched
    assert a.service_ports == {"dashboard": a.services["dashboard"].services["dashboard"]}
