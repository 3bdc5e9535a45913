"""Client.run and Client.run_on_scheduler on worker processes under nannies and on
in-process workers, over TCP."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest


def pid() -> int:
    return os.getpid()


def address_of(dask_worker) -> str:
    return dask_worker.address


def fail_on(address: str, dask_worker=None) -> str:
    if dask_worker.address == address:
        raise ZeroDivisionError("only here")
    return "fine"


async def slowly(x: int, dask_worker=None) -> tuple:
    await asyncio.sleep(0)
    return x, dask_worker.address


def scheduler_facts(dask_scheduler, extra: int = 0) -> tuple:
    return dask_scheduler.address, len(dask_scheduler.workers) + extra


@pytest.mark.timeout(60)
def test_run_on_every_worker_process_and_on_chosen_ones(processes):
    cluster, c = processes
    pids = c.run(pid)
    assert set(pids) == set(cluster.scheduler.workers)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    first = sorted(pids)[0]
    assert c.run(pid, workers=[first]) == {first: pids[first]}
    assert c.run(pid, workers=first) == {first: pids[first]}  # one address alone
    assert c.run(address_of) == {a: a for a in pids}
    assert c.run(slowly, 5) == {a: (5, a) for a in pids}
    assert c.run(slowly, 6, wait=False) is None


@pytest.mark.timeout(60)
def test_run_on_the_nannies(processes):
    cluster, c = processes
    # The nannies of a LocalCluster live in this process; the function gets the nanny.
    assert set(c.run(pid, nanny=True).values()) == {os.getpid()}
    nannies = c.run(address_of, nanny=True)
    assert {w.nanny for w in cluster.scheduler.workers.values()} == set(nannies.values())


@pytest.mark.timeout(60)
def test_an_error_on_one_worker_is_raised_returned_or_ignored(processes):
    cluster, c = processes
    bad, good = sorted(cluster.scheduler.workers)
    with pytest.raises(ZeroDivisionError, match="only here"):
        c.run(fail_on, bad)
    returned = c.run(fail_on, bad, on_error="return")
    assert isinstance(returned[bad], ZeroDivisionError) and returned[good] == "fine"
    assert c.run(fail_on, bad, on_error="ignore") == {good: "fine"}
    with pytest.raises(ValueError, match="on_error must be one of"):
        c.run(pid, on_error="shrug")
    assert len(c.run(pid)) == 2  # every worker still serves


@pytest.mark.timeout(60)
def test_run_on_scheduler(c, cluster):
    assert c.run_on_scheduler(scheduler_facts, extra=1) == (cluster.scheduler_address, 3)
    assert c.run_on_scheduler(pid) == os.getpid()
    with pytest.raises(ZeroDivisionError):
        c.run_on_scheduler(lambda: 1 / 0)
    assert c.run_on_scheduler(pid) == os.getpid()  # it still serves


@pytest.mark.timeout(60)
def test_bad_input_is_a_clear_error_and_nothing_else_is_lost(c, cluster):
    with pytest.raises(TypeError, match="run needs a callable, not int"):
        c.run(5)
    lock = threading.Lock()
    with pytest.raises(TypeError, match="Could not pickle the args of pid"):
        c.run(pid, lock)
    with pytest.raises(ValueError, match="No such worker"):
        c.run(pid, workers=["tcp://127.0.0.1:1"])
    with pytest.raises(ValueError, match="without a nanny"):
        c.run(pid, nanny=True)  # in-process workers have none
    assert set(c.run(pid).values()) == {os.getpid()}
    assert c.submit(pid).result() == os.getpid()
