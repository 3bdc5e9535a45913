"""SpecCluster: specs of Workers, Nannies and custom classes, scaling with the worker
count seen at the scheduler, graceful scale-down, logs, display and bad input; real
servers over TCP (or in memory) on 127.0.0.1, worker processes where they matter."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import threading

import dask.config
import pytest
from conftest import children, gone, poll

from distributary import Client, LocalCluster, Nanny, Scheduler, SpecCluster, Worker
from distributary.deploy.logs import Logs
from distributary.deploy.process import ProcessInterface
from distributary.deploy.specs import check_spec, member_names, resolve, spec_names, whole

SCHEDULER = {"cls": Scheduler, "options": {"dashboard_address": None}}
ONE_THREAD = {"cls": Worker, "options": {"nthreads": 1}}


def registered(cluster) -> list:
    return sorted(str(info["name"]) for info in cluster.scheduler_info["workers"].values())


# ---------------------------------------------------------------------- specs, no loop


def test_check_spec_names_the_problem():
    assert check_spec(ONE_THREAD, "w") == ONE_THREAD
    assert check_spec({"cls": "distributary.Worker"}, "w")["cls"] == "distributary.Worker"
    assert resolve("distributary.Nanny") is Nanny
    with pytest.raises(TypeError, match="The worker 'a' spec must be a dict like"):
        check_spec(Worker, "worker 'a'")
    with pytest.raises(ImportError, match="The w spec: unknown class 'no.such.Thing'"):
        check_spec({"cls": "no.such.Thing"}, "w")
    with pytest.raises(TypeError, match="'cls' must be a class, not 3"):
        check_spec({"cls": 3}, "w")
    with pytest.raises(TypeError, match=r"unknown entries \['opts'\]"):
        check_spec({"cls": Worker, "opts": {}}, "w")
    with pytest.raises(TypeError, match="options of the w spec must be a dict"):
        check_spec({"cls": Worker, "options": [1]}, "w")
    with pytest.raises(TypeError, match="group of the w spec must be a list"):
        check_spec({"cls": Worker, "group": "-0"}, "w")


def test_names_of_groups_and_addresses():
    spec = {"a": ONE_THREAD, 1: {**ONE_THREAD, "group": ["-0", "-1"]}}
    assert member_names(spec) == ["a", "1-0", "1-1"]
    table = {"tcp://h:1": {"name": "1-1"}, "tcp://h:2": {"name": "a"}}
    assert spec_names(spec, table, ["tcp://h:1"]) == [1]
    assert spec_names(spec, table, ["a", "1-0", "1-1", "nobody"]) == ["a", 1]
    assert whole(3, "n") == 3 and whole(2.0, "n") == 2
    for bad in (-1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="n must be a whole number at least 0"):
            whole(bad, "n")


# ---------------------------------------------------------------------- specs at work


class TaggedWorker(Worker):
    """A Worker subclass: a custom worker class."""

    def __init__(self, *args, tag: str = "", **kwargs):
        super().__init__(*args, resources={tag: 1}, **kwargs)


class WorkerInAThread(ProcessInterface):
    """A class with the worker interface that is not a Worker: it runs one in a thread
    of its own, with its own event loop."""

    def __init__(self, scheduler: str, name=None, nthreads: int = 1):
        super().__init__(scheduler, name)
        self.nthreads = nthreads
        self._stop = None

    async def start(self) -> None:
        started = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop, started), daemon=True)
        self._thread.start()
        self.address = await started
        await super().start()

    def _run(self, caller, started) -> None:
        async def serve():
            self._stop = asyncio.Event()
            async with Worker(self.scheduler, name=self.name, nthreads=self.nthreads) as w:
                caller.call_soon_threadsafe(started.set_result, w.address)
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(serve())
        self._loop.close()

    async def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        await super().close()


def test_workers_nannies_and_custom_classes_from_specs():
    workers = {
        "thread": ONE_THREAD,
        "process": {"cls": Nanny, "options": {"nthreads": 2}},
        "tagged": {"cls": TaggedWorker, "options": {"tag": "GPU", "nthreads": 1}},
        "foreign": {"cls": WorkerInAThread, "options": {"nthreads": 3}},
    }
    with SpecCluster(workers=workers, scheduler=SCHEDULER) as cluster, Client(cluster) as c:
        assert cluster.status == "running"
        assert cluster.worker_spec == workers
        assert sorted(cluster.workers) == sorted(workers)
        assert isinstance(cluster.workers["process"], Nanny)
        assert cluster.scheduler_address == cluster.scheduler.address
        info = {w["name"]: w for w in c.scheduler_info()["workers"].values()}
        assert sorted(info) == sorted(workers)
        assert info["process"]["nthreads"] == 2 and info["process"]["nanny"]
        assert info["foreign"]["nthreads"] == 3
        assert info["tagged"]["resources"] == {"GPU": 1}
        assert c.submit(sum, [1, 2], resources={"GPU": 1}).result() == 3
        ran_on = c.submit(
            lambda: __import__("distributary").get_worker().name, resources={"GPU": 1}
        )
        assert ran_on.result() == "tagged"
        assert sum(c.gather(c.map(lambda x: x + 1, range(40)))) == sum(range(1, 41))
        text = repr(cluster)
        assert text.startswith(f"SpecCluster({cluster.name}, '{cluster.scheduler_address}'")
        assert "workers=4, threads=7" in text
        assert cluster.dashboard_link == ""
        pid = cluster.workers["process"].process.pid
    assert cluster.status == "closed" and cluster.workers == {}
    assert gone(pid) and not children()


def test_scale_with_a_worker_template_seen_at_the_scheduler():
    with SpecCluster(scheduler=SCHEDULER, worker=ONE_THREAD) as cluster:
        assert cluster.worker_spec == {} and registered(cluster) == []
        cluster.scale(3)
        assert sorted(cluster.worker_spec) == [0, 1, 2] == sorted(cluster.workers)
        assert registered(cluster) == ["0", "1", "2"]
        assert cluster.plan == cluster.requested == cluster.observed == {0, 1, 2}
        cluster.scale(1)
        assert sorted(cluster.workers) == [0]
        poll(lambda: registered(cluster) == ["0"])
        cluster.scale_up(2)
        assert registered(cluster) == ["0", "3"]  # (names are not reused)
        address = next(a for a, w in cluster.scheduler_info["workers"].items() if w["name"] == 3)
        cluster.scale_down([address])
        assert sorted(cluster.worker_spec) == [0] and registered(cluster) == ["0"]
        cluster.scale_down([0])
        assert cluster.workers == {} and registered(cluster) == []
        assert cluster.new_worker_spec() == {4: ONE_THREAD}
        cluster.scale(cores=2)
        assert len(cluster.workers) == 2
        cluster.new_spec = {"cls": Worker, "options": {"nthreads": 1, "memory_limit": 0}}
        with pytest.raises(ValueError, match="needs workers with a memory_limit"):
            cluster.scale(memory="1GiB")
        cluster.wait_for_workers(2, timeout=5)
        with pytest.raises(TimeoutError):
            cluster.wait_for_workers(3, timeout=0.1)


def test_scale_by_memory_and_cores():
    worker = {"cls": Worker, "options": {"nthreads": 2, "memory_limit": "1GiB"}}
    with SpecCluster(scheduler=SCHEDULER, worker=worker) as cluster:
        cluster.scale(memory="2.5GiB")
        assert registered(cluster) == ["0", "1", "2"]
        cluster.scale(cores=2)
        poll(lambda: registered(cluster) == ["0"])
        cluster.scale(1, cores=5)
        assert len(cluster.workers) == 3


RUNS: collections.Counter = collections.Counter()  # (workers in this process count here)


def make(i):
    RUNS[i] += 1
    return bytes(1000) * i


def test_scaling_down_moves_the_data_to_the_workers_that_stay():
    RUNS.clear()
    with (
        SpecCluster(scheduler=SCHEDULER, worker=ONE_THREAD) as cluster,
        Client(cluster) as c,
    ):
        cluster.scale(3)
        futures = c.map(make, range(30))
        c.gather(futures)
        held = {w["name"]: w["stored"] for w in c.scheduler_info()["workers"].values()}
        assert sum(held.values()) == 30 and held[2] > 0 and held[1] > 0
        cluster.scale(1)
        poll(lambda: registered(cluster) == ["0"])
        assert [len(v) for v in c.has_what().values()] == [30]
        assert c.gather(futures) == [bytes(1000) * i for i in range(30)]
        assert all(n == 1 for n in RUNS.values()) and len(RUNS) == 30  # nothing recomputed


def test_asynchronous_spec_cluster():
    async def main():
        async with SpecCluster(
            scheduler=SCHEDULER, worker=ONE_THREAD, workers={"a": ONE_THREAD}, asynchronous=True
        ) as cluster:
            assert cluster.asynchronous and cluster.status == "running"
            await cluster.scale(3)
            assert registered(cluster) == ["0", "1", "a"]
            await cluster.scale(1)
            assert sorted(cluster.workers, key=str) == ["a"]
            async with Client(cluster, asynchronous=True) as c:
                assert await c.submit(sum, [2, 3]) == 5
            logs = await cluster.get_logs(workers=False)
            assert isinstance(logs, Logs) and sorted(logs) == ["Cluster", "Scheduler"]
            await cluster.wait_for_workers(1, timeout=5)
        assert cluster.status == "closed"
        await cluster.close()  # idempotent

        cluster = await SpecCluster(scheduler=SCHEDULER, workers={0: ONE_THREAD}, asynchronous=True)
        assert registered(cluster) == ["0"]
        with pytest.raises(TypeError, match="needs `async with`"), cluster:
            pass
        await cluster.close()

    asyncio.run(main())


def test_get_logs_of_the_cluster_scheduler_and_workers():
    with SpecCluster(
        scheduler=SCHEDULER,
        workers={"a": ONE_THREAD},
        worker=ONE_THREAD,
        silence_logs=logging.INFO,  # (distributary's level while it runs)
    ) as cluster:
        cluster.scale(2)
        (address,) = [a for a, w in cluster.scheduler_info["workers"].items() if w["name"] == "a"]
        logs = cluster.get_logs()
        assert sorted(logs) == sorted(["Cluster", "Scheduler", *cluster.scheduler_info["workers"]])
        assert f"Worker {address} registered" in logs["Scheduler"]
        assert isinstance(logs[address], str)
        assert list(cluster.get_logs(cluster=False, scheduler=False, workers=[address])) == [
            address
        ]
        assert "<details>" in logs._repr_html_()


def test_repr_html_shows_the_workers():
    with SpecCluster(scheduler=SCHEDULER, workers={"a": ONE_THREAD}) as cluster:
        cluster.adapt(minimum=1, maximum=1, interval="10s")
        html = cluster._repr_html_()
        assert "SpecCluster" in html and cluster.scheduler_address in html
        assert "Adaptive: minimum=1, maximum=1" in html
    assert "SpecCluster" in cluster._repr_html_()  # (closed)


def test_retired_and_closed_workers_leave_cluster_workers():
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        assert isinstance(cluster, SpecCluster)
        address = cluster.workers[2].worker_address
        pid = cluster.workers[2].process.pid
        assert list(c.retire_workers([address], close_workers=True)) == [address]
        poll(lambda: sorted(cluster.workers) == [0, 1])
        poll(lambda: gone(pid))
        assert "Worker 2 closed" in cluster.get_logs(scheduler=False, workers=False)["Cluster"]
        node = cluster.workers[1]
        asyncio.run_coroutine_threadsafe(node.close(), cluster.loop).result(10)
        poll(lambda: sorted(cluster.workers) == [0])
        assert c.submit(sum, [1, 1]).result() == 2
        # the plan is kept: scaling starts the closed ones anew
        cluster.scale(3)
        assert sorted(cluster.workers) == [0, 1, 2]


# ---------------------------------------------------------------------- bad input


class FailingWorker(Worker):
    """A worker whose start fails with a message of its own."""

    async def _start(self) -> None:
        raise RuntimeError("this worker refuses to start")


def test_security_reaches_the_scheduler_and_every_worker():
    tls = {"protocol": "tls", "host": "127.0.0.1"}
    with (
        SpecCluster(
            scheduler={"cls": Scheduler, "options": {"dashboard_address": None, **tls}},
            workers={0: {"cls": Worker, "options": {"nthreads": 1, **tls}}},
            worker={"cls": Nanny, "options": {"nthreads": 1, **tls}},
            security=True,  # (temporary credentials, for all of them)
        ) as cluster,
        Client(cluster) as c,
    ):
        cluster.scale(2)
        c.wait_for_workers(2, timeout=30)
        assert cluster.scheduler_address.startswith("tls://")
        assert all(addr.startswith("tls://") for addr in c.scheduler_info()["workers"])
        assert c.submit(lambda x: x + 1, 1).result(timeout=30) == 2


def test_bad_input_is_a_clear_error_and_the_cluster_keeps_working():
    with pytest.raises(TypeError, match="worker 'x' spec must be a dict"):
        SpecCluster(scheduler=SCHEDULER, workers={"x": "Worker"})
    with pytest.raises(ImportError, match="unknown class 'nowhere.Worker'"):
        SpecCluster(scheduler=SCHEDULER, worker={"cls": "nowhere.Worker"})
    with pytest.raises(TypeError, match=r"SpecCluster\(security=\.\.\.\) must be a Security"):
        SpecCluster(scheduler=SCHEDULER, security="yes")
    with pytest.raises(TypeError, match="unexpected keyword argument 'nthreadz'"):
        SpecCluster(scheduler=SCHEDULER, workers={0: {"cls": Worker, "options": {"nthreadz": 1}}})
    with SpecCluster(scheduler=SCHEDULER, workers={0: ONE_THREAD}) as cluster, Client(cluster) as c:
        with pytest.raises(ValueError, match="n must be a whole number at least 0, not -1"):
            cluster.scale(-1)
        with pytest.raises(ValueError, match="has no worker= spec"):
            cluster.scale(2)
        with pytest.raises(ValueError, match="n_workers must be a whole number"):
            cluster.wait_for_workers(-2)
        cluster.worker_spec["bad"] = {"cls": Worker, "options": {"nthreadz": 2}}
        cluster.worker_spec["failing"] = {"cls": FailingWorker, "options": {}}
        with pytest.raises((TypeError, RuntimeError)) as info:
            cluster.scale(3)
        assert "nthreadz" in str(info.value) or "refuses to start" in str(info.value)
        assert "(while starting worker" in "".join(getattr(info.value, "__notes__", []))
        assert sorted(cluster.workers) == [0] and sorted(cluster.worker_spec) == [0]
        assert registered(cluster) == ["0"]
        assert c.submit(sum, [4, 5]).result() == 9


def test_a_worker_process_that_fails_to_start_leaves_nothing_behind():
    failing = {"cls": Nanny, "options": {"nthreads": 1, "worker_class": FailingWorker}}
    with (
        SpecCluster(scheduler=SCHEDULER, workers={0: {"cls": Nanny, "options": {}}}) as cluster,
        Client(cluster) as c,
    ):
        cluster.worker_spec["failing"] = failing
        with pytest.raises(RuntimeError, match="this worker refuses to start"):
            cluster.scale(2)
        assert len(children()) == 1  # (the good worker's process)
        assert sorted(cluster.workers) == [0] and c.submit(sum, [1, 2]).result() == 3
    with pytest.raises(RuntimeError, match="this worker refuses to start"):
        SpecCluster(scheduler=SCHEDULER, workers={"failing": failing})
    assert not children()


class DiesAfterTheFirstStart(Worker):
    """A worker that starts once; every process after the first dies while starting."""

    def __init__(self, *args, **kwargs):
        marker = os.environ["DISTRIBUTARY_TEST_MARKER"]
        if os.path.exists(marker):
            os._exit(7)
        with open(marker, "w"):
            pass
        super().__init__(*args, **kwargs)


def test_a_nanny_whose_worker_dies_at_every_start_gives_up_and_the_cluster_says_so(tmp_path):
    marker = str(tmp_path / "started")
    options = {
        "nthreads": 1,
        "worker_class": DiesAfterTheFirstStart,
        "env": {"DISTRIBUTARY_TEST_MARKER": marker},
    }
    with (
        dask.config.set({"distributed.nanny.max-failed-starts": 2}),
        SpecCluster(
            scheduler=SCHEDULER,
            workers={
                "good": {"cls": Worker, "options": {}},
                "bad": {"cls": Nanny, "options": options},
            },
        ) as cluster,
    ):
        nanny = cluster.workers["bad"]
        os.kill(nanny.process.pid, signal.SIGKILL)
        poll(lambda: "bad" not in cluster.workers, timeout=30)
        assert nanny.status == "closed"
        assert "2 worker processes in a row died while starting" in nanny.failure
        assert "exited with code 7" in nanny.failure
        errors = [message for level, message in nanny.get_logs() if level == "ERROR"]
        assert any("gives up and closes: 2 worker processes in a row" in m for m in errors)
        assert "bad" not in cluster.worker_spec  # (not started again)
        log = cluster.get_logs(scheduler=False, workers=False)["Cluster"]
        assert "Worker 'bad' failed and left the cluster: 2 worker processes" in log
        assert registered(cluster) == ["good"]
        assert not children()


def test_nanny_rejects_a_bad_bound():
    async def main():
        async with Scheduler(dashboard_address=None) as s:
            with (
                dask.config.set({"distributed.nanny.max-failed-starts": 0}),
                pytest.raises(ValueError, match="max-failed-starts must be at least 1"),
            ):
                Nanny(s.address)

    asyncio.run(main())
