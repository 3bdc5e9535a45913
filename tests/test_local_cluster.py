"""LocalCluster: threads and processes, blocking and asynchronous, real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from conftest import children, gone, poll

from distributary import LocalCluster, Nanny, Worker
from distributary.deploy.local import _workers_and_threads
from distributary.utils.process import cpu_count


def registered(cluster: LocalCluster) -> dict:
    return {ws.name: ws for ws in list(cluster.scheduler.state.workers.values())}


def test_threads_blocking():
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=3) as cluster:
        assert cluster.status == "running"
        assert cluster.scheduler_address.startswith("inproc://")
        assert sorted(cluster.workers) == [0, 1]
        assert all(type(w) is Worker for w in cluster.workers.values())
        workers = registered(cluster)
        assert sorted(workers) == [0, 1]
        assert all(ws.nthreads == 3 for ws in workers.values())
        assert threading.current_thread() is threading.main_thread()
        text = repr(cluster)
        assert re.fullmatch(
            rf"LocalCluster\({cluster.name}, '{cluster.scheduler_address}', "
            r"workers=2, threads=6, memory=[\d.]+ \w+\)",
            text,
        ), text
        assert cluster.dashboard_link == cluster.scheduler.dashboard_link != ""
    assert cluster.status == "closed"
    assert cluster.workers == {}
    cluster.close()  # idempotent


def test_threads_defaults():
    with LocalCluster(processes=False) as cluster:
        assert [ws.nthreads for ws in registered(cluster).values()] == [cpu_count()]


def test_threads_over_tcp_when_asked():
    with LocalCluster(processes=False, n_workers=1, protocol="tcp://") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert cluster.workers[0].address.startswith("tcp://127.0.0.1:")


def test_processes_blocking():
    with LocalCluster(n_workers=2, threads_per_worker=1, name="procs") as cluster:
        assert cluster.processes
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert all(isinstance(n, Nanny) for n in cluster.workers.values())
        workers = registered(cluster)
        assert sorted(workers) == [0, 1]
        pids = [n.process.pid for n in cluster.workers.values()]
        assert os.getpid() not in pids and len(set(pids)) == 2
        for name, nanny in cluster.workers.items():
            assert workers[name].nanny == nanny.address
            assert workers[name].address == nanny.worker_address
            assert workers[name].nthreads == 1
        assert repr(cluster).startswith("LocalCluster(procs, 'tcp://127.0.0.1:")
        assert "workers=2, threads=2" in repr(cluster)
    assert all(gone(pid) for pid in pids)


def test_client_of_the_cluster_object_talks_to_its_scheduler_in_memory():
    """Given the cluster, a client reaches the scheduler in this process through memory
    (inproc); given only its address, over TCP like any other client."""
    from distributary import Client

    with LocalCluster(n_workers=1, processes=False, protocol="tcp://") as cluster:
        scheduler = cluster.scheduler
        with Client(cluster) as near, Client(cluster.scheduler_address) as far:
            assert near.scheduler_address == far.scheduler_address == cluster.scheduler_address
            peer = {
                client.id: scheduler.client_streams[client.id].comm.peer_address
                for client in (near, far)
            }
            assert peer[near.id].startswith("inproc://")
            assert peer[far.id].startswith("tcp://")
            assert near.submit(sum, [1, 2]).result() == far.submit(sum, [1, 2]).result() == 3
            assert near.scheduler_info()["address"] == cluster.scheduler_address


def test_scale_blocking():
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1) as cluster:
        cluster.scale(3)
        assert sorted(cluster.workers) == [0, 1, 2]
        assert sorted(registered(cluster)) == [0, 1, 2]
        cluster.scale(1)
        assert sorted(cluster.workers) == [0]
        poll(lambda: sorted(registered(cluster)) == [0])
        cluster.scale(cores=2)
        assert sorted(cluster.workers) == [0, 3]
        cluster.wait_for_workers(2, timeout=5)
        with pytest.raises(TimeoutError):
            cluster.wait_for_workers(3, timeout=0.1)
        cluster.scale(0)
        assert cluster.workers == {}


def test_scale_processes():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        first = cluster.workers[0].process.pid
        cluster.scale(2)
        assert sorted(registered(cluster)) == [0, 1]
        second = cluster.workers[1].process.pid
        cluster.scale(1)
        assert gone(second) and not gone(first)
        poll(lambda: sorted(registered(cluster)) == [0])


def test_asynchronous_threads():
    async def main():
        async with LocalCluster(
            processes=False, n_workers=2, threads_per_worker=2, asynchronous=True
        ) as cluster:
            assert cluster.asynchronous and cluster.status == "running"
            assert sorted(registered(cluster)) == [0, 1]
            assert sum(ws.nthreads for ws in registered(cluster).values()) == 4
            await cluster.scale(3)
            assert sorted(registered(cluster)) == [0, 1, 2]
            await cluster.scale(1)
            assert sorted(cluster.workers) == [0]
            await cluster.wait_for_workers(1, timeout=5)
        assert cluster.status == "closed"
        await cluster.close()  # idempotent

    asyncio.run(main())


def test_asynchronous_processes_awaited():
    async def main():
        cluster = await LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True)
        try:
            assert sorted(registered(cluster)) == [0, 1]
            pids = [n.process.pid for n in cluster.workers.values()]
            assert len(children()) == 2
        finally:
            await cluster.close()
        assert all(gone(pid) for pid in pids)

    asyncio.run(main())


def test_worker_kwargs_and_memory_limit():
    with LocalCluster(
        processes=False,
        n_workers=2,
        threads_per_worker=1,
        memory_limit="1GiB",
        resources={"GPU": 1},
    ) as cluster:
        for ws in registered(cluster).values():
            assert ws.memory_limit == 2**30
            assert ws.resources == {"GPU": 1}
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1) as cluster:
        total = psutil.virtual_memory().total
        assert all(ws.memory_limit == total // 2 for ws in registered(cluster).values())


def test_defaults_follow_dask():
    cpus = cpu_count()
    assert _workers_and_threads(None, None, False) == (1, cpus)
    assert _workers_and_threads(None, 2, False) == (1, 2)
    assert _workers_and_threads(None, 1, True) == (cpus, 1)
    assert _workers_and_threads(3, None, False)[1] == max(1, -(-cpus // 3))
    assert _workers_and_threads(0, None, True) == (0, None)
    n, threads = _workers_and_threads(None, None, True)
    assert n * threads == cpus and (threads == 1 if cpus <= 4 else n >= threads)


def test_forgotten_cluster_is_closed_when_collected():
    cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=1)
    assert any(t.name == "distributary-loop" for t in threading.enumerate())
    del cluster
    gc.collect()
    poll(lambda: not any(t.name == "distributary-loop" for t in threading.enumerate()))


def test_forgotten_cluster_is_closed_at_exit():
    script = textwrap.dedent(
        """
        from distributary import LocalCluster

        if __name__ == "__main__":
            cluster = LocalCluster(n_workers=2, threads_per_worker=1)
            print(*(n.process.pid for n in cluster.workers.values()), flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=40
    )
    assert proc.returncode == 0, proc.stderr
    pids = [int(pid) for pid in proc.stdout.split()]
    assert len(pids) == 2
    poll(lambda: all(gone(pid) for pid in pids))
