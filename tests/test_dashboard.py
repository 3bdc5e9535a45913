"""The dashboard: where it listens, its links, its JSON, its pages and its live feed.

The parsing of addresses, the numbering of frames and the task-stream cursor are tested
on their own, without an event loop; the rest runs real clusters over TCP and talks
HTTP to them (aiohttp's client).  The pages in a browser: tests/test_dashboard_browser.py;
``/metrics`` and ``/health``: tests/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import dask.config
import pytest
from conftest import apoll, run

from distributary import Client, LocalCluster, Scheduler, Worker
from distributary.dashboard.address import (
    format_dashboard_link,
    link_host,
    parse_http_address,
    scheduler_dashboard_link,
)
from distributary.dashboard.feed import RING_LENGTH, FrameRing, event
from distributary.dashboard.stream import StreamCursor, key_text


def inc(x: int) -> int:
    return x + 1


def slow_inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


# ---------------------------------------------------------------------- addresses and links


@pytest.mark.parametrize(
    "address, expected",
    [
        (":8787", ("", 8787)),
        (":0", ("", 0)),
        ("0.0.0.0:8787", ("0.0.0.0", 8787)),
        ("localhost:1234", ("localhost", 1234)),
        ("localhost", ("localhost", 8787)),
        ("[::1]:8787", ("::1", 8787)),
        ("8000", ("", 8000)),
        (8000, ("", 8000)),
        ("http://10.0.0.1:9000/", ("10.0.0.1", 9000)),
        ("tcp://127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_dashboard_addresses_are_read_as_dask_distributed_reads_them(address, expected):
    assert parse_http_address(address, "", 8787) == expected


@pytest.mark.parametrize(
    "address, error, match",
    [
        ("host:port", ValueError, "Invalid port 'port'"),
        (":99999", ValueError, "Invalid port"),
        ("::1:8787", ValueError, "brackets"),
        ("[::1", ValueError, r"\[host\]:port"),
        ("a b:1", ValueError, "Invalid host"),
        (["localhost", 1], TypeError, "dashboard_address must be"),
        (True, TypeError, "dashboard_address must be"),
        (-1, ValueError, "Invalid port -1"),
    ],
)
def test_a_malformed_dashboard_address_is_a_clear_error(address, error, match):
    with pytest.raises(error, match=match):
        parse_http_address(address, "", 8787)


def test_the_link_follows_the_configured_template():
    assert format_dashboard_link("127.0.0.1", 8787) == "http://127.0.0.1:8787/status"
    assert format_dashboard_link("::1", 1) == "http://[::1]:1/status"
    template = {"distributed.dashboard.link": "{scheme}://{host}:{port}/x/{USER}"}
    with dask.config.set(template), pytest.MonkeyPatch.context() as env:
        env.setenv("USER", "ada")
        assert format_dashboard_link("h", 2) == "http://h:2/x/ada"


def test_a_server_on_every_interface_is_linked_by_the_nodes_host():
    assert link_host("10.0.0.5", "127.0.0.1") == "10.0.0.5"
    assert link_host("0.0.0.0", "10.0.0.5") == "10.0.0.5"
    assert link_host("", None) == socket.gethostname()
    assert scheduler_dashboard_link("tcp://10.0.0.5:8786", {"dashboard": 8787}) == (
        "http://10.0.0.5:8787/status"
    )
    assert scheduler_dashboard_link("tcp://10.0.0.5:8786", {}) == ""


# ---------------------------------------------------------------------- frames and the cursor


def test_the_ring_keeps_the_last_frames_numbered():
    ring = FrameRing(3)
    assert ring.since(0) == [] and ring.last == 0
    for i in range(5):
        assert ring.add(event({"i": i})) == i + 1
    assert ring.since(5) == []
    assert ring.since(4) == [b'data: {"i":4}\n\n']
    # a connection that fell behind gets what is kept, no more
    assert [json.loads(f[6:]) for f in ring.since(0)] == [{"i": 2}, {"i": 3}, {"i": 4}]


def record(key, worker, thread, start, stop, action="compute", status="OK"):
    return {
        "key": key,
        "worker": worker,
        "thread": thread,
        "status": status,
        "startstops": ({"action": action, "start": start, "stop": stop},),
    }


def test_the_cursor_sends_each_record_once_and_asks_for_a_bounded_amount():
    cursor = StreamCursor(limit=8)  # (4 per update)
    assert cursor.request(workers=2) == {"count": 2}  # the first time: each worker's newest
    first = [record(("x", i), "tcp://a:1", 111, 10.0 + i, 10.5 + i) for i in range(3)]
    rectangles = cursor.take(first, now=20.0)
    assert [r["k"] for r in rectangles] == ["('x', 0)", "('x', 1)", "('x', 2)"]
    assert {(r["p"], r["w"], r["t"], r["a"], r["x"]) for r in rectangles} == {
        ("x", "tcp://a:1", 0, "compute", "OK")
    }
    assert cursor.request(2) == {"start": 19.0}  # (quiet: what finished since, and a second)
    again = [*first[1:], record("y", "tcp://a:1", 222, 19.5, 19.9, status="error")]
    [new] = cursor.take(again, now=21.0)  # (the overlap is not sent twice)
    assert (new["k"], new["t"], new["x"]) == ("y", 1, "error")
    busy = [record(i, "tcp://b:2", 5, 20.0 + i / 10, 20.05 + i / 10) for i in range(10)]
    assert len(cursor.take(busy, now=22.0)) == 4  # at most half a page per update
    assert cursor.request(3) == {"count": 2}  # busy: only the newest next time
    assert len(cursor.recent) == 8 and cursor.recent[-1]["k"] == "9"
    old = [record("z", "tcp://b:2", 5, 1.0, 2.0)]  # long gone: not drawn again
    assert cursor.take(old, now=23.0) == [] and cursor.request(1) == {"start": 22.0}


def test_keys_that_came_back_as_lists_are_shown_as_the_tuples_they_were():
    assert key_text(["x", 1, ["y", 2]]) == "('x', 1, ('y', 2))"
    assert key_text("x") == "x" and key_text(3) == "3"


# ---------------------------------------------------------------------- a cluster with one


@contextlib.asynccontextmanager
async def dashboard_cluster(
    nthreads: tuple = (1, 1), **scheduler_kwargs
) -> AsyncIterator[tuple[Client, Scheduler, list[Worker]]]:
    scheduler_kwargs.setdefault("dashboard_address", ":0")
    async with Scheduler(**scheduler_kwargs) as s:
        workers = [await Worker(s.address, nthreads=n, heartbeat_interval="50ms") for n in nthreads]
        try:
            async with Client(s.address, asynchronous=True) as c:
                yield c, s, workers
        finally:
            for w in workers:
                await w.close()


def base(s: Scheduler) -> str:
    return f"http://127.0.0.1:{s.service_ports['dashboard']}"


async def get(url: str, **kwargs) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        return response.status, await response.text(), response.content_type


def test_the_scheduler_serves_on_a_random_loopback_port_and_links_to_it():
    async def main():
        async with dashboard_cluster() as (c, s, (a, b)):
            port = s.service_ports["dashboard"]
            assert port > 0 and s.http.server.host == "127.0.0.1"
            assert s.dashboard_link == f"http://127.0.0.1:{port}/status"
            assert s.identity()["services"] == {"dashboard": port}
            assert (await c.scheduler_info())["services"] == {"dashboard": port}
            assert c.dashboard_link == s.dashboard_link  # (a client of an address)
            status, text, kind = await get(s.dashboard_link)
            assert status == 200 and kind == "text/html" and "Task stream" in text
            assert (await get(base(s) + "/", allow_redirects=False))[0] == 302

    run(main())


def test_no_dashboard_address_or_dashboard_false_serve_nothing():
    async def main():
        for kwargs in (
            {"dashboard_address": None},
            {"dashboard_address": ":0", "dashboard": False},
        ):
            async with Scheduler(**kwargs) as s, Client(s.address, asynchronous=True) as c:
                assert s.dashboard_link == "" and s.service_ports == {}
                assert s.identity()["services"] == {} and c.dashboard_link == ""
                assert not s.http.server.running

    run(main())


def test_dashboard_true_without_an_address_serves_on_the_default_port():
    async def main():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (8787 may be taken: then another port)
            async with Scheduler(dashboard=True) as s:
                assert s.service_ports["dashboard"] > 0
                assert (await get(base(s) + "/health"))[1] == "ok"

    run(main())


def test_a_port_in_use_is_a_warning_and_another_port():
    async def main():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.warns(UserWarning, match=f"Port {port} is already in use.*served on port"):
                s = await Scheduler(dashboard_address=f"127.0.0.1:{port}")
            async with s, Worker(s.address, nthreads=1), Client(s.address, asynchronous=True) as c:
                new = s.service_ports["dashboard"]
                assert new not in (0, port) and s.dashboard_link.endswith(f":{new}/status")
                assert await c.submit(inc, 1) == 2
                assert (await get(base(s) + "/health"))[1] == "ok"

    run(main())


def test_a_malformed_dashboard_address_fails_the_scheduler_clearly_and_nothing_else():
    async def main():
        with pytest.raises(ValueError, match="Invalid port 'x' in dashboard_address ':x'"):
            Scheduler(dashboard_address=":x")
        with pytest.raises(TypeError, match="dashboard_address must be"):
            Worker("tcp://127.0.0.1:1", dashboard_address=object())
        async with dashboard_cluster() as (c, s, _):
            assert await c.submit(inc, 1) == 2

    run(main())


def test_the_dashboard_follows_the_schedulers_host_unless_told_otherwise():
    async def main():
        async with Scheduler(host="127.0.0.1", dashboard_address="0.0.0.0:0") as s:
            assert s.http.server.host == "0.0.0.0"
            assert s.dashboard_link.startswith("http://127.0.0.1:")  # (the scheduler's host)
            assert (await get(base(s) + "/health"))[1] == "ok"
        async with Scheduler(protocol="inproc", dashboard_address=":0") as s:
            assert s.http.server.host == "127.0.0.1"  # (in-process: loopback)

    run(main())


def test_a_local_cluster_serves_the_dashboard_and_a_workers_http_server():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (8787 may be taken on this machine)
        with (
            LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
            Client(cluster) as c,
        ):
            link = cluster.scheduler.dashboard_link
            assert link.startswith("http://127.0.0.1:") and c.dashboard_link == link
            [worker] = c.scheduler_info()["workers"].values()
            assert worker["services"]["dashboard"] > 0


# ---------------------------------------------------------------------- the JSON the pages read


def test_the_api_describes_workers_and_tasks_with_their_story():
    async def main():
        async with dashboard_cluster(nthreads=(2, 1)) as (c, s, (a, b)):
            x = c.submit(inc, 1, key=("x", 0), workers=[a.address])
            y = c.submit(boom, x, key="y")
            await x
            with pytest.raises(ValueError):
                await y
            await apoll(lambda: s.workers[a.address].usage)  # (a heartbeat came)
            status, text, _ = await get(base(s) + "/api/workers")
            rows = {row["address"]: row for row in json.loads(text)}
            assert status == 200 and set(rows) == {a.address, b.address}
            row = rows[a.address]
            assert (row["nthreads"], row["stored"], row["status"]) == (2, 1, "running")
            assert row["managed"] >= 0 and row["memory"] > 0 and row["cpu"] >= 0
            assert row["services"] == a.http.services

            url = base(s) + "/api/worker/" + quote(a.address, safe="")
            status, text, _ = await get(url)
            detail = json.loads(text)
            assert status == 200 and detail["held"][0]["key"] == "('x', 0)"
            assert detail["pid"] == os.getpid() and detail["local_directory"] == a.local_directory

            status, text, _ = await get(base(s) + "/api/task/" + quote("('x', 0)"))
            task = json.loads(text)
            assert (task["state"], task["prefix"], task["who_has"]) == ("memory", "x", [a.address])
            assert task["dependents"] == [{"key": "y", "state": "erred"}]
            assert [(e["start"], e["finish"]) for e in task["story"]][-1] == (
                "processing",
                "memory",
            )
            status, text, _ = await get(base(s) + "/api/task/y")
            assert "boom 2" in json.loads(text)["exception"]

            for missing in ("/api/task/nope", "/api/worker/tcp%3A%2F%2F1.2.3.4%3A5"):
                status, text, _ = await get(base(s) + missing)
                assert status == 404 and "No " in text
            for page in ("/status", "/workers", "/info/task/y", "/info/worker/x"):
                status, text, kind = await get(base(s) + page)
                assert status == 200 and kind == "text/html", page
            status, text, kind = await get(base(s) + "/static/status.js")
            assert status == 200 and "TaskStream" in text
            assert (await get(base(s) + "/static/../scheduler.py"))[0] in (403, 404)

    run(main())


# ---------------------------------------------------------------------- the live feed


async def read_frames(response: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    async for line in response.content:
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def test_the_live_feed_pushes_workers_progress_and_the_task_stream_while_a_page_is_open():
    async def main():
        with dask.config.set({"distributed.dashboard.update-interval": "50ms"}):
            async with dashboard_cluster() as (c, s, (a, b)):
                # nobody looked yet: no application, not even aiohttp's, and no watch
                assert s.http.feed is None and s.progress.watching == 0
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(base(s) + "/events") as response,
                ):
                    assert response.content_type == "text/event-stream"
                    frames = read_frames(response)
                    first = await anext(frames)
                    assert first["first"] and {w["address"] for w in first["workers"]} == {
                        a.address,
                        b.address,
                    }
                    assert s.http.feed.ticking and s.progress.watching == 1
                    futures = c.map(slow_inc, range(40))
                    seen: set = set()
                    progress = None
                    async for frame in frames:
                        seen.update(r["k"] for r in frame["stream"] if r["a"] == "compute")
                        progress = {p["name"]: p for p in frame["prefixes"]}
                        if len(seen) == 40 and progress["slow_inc"]["memory"] == 40:
                            break
                    assert progress["slow_inc"]["total"] == 40
                    assert seen == {f.key for f in futures}
                await apoll(lambda: not s.http.feed.ticking)  # the page left: no more work
                assert s.progress.watching == 0 and s.http.feed.connections == 0
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(base(s) + "/events") as response,
                ):
                    first = await anext(read_frames(response))  # a new page: the recent ones
                    assert {r["k"] for r in first["stream"]} >= {f.key for f in futures}

    run(main())


async def open_stream(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A raw connection that asks for the feed (and reads only if told to)."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_a_hundred_pages_a_stalled_one_and_one_that_leaves_do_not_stop_the_scheduler():
    async def main():
        config = {
            "distributed.dashboard.update-interval": "20ms",
            "distributed.dashboard.send-timeout": "500ms",
        }
        with dask.config.set(config):
            async with dashboard_cluster(nthreads=(2, 2)) as (c, s, _):
                port = s.service_ports["dashboard"]
                loop = asyncio.get_running_loop()
                pages = [await open_stream(port) for _ in range(100)]
                stalled = await open_stream(port, receive_buffer=4096)  # never reads
                leaving = await open_stream(port)
                await apoll(lambda: s.http.feed and s.http.feed.connections == 102)
                feed = s.http.feed
                received = [0] * len(pages)

                async def read(i: int, sock: socket.socket) -> None:
                    while True:
                        data = await loop.sock_recv(sock, 65536)
                        if not data:
                            return
                        received[i] += len(data)

                readers = [loop.create_task(read(i, sock)) for i, sock in enumerate(pages)]
                await loop.sock_recv(leaving, 1000)
                leaving.close()  # mid-stream
                largest = 0
                futures = c.map(inc, range(3000))
                done = loop.create_task(c.gather(futures))
                while not done.done():
                    largest = max(largest, *feed.buffered(), 0)
                    await asyncio.sleep(0.01)
                assert await done == list(range(1, 3001))
                await apoll(lambda: feed.connections <= 100, timeout=15)  # both dropped
                assert largest < RING_LENGTH * 200_000 + 1_000_000  # bounded, per connection
                assert all(n > 0 for n in received)  # every page was fed meanwhile
                assert await c.submit(inc, 1) == 2
                for sock in (*pages, stalled):
                    sock.close()
                for reader in readers:
                    reader.cancel()
                await apoll(lambda: feed.connections == 0 and not feed.ticking)

    run(main(), timeout=60)


def test_pages_beyond_max_connections_are_refused_and_the_others_go_on():
    async def main():
        with dask.config.set({"distributed.dashboard.max-connections": 2}):
            async with dashboard_cluster() as (c, s, _):
                async with aiohttp.ClientSession() as session:
                    one = await session.get(base(s) + "/events")
                    two = await session.get(base(s) + "/events")
                    await apoll(lambda: s.http.feed.connections == 2)
                    async with session.get(base(s) + "/events") as three:
                        assert three.status == 503
                        assert "max-connections" in await three.text()
                    assert await anext(read_frames(one)) and await anext(read_frames(two))
                    one.close()
                    two.close()
                await apoll(lambda: s.http.feed.connections == 0)

    run(main())


def test_closing_the_scheduler_ends_the_open_streams():
    async def main():
        s = await Scheduler(dashboard_address=":0")
        async with aiohttp.ClientSession() as session:
            response = await session.get(base(s) + "/events")
            assert await anext(read_frames(response))
            started = time.monotonic()
            await s.close()
            assert time.monotonic() - started < 3
            assert [frame async for frame in read_frames(response)] == []

    run(main())


# ---------------------------------------------------------------------- workers


def test_workers_report_cpu_and_network_in_their_heartbeats():
    async def main():
        async with dashboard_cluster(nthreads=(1,)) as (c, s, (a,)):
            ws = s.workers[a.address]
            await apoll(lambda: ws.usage)
            assert set(ws.usage) == {"cpu", "read_bps", "write_bps"}
            metrics = (await c.scheduler_info())["workers"][a.address]["metrics"]
            assert metrics["cpu"] >= 0 and set(metrics["host_net_io"]) == {"read_bps", "write_bps"}

    run(main())


def test_a_worker_serves_on_the_address_it_is_given():
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        async with Scheduler() as s, Worker(s.address, dashboard_address=f":{port}") as w:
            assert w.http.services == {"dashboard": port}
            assert s.workers[w.address].services == {"dashboard": port}
            assert s.get_worker_service_addr(w.address, "dashboard") == ("127.0.0.1", port)
            status, text, _ = await get(f"http://127.0.0.1:{port}/health")
            assert (status, text) == (200, "ok")
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(f"http://127.0.0.1:{port}/health")  # (closed with the worker)

    run(main())


LAZY = """
import asyncio, sys, urllib.request
from distributary import Scheduler

async def main():
    async with Scheduler(dashboard_address=":0") as s:
        before = "aiohttp" in sys.modules
        url = s.dashboard_link.replace("/status", "/health")
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url).read())
        print(before, answer.decode(), "aiohttp" in sys.modules)

asyncio.run(main())
"""


def test_the_dashboard_application_starts_with_its_first_request():
    out = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "ok", "True"], out.stderr
