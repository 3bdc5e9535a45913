"""The task stream: what each worker records of the tasks it ran (compute, transfers,
disk), gathered by the scheduler when asked.

The recorder's selection logic is tested on its own, without an event loop; the rest
runs real clusters over TCP.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from conftest import gen_cluster

from distributary import Client, Scheduler, Worker, get_task_stream
from distributary.protocol.errors import RemoteError
from distributary.worker.execution import TaskOutcome
from distributary.worker.task_stream import TaskStreamRecorder

MB = 1_000_000


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


def thread_ident(_: object = None) -> int:
    return threading.get_ident()


def array(i: int, nbytes: int) -> np.ndarray:
    return np.full(nbytes // 8, i, dtype="f8")


def total(x: np.ndarray) -> float:
    return float(x.sum())


def phases(record: dict) -> list[str]:
    return [phase["action"] for phase in record["startstops"]]


def compute_start(record: dict) -> float:
    return next(p["start"] for p in record["startstops"] if p["action"] == "compute")


# ---------------------------------------------------------------------- the recorder alone


def outcome(start: float, stop: float, error: Exception | None = None) -> TaskOutcome:
    result = TaskOutcome()
    result.start, result.stop, result.thread = start, stop, 7
    result.nbytes, result.type = 28, "int"
    if error is not None:
        result.error = RemoteError.of(error)
    return result


def recorder_with(n: int) -> TaskStreamRecorder:
    recorder = TaskStreamRecorder(length=100)
    recorder.address = "tcp://w:1"
    for i in range(n):
        recorder.finished(f"t-{i}", outcome(i, i + 0.5))
    return recorder


def test_a_record_has_dask_distributed_fields():
    recorder = TaskStreamRecorder(length=10)
    recorder.address = "tcp://w:1"
    recorder.finished("ok-1", outcome(1.0, 2.0))
    recorder.finished("bad-1", outcome(3.0, 4.0, ValueError("no")))
    ok, bad = recorder.records()
    assert ok == {
        "key": "ok-1",
        "worker": "tcp://w:1",
        "thread": 7,
        "nbytes": 28,
        "type": "int",
        "typename": "int",
        "status": "OK",
        "startstops": ({"action": "compute", "start": 1.0, "stop": 2.0},),
    }
    assert bad["status"] == "error"
    assert "ValueError" in bad["exception_text"] and "no" in bad["traceback_text"]


def test_count_start_and_stop_select_records_as_dask_distributed_does():
    recorder = recorder_with(5)
    keys = [r["key"] for r in recorder.records()]
    assert keys == [f"t-{i}" for i in range(5)]
    assert [r["key"] for r in recorder.records(count=2)] == ["t-3", "t-4"]
    assert recorder.records(count=0) == []
    now = time.time()
    assert recorder.records(start=now + 1) == []
    assert len(recorder.records(start=now - 60)) == 5
    assert [r["key"] for r in recorder.records(start=now - 60, count=2)] == ["t-0", "t-1"]
    assert recorder.records(stop=now - 60) == []
    assert len(recorder.records(start=now - 60, stop=now + 60, count=1)) == 5  # (ignored)


def test_the_record_is_bounded():
    recorder = TaskStreamRecorder(length=3)
    for i in range(10):
        recorder.finished(f"t-{i}", outcome(i, i))
    assert [r["key"] for r in recorder.records()] == ["t-7", "t-8", "t-9"]
    with pytest.raises(ValueError, match="task-stream-length"):
        TaskStreamRecorder(length=-1)


def test_a_transfer_belongs_to_the_first_task_that_needs_its_data():
    recorder = TaskStreamRecorder(length=10)
    recorder.transferred("tcp://peer:1", {"x": 10, "y": 20}, 1.0, 2.0)
    data = {"x": 1, "y": 2}
    assert recorder.read_dependencies("z", ["x"], data) == {"x": 1}
    recorder.finished("z", outcome(3.0, 4.0))
    recorder.read_dependencies("w", ["x", "y"], data)  # (the batch went to z)
    recorder.finished("w", outcome(5.0, 6.0))
    z, w = recorder.records()
    assert z["startstops"][0] == {
        "action": "transfer",
        "start": 1.0,
        "stop": 2.0,
        "source": "tcp://peer:1",
    }
    assert phases(z) == ["transfer", "compute"] and phases(w) == ["compute"]
    (transfer,) = recorder.transfers()
    assert transfer["source"] == "tcp://peer:1"
    assert (transfer["keys"], transfer["nbytes"]) == (2, 30)


def test_disk_phases_belong_to_the_task_that_caused_them():
    recorder = TaskStreamRecorder(length=10)
    recorder.disk("disk-write", 0.0, 0.1)  # (no task: not recorded)
    recorder.cause = "z"
    recorder.disk("disk-read", 1.0, 1.5)
    recorder.disk("disk-write", 2.5, 3.0)
    recorder.finished("z", outcome(2.0, 2.5))
    (z,) = recorder.records()
    assert phases(z) == ["disk-read", "compute", "disk-write"]


def test_a_rescheduled_task_leaves_no_record():
    recorder = TaskStreamRecorder(length=10)
    rescheduled = outcome(1.0, 2.0)
    rescheduled.reschedule = True
    recorder.finished("r", rescheduled)
    assert recorder.records() == []


# ---------------------------------------------------------------------- on a cluster


@gen_cluster()
async def test_records_of_the_tasks_the_workers_ran(c, s, a, b):
    started = time.time()
    ok = c.submit(thread_ident, 1, workers=[a.address])
    bad = c.submit(boom, 2, workers=[b.address])
    ident = await ok
    with pytest.raises(ValueError):
        await bad
    records = await s.task_stream.collect(start=started)
    by_key = {r["key"]: r for r in records}
    assert set(by_key) == {ok.key, bad.key}
    good = by_key[ok.key]
    assert (good["worker"], good["thread"], good["status"]) == (a.address, ident, "OK")
    assert good["typename"] == "int" and good["nbytes"] > 0
    (compute,) = good["startstops"]
    assert compute["action"] == "compute"
    assert started <= compute["start"] <= compute["stop"] <= time.time()
    failed = by_key[bad.key]
    assert (failed["worker"], failed["status"]) == (b.address, "error")
    assert "boom 2" in failed["exception_text"]


@gen_cluster()
async def test_a_transfer_names_the_worker_the_data_came_from(c, s, a, b):
    x = c.submit(inc, 1, workers=[a.address])
    y = c.submit(inc, 10, workers=[b.address])
    z = c.submit(add, x, y, workers=[b.address])
    assert await z == 13
    records = {r["key"]: r for r in await s.task_stream.collect()}
    transfer, compute = records[z.key]["startstops"]
    assert transfer["action"] == "transfer" and transfer["source"] == a.address
    assert transfer["start"] <= transfer["stop"] <= compute["start"]
    (moved,) = await s.task_stream.transfers()
    assert (moved["source"], moved["destination"], moved["keys"]) == (a.address, b.address, 1)
    assert moved["nbytes"] > 0


@gen_cluster()
async def test_records_come_sorted_by_compute_start_and_filtered_by_time(c, s, a, b):
    first = await c.gather(c.map(inc, range(10)))
    middle = time.time()
    second = c.map(inc, range(100, 110))
    await c.gather(second)
    assert len(first) == 10
    records = await s.task_stream.collect()
    assert len(records) == 20
    starts = [
        next(p["start"] for p in r["startstops"] if p["action"] == "compute") for r in records
    ]
    assert starts == sorted(starts)
    assert {r["key"] for r in await s.task_stream.collect(start=middle)} == {f.key for f in second}
    before = await s.task_stream.collect(stop=middle)
    assert len(before) == 10 and not {r["key"] for r in before} & {f.key for f in second}
    last = await s.task_stream.collect(count=3)
    assert [r["key"] for r in last] == [r["key"] for r in records[-3:]]
    assert await s.task_stream.collect(start=time.time() + 10) == []


def test_spilling_and_unspilling_are_disk_phases():
    async def main() -> None:
        async with (
            Scheduler() as s,
            Worker(
                s.address,
                nthreads=1,
                memory_limit="10MB",
                memory_target_fraction=0.5,
                memory_spill_fraction=False,
                memory_pause_fraction=False,
            ) as w,
            Client(s.address, asynchronous=True) as c,
        ):
            x = c.submit(array, 1, 3 * MB)
            await x
            y = c.submit(array, 2, 3 * MB)  # storing it spills x
            await y
            assert x.key in w.data.disk
            z = c.submit(total, x)  # reads x back from disk
            assert await z == 3 * MB // 8
            records = {r["key"]: r for r in await s.task_stream.collect()}
            assert phases(records[y.key]) == ["compute", "disk-write"]
            read = phases(records[z.key])
            assert read[0] == "disk-read" and "compute" in read  # (x back, maybe y out)
            for record in records.values():
                starts = [phase["start"] for phase in record["startstops"]]
                assert starts == sorted(starts)
                for phase in record["startstops"]:
                    assert phase["start"] <= phase["stop"]

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------- the client's view


def test_client_task_stream_of_worker_processes(processes, tmp_path):
    cluster, client = processes
    a, b = sorted(client.scheduler_info()["workers"])
    started = time.time()
    x = client.submit(inc, 1, workers=[a])
    y = client.submit(inc, 2, workers=[b])
    z = client.submit(add, x, y, workers=[b])
    assert z.result() == 5
    records = client.get_task_stream(start=started)
    assert {r["key"] for r in records} == {x.key, y.key, z.key}
    for record in records:
        assert set(record) >= {"key", "worker", "thread", "nbytes", "typename", "status"}
        assert record["status"] == "OK" and record["worker"] in (a, b)
        assert isinstance(record["thread"], int)
    by_key = {r["key"]: r for r in records}
    transfer = by_key[z.key]["startstops"][0]
    assert transfer["action"] == "transfer" and transfer["source"] == a
    assert client.get_task_stream(start="60s", count=1) == records[:1]  # (the first after)
    assert client.get_task_stream(count=1) == records[-1:]
    assert client.get_task_stream(start=time.time() + 60) == []

    data, figure = client.get_task_stream(start=started, plot="save", filename=tmp_path / "ts.html")
    assert data == records
    page = (tmp_path / "ts.html").read_text()
    assert page == figure.html and z.key in page and "<svg" not in page  # (drawn in the browser)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # (offline)
    data, figure = client.get_task_stream(start=started, plot=True)
    assert x.key in figure.html and "<iframe srcdoc=" in figure._repr_html_()


def test_the_context_manager_keeps_the_records_of_its_block(c, tmp_path):
    before = c.submit(inc, 0)
    before.result()
    with get_task_stream(plot="save", filename=str(tmp_path / "block.html")) as ts:
        futures = c.map(inc, range(5))
        c.gather(futures)
    assert {r["key"] for r in ts.data} == {f.key for f in futures}
    assert ts.figure is not None and (tmp_path / "block.html").exists()
    with get_task_stream(client=c) as ts:
        pass
    assert ts.data == [] and ts.figure is None


@gen_cluster()
async def test_the_context_manager_with_an_asynchronous_client(c, s, a, b):
    async with get_task_stream(client=c) as ts:
        await c.gather(c.map(inc, range(3)))
    assert len(ts.data) == 3
    with pytest.raises(TypeError, match="async with"), get_task_stream(client=c):
        pass


def test_bad_arguments_are_clear_errors_and_the_cluster_keeps_working(c):
    with pytest.raises(TypeError, match="count"):
        c.get_task_stream(count="3")
    with pytest.raises(ValueError, match="count"):
        c.get_task_stream(count=-1)
    with pytest.raises(ValueError, match="plot"):
        c.get_task_stream(plot="show")
    with pytest.raises(ValueError, match="not a duration"):
        c.get_task_stream(start="soon")
    with pytest.raises(TypeError, match="start"):
        c.get_task_stream(start=[1])
    with pytest.raises(ValueError, match="plot"):
        get_task_stream(client=c, plot="show")
    with pytest.raises(TypeError, match="unexpected keyword"):
        c.get_task_stream(begin=0)
    assert c.submit(inc, 1).result() == 2
    assert len(c.get_task_stream(count=1)) == 1
