"""The Scheduler's documented methods (scheduler/methods.py), each called for real on a
scheduler with workers and a client over TCP, asserting what it did."""

from __future__ import annotations

import os
import threading

import pytest

from distributary import Client, LocalCluster, Scheduler, Worker
from distributary.comm.core import connect, listen
from distributary.protocol import requests as rq
from distributary.protocol.client_messages import KeyCancelled
from distributary.protocol.serialize import deserialize
from distributary.protocol.worker_messages import FreeKeys
from distributary.scheduler import placement
from distributary.scheduler.records import TaskRecord
from tests.conftest import apoll, gen_cluster, run

pytestmark = pytest.mark.timeout(60)

GATES: dict[str, threading.Event] = {}


def gated(name: str) -> int:
    """Run until the test opens the gate ``name``."""
    GATES[name].wait(10)
    return 7


def inc(x: int) -> int:
    return x + 1


def pid() -> int:
    return os.getpid()


class Gate:
    """A gate that tasks ``gated(name)`` wait on, opened when the block ends."""

    def __init__(self, name: str):
        self.name = name
        GATES[name] = threading.Event()

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc: object) -> None:
        GATES[self.name].set()  # (tasks not started yet pass it too)


async def processing(s: Scheduler, future) -> TaskRecord:
    await apoll(lambda: future.key in s.tasks and s.tasks[future.key].state == "processing")
    return s.tasks[future.key]


@gen_cluster()
async def test_stimulus_task_finished_makes_the_key_memory_and_the_future_done(c, s, a, b):
    with Gate("finished") as gate:
        future = c.submit(gated, gate)
        ts = await processing(s, future)
        s.stimulus_task_finished(key=future.key, nbytes=8, type="int")
        assert ts.state == "memory" and ts.nbytes == 8
        await apoll(lambda: future.status == "finished")
    assert await future == 7  # (the worker holds it once the task ends)
    with pytest.raises(TypeError, match="bogus"):
        s.stimulus_task_finished(key=future.key, bogus=1)


@gen_cluster()
async def test_stimulus_task_erred_errs_the_future(c, s, a, b):
    with Gate("erred") as gate:
        future = c.submit(gated, gate)
        await processing(s, future)
        s.stimulus_task_erred(key=future.key, exception=ZeroDivisionError("boom"), traceback=None)
        with pytest.raises(ZeroDivisionError, match="boom"):
            await future
    assert s.tasks[future.key].state == "erred"


@gen_cluster()
async def test_cancel_key_and_stimulus_cancel_cancel_the_clients_futures(c, s, a, b):
    with Gate("cancel") as gate:
        first, second = c.submit(gated, gate, key="g-1"), c.submit(gated, gate, key="g-2")
        await processing(s, first)
        s.cancel_key(first.key, c.id)
        await apoll(lambda: first.cancelled())
        s.stimulus_cancel(None, keys=[second.key], client=c.id, force=True)
        await apoll(lambda: second.cancelled())
        await apoll(lambda: not s.tasks)
    assert await c.submit(inc, 1) == 2  # (the cluster goes on)


@gen_cluster()
async def test_client_releases_keys_and_remove_client(c, s, a, b):
    future = c.submit(inc, 1)
    await future
    s.client_releases_keys(keys=[future.key], client=c.id)
    assert future.key not in s.tasks
    assert s.client_heartbeat(c.id) == "OK"
    with pytest.raises(ValueError, match="no client 'nobody'"):
        s.client_heartbeat("nobody")
    s.remove_client(c.id)
    assert c.id not in s.state.clients


@gen_cluster()
async def test_placement_reads_the_records(c, s, a, b):
    data = c.submit(bytes, 10**6, workers=[a.address])
    summed = c.submit(len, data)
    assert await summed == 10**6
    ts, wa, wb = s.tasks[summed.key], s.workers[a.address], s.workers[b.address]
    assert s.valid_workers(ts) is True
    assert s.valid_workers(data.key) == {wa}
    assert s.get_comm_cost(ts, wa) == 0
    assert s.get_comm_cost(ts, b.address) == pytest.approx(10**6 / placement.BANDWIDTH)
    duration = s.state.durations["len"]
    assert s.get_task_duration(ts) == duration
    assert s.get_task_duration(TaskRecord("new-1", "new"), default=2.0) == 2.0
    assert s.get_task_duration(TaskRecord("new-1", "new")) == s.state.unknown_duration
    assert s.worker_objective(ts, wa) == (duration, a.address)
    assert s.worker_objective(ts, wb)[0] > s.worker_objective(ts, wa)[0]
    assert s.decide_worker(summed.key) is wa  # (it holds the dependency)
    with pytest.raises(KeyError, match="no task 'nope'"):
        s.decide_worker("nope")
    s.check_idle_saturated(wa)
    s.reevaluate_occupancy()
    assert set(s.state.idle) == {a.address, b.address}
    with pytest.raises(NotImplementedError, match="occ"):
        s.check_idle_saturated(wa, occ=1.0)


@gen_cluster()
async def test_adaptive_target_grows_with_queued_work(c, s, a, b):
    assert s.adaptive_target() == 0  # (both idle, holding nothing)
    with Gate("adaptive") as gate:
        futures = [c.submit(gated, gate, key=f"g-{i}") for i in range(10)]
        await apoll(lambda: len(s.tasks) == 10)
        # 10 tasks of 0.5 s (unknown duration) take 5 workers to run in a second
        assert s.adaptive_target(target_duration="1s") == 5
        assert s.adaptive_target(target_duration="0.1s") == 10  # (one per task at most)
        assert s.adaptive_target() == 2  # (the busy workers stay)
    await c.gather(futures)


@gen_cluster()
async def test_update_graph_and_gather(c, s, a, b):
    s.update_graph(client=c.id, tasks={"x-1": (inc, 1)}, keys=["x-1"], priority={"x-1": 1})
    await apoll(lambda: "x-1" in s.tasks and s.tasks["x-1"].state == "memory")
    got = await s.gather(keys=["x-1"])
    assert got["status"] == "OK" and deserialize(got["data"]["x-1"]) == 2
    assert await s.gather(keys=["x-1", "nope"]) == {"status": "error", "keys": ["nope"]}
    with pytest.raises(ValueError, match="client"):
        s.update_graph(tasks={"y-1": (inc, 1)}, keys=["y-1"])
    with pytest.raises(NotImplementedError, match="actors"):
        s.update_graph(client=c.id, tasks={"y-1": (inc, 1)}, actors=True)
    assert await c.submit(inc, 2) == 3


@gen_cluster()
async def test_scatter_update_data_add_keys_and_missing_data(c, s, a, b):
    assert await s.scatter(data={"d-1": 123}, client=c.id, broadcast=True) == ["d-1"]
    ts = s.tasks["d-1"]
    assert {ws.address for ws in ts.who_has} == {a.address, b.address} and ts.type == "int"
    assert deserialize((await s.gather(keys=["d-1"]))["data"]["d-1"]) == 123
    await s.scatter(data={"d-2": "two"}, workers=[a.address], client=c.id)
    assert {ws.address for ws in s.tasks["d-2"].who_has} == {a.address}
    s.add_keys(worker=b.address, keys=["d-2"])
    assert {ws.address for ws in s.tasks["d-2"].who_has} == {a.address, b.address}
    s.stimulus_missing_data(cause="x", key="d-2", worker=b.address)
    assert {ws.address for ws in s.tasks["d-2"].who_has} == {a.address}
    s.update_data(who_has={"d-3": [a.address]}, nbytes={"d-3": 5}, client=c.id)
    assert s.tasks["d-3"].state == "memory" and s.tasks["d-3"].nbytes == 5
    with pytest.raises(TypeError, match="dict"):
        await s.scatter(data=[1, 2])


@gen_cluster()
async def test_long_running_reschedule_and_sending_to_workers(c, s, a, b):
    with Gate("long") as gate:
        future = c.submit(gated, gate)
        ts = await processing(s, future)
        ws = ts.processing_on
        s.handle_long_running(key=future.key)
        assert ts in ws.long_running
        s.send_task_to_worker(ws.address, future.key)  # (a worker takes it again: no change)
        other = a.address if ws.address == b.address else b.address
        with pytest.raises(ValueError, match="not processing on"):
            s.send_task_to_worker(other, future.key)
        run_id = ts.run_id
        s.reschedule(key=future.key)
        assert ("processing", "released") in [entry[1:3] for entry in s.story(future.key)]
        assert ts.state == "processing" and ts.run_id != run_id
    assert await future == 7


@gen_cluster()
async def test_worker_send_report_and_proxy(c, s, a, b):
    await s.scatter(data={"d-1": 1}, workers=[a.address])
    s.worker_send(a.address, FreeKeys("test", ("d-1",)))
    await apoll(lambda: "d-1" not in a.state.data)
    with pytest.raises(TypeError, match="message for workers"):
        s.worker_send(a.address, {"op": "free-keys"})
    with pytest.raises(ValueError, match="no open stream"):
        s.worker_send("tcp://127.0.0.1:1", FreeKeys("test", ("d-1",)))
    with Gate("report") as gate:
        future = c.submit(gated, gate)
        await processing(s, future)
        s.report(KeyCancelled("test", future.key, "told"), ts=future.key)
        await apoll(lambda: future.cancelled())
    identity = await s.proxy(msg=rq.Identity(), worker=a.address)
    assert identity["address"] == a.address


@gen_cluster()
async def test_transition_and_transitions(c, s, a, b):
    future = c.submit(inc, 1, workers=["nobody"])  # (no such worker: it waits)
    await apoll(lambda: future.key in s.tasks and s.tasks[future.key].state == "no-worker")
    assert s.transition(future.key, "released") == {}
    steps = [entry[1:3] for entry in s.story(future.key)]
    released = steps.index(("no-worker", "released"))
    assert steps[released + 1] == ("released", "waiting")  # (its client still wants it)
    assert steps[-1] == ("waiting", "no-worker")
    s.transitions({future.key: "released"}, stimulus_id="by-hand")
    assert s.story(future.key)[-1][1:] == ("waiting", "no-worker", "by-hand")
    with pytest.raises(ValueError, match="not task states"):
        s.transitions({future.key: "bogus"})
    with pytest.raises(KeyError):
        s.transition("nope", "released")
    assert await c.submit(inc, 2) == 3  # (the others run)


@gen_cluster()
async def test_workers_come_and_go(c, s, a, b):
    assert len(s.workers_to_close(n=1)) == 1
    assert s.workers_to_close(minimum=2) == []
    assert await s.add_worker(address="tcp://127.0.0.1:1", nthreads=2, name="ghost", keys=["k"])
    assert s.workers["tcp://127.0.0.1:1"].nthreads == 2
    assert s.tasks["k"].state == "memory"
    assert await s.remove_worker(address="ghost", close=False) == "OK"
    assert "tcp://127.0.0.1:1" not in s.workers and "k" not in s.tasks
    assert await s.remove_worker(address="tcp://127.0.0.1:1") == "already-removed"
    await s.add_worker(address="tcp://127.0.0.1:2", nthreads=1, services={"dashboard": 9})
    assert s.get_worker_service_addr("tcp://127.0.0.1:2", "dashboard") == ("127.0.0.1", 9)
    assert s.get_worker_service_addr("tcp://127.0.0.1:2", "dashboard", True).endswith(":9")
    assert s.get_worker_service_addr("tcp://127.0.0.1:2", "x") is None
    await s.remove_worker(address="tcp://127.0.0.1:2", close=False)
    assert s.get_worker_service_addr(a.address, "nanny") is None  # (no nanny)
    await s.close_worker(worker=b.address)
    assert b.address not in s.workers
    await apoll(lambda: b.status == "closed")
    assert await s.remove_worker(address=a.address) == "OK"
    await apoll(lambda: a.status == "closed")


@gen_cluster()
async def test_retire_workers_and_run_function(c, s, a, b):
    future = c.submit(inc, 1, workers=[b.address])
    await future
    retired = await s.retire_workers(workers=[b.address])
    assert set(retired) == {b.address} and b.address not in s.workers
    assert await future == 2  # (its data moved to a)
    assert await s.run_function(None, lambda dask_scheduler: dask_scheduler.address) == s.address
    with pytest.raises(ZeroDivisionError):
        await s.run_function(None, lambda: 1 / 0)


@gen_cluster()
async def test_feed_and_add_client_over_a_comm(c, s, a, b):
    async def serve(comm):
        if (await comm.read()) == "feed":
            await s.feed(comm, function=lambda scheduler: len(scheduler.workers), interval="5ms")
        else:
            await s.add_client(comm, client="by-hand")

    listener = await listen("tcp://127.0.0.1:0", serve)
    try:
        comm = await connect(listener.address)
        await comm.write("feed")
        assert [await comm.read(), await comm.read()] == [2, 2]
        await comm.close()
        comm = await connect(listener.address)
        await comm.write("client")
        assert (await comm.read())["status"] == "OK"
        assert "by-hand" in s.state.clients
        await comm.close()
        await apoll(lambda: "by-hand" not in s.state.clients)
    finally:
        await listener.close()


@gen_cluster()
async def test_add_worker_and_handle_worker_over_a_comm(c, s, a, b):
    by_hand = "tcp://127.0.0.1:1"

    async def serve(comm):
        if (await comm.read()) == "register":
            await s.add_worker(comm, address=by_hand, nthreads=1, name="by-hand")
        else:
            await s.handle_worker(comm, worker="tcp://127.0.0.1:2")

    await s.scatter(data={"d-1": 1}, workers=[a.address])
    listener = await listen("tcp://127.0.0.1:0", serve)
    try:
        comm = await connect(listener.address)
        await comm.write("register")
        assert (await comm.read())["status"] == "OK"
        assert s.workers[by_hand].name == "by-hand"
        await comm.write([{"op": "add-keys", "stimulus_id": "by-hand", "keys": ["d-1"]}])
        await apoll(lambda: s.workers[by_hand] in s.tasks["d-1"].who_has)
        await comm.close()
        await apoll(lambda: by_hand not in s.workers)  # (its stream closed)
        await s.add_worker(address="tcp://127.0.0.1:2", nthreads=1)
        comm = await connect(listener.address)
        await comm.write("stream")
        await comm.write([{"op": "add-keys", "stimulus_id": "by-hand", "keys": ["d-1"]}])
        await apoll(lambda: s.workers["tcp://127.0.0.1:2"] in s.tasks["d-1"].who_has)
        await comm.close()
        await s.remove_worker(address="tcp://127.0.0.1:2", close=False)
    finally:
        await listener.close()


def test_close_with_its_workers():
    async def main():
        s = await Scheduler()
        w = await Worker(s.address, nthreads=1)
        try:
            await s.close(close_workers=True)
            assert s.status == "closed"
            await apoll(lambda: w.status == "closed")
        finally:
            await w.close()
            await s.close()

    run(main())


def test_restart_and_the_nanny_service_with_worker_processes():
    async def main():
        async with (
            LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as c,
        ):
            s = cluster.scheduler
            [(address, ws)] = s.workers.items()
            assert s.get_worker_service_addr(address, "nanny", protocol=True) == ws.nanny
            host, port = s.get_worker_service_addr(address, "nanny")
            assert ws.nanny.endswith(f"{host}:{port}")
            assert s.get_worker_service_addr(address, "dashboard")[1] == ws.services["dashboard"]
            before = (await c.run(pid))[address]
            await s.restart(client=c.id, timeout=20)
            [(new, _)] = s.workers.items()
            assert new != address and (await c.run(pid))[new] != before

    run(main(), timeout=60)
