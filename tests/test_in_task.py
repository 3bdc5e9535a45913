"""Tasks that talk to the cluster: get_worker, get_client, worker_client, secede and
rejoin, on in-process workers and on one-thread worker processes under nannies."""

from __future__ import annotations

import os

import pytest

from distributary import (
    Client,
    LocalCluster,
    default_client,
    get_client,
    get_worker,
    rejoin,
    secede,
    worker_client,
)


def fib_get_client(n: int) -> int:
    if n < 2:
        return n
    client = get_client()
    a, b = client.submit(fib_get_client, n - 1), client.submit(fib_get_client, n - 2)
    return a.result() + b.result()


def fib_worker_client(n: int) -> int:
    if n < 2:
        return n
    with worker_client() as client:
        a, b = client.submit(fib_worker_client, n - 1), client.submit(fib_worker_client, n - 2)
        return a.result() + b.result()


def chain(n: int) -> int:
    """A chain of nested tasks, each submitting the next and waiting for it."""
    if n == 0:
        return 0
    return get_client().submit(chain, n - 1).result() + 1


def which_client() -> tuple:
    first, second = get_client(), get_client()
    return os.getpid(), id(first), id(second), first.scheduler_address


def is_the_default_client() -> bool:
    return get_client() is default_client()


def current_task() -> object:
    return get_worker().get_current_task()


def secede_and_wait_on_a_task() -> int:
    """Only runs to the end if its thread is free for the task it submits."""
    client = get_client()
    secede()
    result = client.submit(lambda: 41).result()
    rejoin()
    rejoin()  # not seceded any more: goes on at once
    return result + 1


@pytest.fixture
def processes():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        yield cluster


@pytest.fixture
def pc(processes):
    with Client(processes) as client:
        yield client


@pytest.mark.timeout(120)
def test_recursive_fib_through_get_client_on_one_thread_workers(pc):
    assert pc.submit(fib_get_client, 12).result() == 144


@pytest.mark.timeout(120)
def test_recursive_fib_through_worker_client_on_one_thread_workers(pc):
    assert pc.submit(fib_worker_client, 12).result() == 144


@pytest.mark.timeout(120)
def test_a_chain_of_fifty_nested_tasks(pc):
    assert pc.submit(chain, 50).result() == 50


@pytest.mark.timeout(60)
def test_one_client_per_worker_process_reused(pc, processes):
    results = pc.gather([pc.submit(which_client, pure=False) for _ in range(6)])
    for _pid, first, second, address in results:
        assert first == second and address == processes.scheduler_address
    by_pid: dict = {}
    for pid, first, _, _ in results:
        by_pid.setdefault(pid, set()).add(first)
    assert all(len(ids) == 1 for ids in by_pid.values()), by_pid


@pytest.mark.timeout(60)
def test_secede_frees_the_thread_and_rejoin_takes_one_again(pc):
    assert pc.submit(secede_and_wait_on_a_task).result() == 42


@pytest.mark.timeout(60)
def test_get_client_in_a_task_of_in_process_workers_is_the_default_client(c):
    assert c.submit(is_the_default_client).result()
    assert c.submit(fib_get_client, 8).result() == 21
    assert c.submit(current_task, key="the-key").result() == "the-key"


@pytest.mark.timeout(30)
def test_outside_a_task_each_raises_a_clear_value_error():
    for call in (get_worker, secede, rejoin):
        with pytest.raises(ValueError, match="No worker found"):
            call()
    with pytest.raises(ValueError, match="No worker found"), worker_client():
        pass
    with pytest.raises(ValueError, match="No clients found"):
        get_client()
