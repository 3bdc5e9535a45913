"""Where data is held: replicate and rebalance (and their pure plans), scatter to chosen
workers, metadata, and the workers a restart brings back; real schedulers and workers
over TCP (worker processes too)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import apoll, gen_cluster, poll

from distributary import Client, LocalCluster
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.replicas import CopyReplicas, DropReplicas, plan_copies, plan_moves
from distributary.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def fail(x):
    raise ZeroDivisionError("no")


def holders(s, key) -> set:
    """The workers the scheduler says hold ``key``."""
    ts = s.state.tasks.get(key)
    return set() if ts is None else {ws.address for ws in ts.who_has}


def keeping(workers, key) -> set:
    """The workers that hold ``key`` in their data."""
    return {w.address for w in workers if key in w.data}


async def settled(s, workers, keys) -> None:
    """Until what the scheduler says of each key is what the workers hold."""
    await apoll(lambda: all(holders(s, k) == keeping(workers, k) for k in keys))


def has(key, dask_worker=None) -> bool:
    return key in dask_worker.data


def ran(s, key) -> int:
    return [finish for _, _, finish, _ in s.story(key)].count("processing")


# ---------------------------------------------------------------------- the pure plans

A, B, C = "tcp://10.0.0.1:1", "tcp://10.0.0.2:2", "tcp://10.0.0.3:3"


def pure_state(held: dict) -> SchedulerState:
    """A state with workers A, B, C and the keys of ``held`` ({key: holders}) in memory."""
    state = SchedulerState(validate=True)
    state.handle(*(ev.AddWorker(f"add-{w}", w, 1) for w in (A, B, C)))
    nbytes = dict.fromkeys(held, 100)
    state.handle(ev.ScatterData("s", who_has=held, nbytes=nbytes, client="me"))
    return state


def test_drop_replicas_keeps_the_last_copy_and_tells_the_workers():
    state = pure_state({"x": (A, B), "y": (A,)})
    out = state.handle(DropReplicas("drop", {A: ["x", "y"], B: ["x"], C: ["nope"]}))
    assert {ws.address for ws in state.tasks["x"].who_has} == {B}  # A's went, B's is last
    assert {ws.address for ws in state.tasks["y"].who_has} == {A}
    assert [(i.worker, i.keys) for i in out if isinstance(i, ins.FreeKeys)] == [(A, ("x",))]
    assert state.workers[A].nbytes == 100 and state.workers[B].nbytes == 100


def test_copy_replicas_asks_for_keys_in_memory_not_held_there():
    state = pure_state({"x": (A,), "y": (B,)})
    out = state.handle(CopyReplicas("copy", {C: ["x", "y", "nope"], A: ["x"]}))
    (acquire,) = [i for i in out if isinstance(i, ins.AcquireReplicas)]
    assert acquire.worker == C and acquire.who_has == {"x": (A,), "y": (B,)}
    assert {ws.address for ws in state.tasks["x"].who_has} == {A}  # not until add-keys


def test_plans_spread_copies_and_even_out_bytes():
    state = pure_state({f"k{i}": (A,) for i in range(6)})
    workers = list(state.workers.values())
    tasks = list(state.tasks.values())
    copies = plan_copies(tasks, workers, n=3, branching_factor=1)  # one new copy per holder
    assert sorted(map(len, copies.values())) == [3, 3] and A not in copies
    moves = plan_moves(None, workers)
    assert len(moves) == 4 and {sender for _, sender, _ in moves} == {A}
    assert sorted(recipient for _, _, recipient in moves) == [B, B, C, C]


# ---------------------------------------------------------------------- replicate


@gen_cluster(nthreads=(1, 1, 1))
async def test_replicate_onto_every_worker_then_fewer_copies(c, s, a, b, w):
    workers = [a, b, w]
    x = c.submit(inc, 1, key="x")
    assert await x == 2
    await c.replicate([x])
    assert holders(s, "x") == keeping(workers, "x") == {a.address, b.address, w.address}
    await c.replicate([x], n=1)  # copies beyond n are dropped
    await settled(s, workers, ["x"])
    assert len(holders(s, "x")) == 1
    await c.replicate(x, n=2)
    assert len(holders(s, "x")) == 2
    await settled(s, workers, ["x"])
    assert ran(s, "x") == 1  # copied, never computed again
    assert await c.submit(inc, x) == 3


@gen_cluster(nthreads=(1, 1, 1))
async def test_replicate_onto_chosen_workers(c, s, a, b, w):
    futures = [c.submit(inc, i, key=f"on-a-{i}", workers=[a.address]) for i in range(3)]
    await c.gather(futures)
    await c.replicate(futures, workers=[b.address, w.address])
    for future in futures:
        assert holders(s, future.key) == {a.address, b.address, w.address}
    await c.replicate(futures, n=1, workers=[b.address, w.address])
    await settled(s, [a, b, w], [f.key for f in futures])
    for future in futures:  # the copy on a, outside those workers, stays
        assert a.address in holders(s, future.key) and len(holders(s, future.key)) == 2


@gen_cluster(nthreads=(1, 1))
async def test_replicate_bad_input_is_a_clear_error_and_the_cluster_works(c, s, a, b):
    x = c.submit(inc, 1)
    await x
    with pytest.raises(ValueError, match="n must be at least 1"):
        await c.replicate([x], n=0)
    with pytest.raises(ValueError, match="No such worker"):
        await c.replicate([x], workers=["tcp://127.0.0.1:1"])
    with pytest.raises(ValueError, match="branching_factor"):
        await c.replicate([x], branching_factor=0)
    with pytest.raises(TypeError, match="colour"):
        await c.replicate([x], colour="red")
    bad = c.submit(fail, 1)
    with pytest.raises(KeyError, match="without data"):
        await c.replicate([bad])
    with pytest.raises(KeyError, match="without data"):
        await c.rebalance([bad])
    await c.replicate([x], n=5)  # more than there are workers: on each
    assert holders(s, x.key) == {a.address, b.address}
    assert await c.submit(inc, x) == 3


@gen_cluster(nthreads=(1, 1, 1))
async def test_scheduler_methods_replicate_and_rebalance(c, s, a, b, w):
    x = c.submit(inc, 1, key="x")
    await x
    assert (await s.replicate(keys=["x"], n=2))["status"] == "OK"
    assert len(holders(s, "x")) == 2
    assert await s.replicate(keys=["x", "nope"]) == {"status": "partial-fail", "keys": ("nope",)}
    assert (await s.rebalance())["status"] == "OK"
    assert (await s.rebalance(keys=["nope"]))["status"] == "partial-fail"


# ---------------------------------------------------------------------- rebalance


def nbytes_by_worker(s) -> list[int]:
    return sorted(ws.nbytes for ws in s.state.workers.values())


@gen_cluster(nthreads=(1, 1, 1))
async def test_rebalance_evens_out_the_bytes_held(c, s, a, b, w):
    arrays = [np.full(100_000, i, dtype="u1") for i in range(12)]
    futures = await c.scatter(arrays, workers=[a.address])  # all on a
    await c.rebalance()  # (ordered after the scatter on the client's stream)
    held = nbytes_by_worker(s)
    assert held[-1] - held[0] <= 100_200, held  # one array of difference at most
    await settled(s, [a, b, w], [f.key for f in futures])
    for future in futures:
        assert len(holders(s, future.key)) == 1  # moved, not copied
    assert [int(x[0]) for x in await c.gather(futures)] == list(range(12))


@gen_cluster(nthreads=(1, 1, 1))
async def test_rebalance_of_chosen_futures_among_chosen_workers(c, s, a, b, w):
    mine = await c.scatter([np.full(100_000, i, dtype="u1") for i in range(4)], workers=[a.address])
    others = await c.scatter(
        [np.full(100_001, 10 + i, dtype="u1") for i in range(4)], workers=[a.address]
    )
    await c.rebalance(mine, workers=[a.address, b.address])
    await settled(s, [a, b, w], [f.key for f in mine + others])
    assert keeping([w], mine[0].key) == set() and not w.data  # w was left out
    assert all(holders(s, f.key) == {a.address} for f in others)  # not asked to move
    # a held twice the mean of a and b: what of it could move went to b
    assert all(holders(s, f.key) == {b.address} for f in mine)


# ---------------------------------------------------------------------- scatter


@gen_cluster(nthreads=(1, 1, 1))
async def test_scatter_to_chosen_workers_and_broadcast(c, s, a, b, w):
    everywhere = await c.scatter([1, 2], broadcast=True)
    some = await c.scatter({"p": 3}, workers=[a.address, b.address], broadcast=True)
    two = await c.scatter([4, 5, 6], broadcast=2)
    host, port = b.address.removeprefix("tcp://").split(":")
    by_host_port = await c.scatter(7, workers=[(host, int(port))])
    await apoll(lambda: by_host_port.key in s.state.tasks)
    assert all(holders(s, f.key) == {a.address, b.address, w.address} for f in everywhere)
    assert holders(s, some["p"].key) == {a.address, b.address}
    assert [len(holders(s, f.key)) for f in two] == [2, 2, 2]
    assert holders(s, by_host_port.key) == {b.address}
    assert await c.gather([everywhere, some, two, by_host_port]) == [[1, 2], {"p": 3}, [4, 5, 6], 7]
    with pytest.raises(TimeoutError, match="No workers to scatter data to among"):
        await c.scatter(8, workers=["tcp://127.0.0.1:1"], timeout=0.2)


# ---------------------------------------------------------------------- metadata


@gen_cluster(nthreads=(1,))
async def test_metadata_nested_paths_defaults_and_errors(c, s, a):
    await c.set_metadata("x", 123)
    assert await c.get_metadata("x") == 123
    await c.set_metadata(["x", "y"], 123)  # x is no dict: it becomes one
    assert await c.get_metadata("x") == {"y": 123}
    await c.set_metadata(["x", "w", "z"], 456)
    assert await c.get_metadata("x") == {"y": 123, "w": {"z": 456}}
    assert await c.get_metadata(["x", "w"]) == {"z": 456}
    await c.set_metadata(("a", 1), [1, 2])  # a tuple is one key, as dask keys are
    assert await c.get_metadata(("a", 1)) == [1, 2]
    with pytest.raises(KeyError, match="nope"):
        await c.get_metadata("nope")
    with pytest.raises(KeyError):
        await c.get_metadata(["x", "y", "deeper"])
    assert await c.get_metadata(["x", "nope", "deeper"], default=None) is None
    assert await c.get_metadata("nope", default=5) == 5
    with pytest.raises(ValueError, match="at least one key"):
        await c.set_metadata([], 1)
    assert s.metadata.task_metadata["x"]["w"] == {"z": 456}
    assert await c.submit(inc, 1) == 2


# ---------------------------------------------------------------------- restart


def test_restart_of_in_process_workers_brings_as_many_back():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp") as cluster,
        Client(cluster) as c,
    ):
        old = set(cluster.scheduler.workers)
        x = c.submit(inc, 1)
        assert x.result(timeout=10) == 2
        c.restart(timeout=20)
        assert len(cluster.scheduler.workers) == 2 and not old & set(cluster.scheduler.workers)
        assert x.cancelled()
        assert c.submit(inc, 10).result(timeout=10) == 11


# ---------------------------------------------------------------------- worker processes


def test_replicate_and_rebalance_between_worker_processes(processes):
    cluster, c = processes
    s = cluster.scheduler
    a, b = sorted(s.workers)
    x = c.submit(inc, 1, workers=[a])
    assert x.result(timeout=10) == 2
    c.replicate([x])
    assert holders(s, x.key) == {a, b}
    assert c.run(has, x.key) == {a: True, b: True}
    c.replicate([x], n=1)
    poll(lambda: sum(c.run(has, x.key).values()) == 1)
    futures = c.scatter([np.full(100_000, i, dtype="u1") for i in range(6)], workers=[a])
    c.rebalance(futures)
    assert len({next(iter(holders(s, f.key))) for f in futures}) == 2
    assert [int(v[0]) for v in c.gather(futures)] == list(range(6))
