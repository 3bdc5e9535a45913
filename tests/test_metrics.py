"""Prometheus metrics and health checks of the scheduler and of the workers, over HTTP,
read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import pytest
from conftest import apoll, run
from prometheus_client.parser import text_string_to_metric_families

from distributary import Client, LocalCluster, Scheduler, Worker, wait
from distributary.dashboard.plain import PlainHTTPServer


def inc(x: int) -> int:
    return x + 1


GO = threading.Event()  # (the workers of these tests run in this process)


def wait_for_go(x: int) -> int:
    if not GO.wait(timeout=20):
        raise TimeoutError("never set")
    return x


def fetch(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode(), response.headers["Content-Type"]


async def afetch(url: str) -> tuple[int, str, str]:
    return await asyncio.get_running_loop().run_in_executor(None, fetch, url)


def samples(text: str) -> dict[tuple, float]:
    """``{(name, labels...): value}`` of every sample in the exposition ``text``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def types(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def http(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def test_the_schedulers_metrics_count_workers_clients_and_tasks_by_state():
    async def main():
        async with (
            Scheduler(dashboard_address=":0") as s,
            Worker(s.address, nthreads=1),
            Worker(s.address, nthreads=2) as b,
            Client(s.address, asynchronous=True) as c,
        ):
            port = s.service_ports["dashboard"]
            futures = c.map(inc, range(10), key=[f"inc-{i}" for i in range(10)])
            await wait(futures)
            status, text, kind = await afetch(http(port, "/metrics"))
            assert status == 200 and kind.startswith("text/plain")
            found = samples(text)
            assert found[("dask_scheduler_clients",)] == 1
            assert found[("dask_scheduler_workers_added_total",)] == 2
            assert found[("dask_scheduler_workers_removed_total",)] == 0
            assert found[("dask_scheduler_client_connections_added_total",)] == 1
            assert found[("dask_scheduler_tasks", ("state", "memory"))] == 10
            for state in ("released", "waiting", "queued", "no-worker", "processing", "erred"):
                assert found[("dask_scheduler_tasks", ("state", state))] == 0
            assert found[("dask_scheduler_workers", ("state", "idle"))] == 2
            assert found[("dask_scheduler_tasks_output_bytes", ("task_prefix_name", "inc"))] > 0
            assert found[("dask_scheduler_desired_workers",)] >= 0
            assert ("process_resident_memory_bytes",) in found  # prometheus_client's own
            assert types(text)["dask_scheduler_workers_added"] == "counter"
            assert types(text)["dask_scheduler_tasks"] == "gauge"

            await b.close()
            del futures
            await apoll(lambda: not s.tasks)
            found = samples((await afetch(http(port, "/metrics")))[1])
            assert found[("dask_scheduler_workers_removed_total",)] == 1
            assert found[("dask_scheduler_tasks", ("state", "memory"))] == 0
            assert (await afetch(http(port, "/health")))[:2] == (200, "ok")

    run(main())


def test_the_workers_state_shows_in_its_metrics():
    async def main():
        async with (
            Scheduler() as s,
            Worker(s.address, nthreads=2) as a,
            Client(s.address, asynchronous=True) as c,
        ):
            port = a.http.services["dashboard"]
            futures = c.map(inc, range(5))
            await wait(futures)
            found = samples((await afetch(http(port, "/metrics")))[1])
            assert found[("dask_worker_tasks", ("state", "memory"))] == 5
            assert found[("dask_worker_tasks", ("state", "executing"))] == 0
            assert found[("dask_worker_threads",)] == 2
            assert found[("dask_worker_memory_bytes", ("type", "managed"))] == a.state.nbytes > 0
            assert found[("dask_worker_memory_bytes", ("type", "unmanaged"))] > 0
            assert found[("dask_worker_memory_bytes", ("type", "spilled"))] == 0
            assert found[("dask_worker_transfer_incoming_count",)] == 0
            assert (await afetch(http(port, "/health")))[:2] == (200, "ok")
            assert "dask_scheduler_workers" not in {k[0] for k in found}  # (its own only)

    run(main())


def test_busy_workers_and_running_tasks_are_counted():
    async def main():
        async with (
            Scheduler(dashboard_address=":0") as s,
            Worker(s.address, nthreads=1) as a,
            Client(s.address, asynchronous=True) as c,
        ):
            GO.clear()
            futures = c.map(wait_for_go, range(3))
            await apoll(lambda: a.state.executing)
            scheduler = samples((await afetch(http(s.service_ports["dashboard"], "/metrics")))[1])
            worker = samples((await afetch(http(a.http.services["dashboard"], "/metrics")))[1])
            tasks = {
                state: scheduler[("dask_scheduler_tasks", ("state", state))]
                for state in ("processing", "queued")
            }
            assert sum(tasks.values()) == 3 and tasks["processing"] >= 1
            assert scheduler[("dask_scheduler_workers", ("state", "saturated"))] == 1
            assert worker[("dask_worker_tasks", ("state", "executing"))] == 1
            GO.set()
            assert await c.gather(futures) == [0, 1, 2]

    run(main())


@pytest.mark.timeout(60)
def test_worker_processes_serve_metrics_on_the_port_they_list():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        assert cluster.scheduler.dashboard_link == ""
        c.gather(c.map(inc, range(4)))
        workers = c.scheduler_info()["workers"]
        assert len(workers) == 2
        for address, info in workers.items():
            port = info["services"]["dashboard"]
            assert c.run(lambda dask_worker: dask_worker.http.services, workers=[address]) == {
                address: {"dashboard": port}
            }
            found = samples(fetch(http(port, "/metrics"))[1])
            assert found[("dask_worker_threads",)] == 1
            assert fetch(http(port, "/health"))[1] == "ok"


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_the_workers_small_http_server_answers_only_what_it_serves():
    def broken() -> tuple[bytes, str]:
        raise RuntimeError("no figures")

    async def main():
        server = PlainHTTPServer(
            "test server", {"/ok": lambda: (b"fine", "text/plain"), "/x": broken}
        )
        await server.start("127.0.0.1", 0)
        port = server.port
        try:
            ok = await exchange(port, b"GET /ok?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nfine")
            assert b"Content-Length: 4\r\n" in ok and b"Connection: close\r\n" in ok
            head = await exchange(port, b"HEAD /ok HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            assert (await exchange(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            posted = await exchange(port, b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert posted.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in posted
            assert (await exchange(port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
            huge = b"GET /ok HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n"
            assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431")
            _, silent = await asyncio.open_connection("127.0.0.1", port)
            silent.close()  # (a client that says nothing and leaves)
            assert (await exchange(port, b"GET /ok HTTP/1.0\r\n\r\n")).endswith(b"fine")
            with pytest.warns(UserWarning, match=f"Port {port} is already in use"):
                other = PlainHTTPServer("other", {})
                await other.start("127.0.0.1", port)
            assert other.port != port
            await other.stop()
        finally:
            await server.stop()
        assert not server.running
        with pytest.raises(OSError):
            await exchange(port, b"GET /ok HTTP/1.1\r\n\r\n")

    run(main())
