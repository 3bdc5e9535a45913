"""Notebook reprs (``_repr_html_``) of Client, Future, Scheduler, Worker and Nanny, and
the cluster template, on real clusters over TCP; and dask's own collection reprs with
distributary installed and no ``distributed``."""

from __future__ import annotations

import asyncio
import html
import re
import subprocess
import sys
import textwrap

import dask.config
from conftest import gen_cluster
from dask.utils import format_bytes

from distributary import Client, LocalCluster, Scheduler, Worker
from distributary.widgets import render


def inc(x):
    return x + 1


def boom(x):
    raise ValueError("<script>alert(1)</script>")


def text_of(page: str) -> str:
    """The visible text of some HTML, its whitespace squeezed."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))).strip()


def row(page: str, label: str) -> str:
    """The value of the table row ``label`` in ``page``."""
    found = re.search(rf"<th[^>]*>{re.escape(label)}</th>\s*<td[^>]*>(.*?)</td>", page, re.S)
    assert found, f"no row {label!r} in {text_of(page)}"
    return text_of(found.group(1))


# ---------------------------------------------------------------------- client and future


def test_client_repr_shows_the_cluster_s_numbers():
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=False, protocol="tcp") as cl,
        Client(cl.scheduler_address) as client,
    ):
        page = client._repr_html_()
        limits = [ws.memory_limit for ws in cl.scheduler.state.workers.values()]
        assert row(page, "Scheduler") == cl.scheduler_address
        assert row(page, "Workers") == "2" and row(page, "Threads") == "4"
        assert row(page, "Memory") == format_bytes(sum(limits))
        assert row(page, "Connection") == "Direct"
        assert row(page, "Dashboard") == cl.scheduler.dashboard_link != ""
        assert row(page, "Status") == "running"
        assert client.id in page
        for worker in cl.workers.values():
            assert worker.address in page
        assert repr(client).startswith("<Client: ")  # (the plain repr stays)
        with Client(cl) as second:
            assert row(second._repr_html_(), "Connection") == "Cluster object: LocalCluster"
    closed = client._repr_html_()  # (a closed client still renders)
    assert row(closed, "Status") == "closed" and row(closed, "Workers") == "unknown"


@gen_cluster()
async def test_asynchronous_client_repr_does_not_block(c, s, a, b):
    page = c._repr_html_()  # (in the client's loop: it cannot ask, and does not wait)
    assert row(page, "Scheduler") == s.address and row(page, "Workers") == "unknown"


def test_asynchronous_client_of_a_cluster_in_this_process_shows_its_workers():
    import asyncio

    async def main():
        async with (
            LocalCluster(
                n_workers=3, threads_per_worker=1, processes=False, asynchronous=True
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            page = client._repr_html_()
            assert row(page, "Workers") == "3" and row(page, "Threads") == "3"

    asyncio.run(main())


def test_future_repr_shows_key_status_type_and_error(c):
    future = c.submit(inc, 1, key="inc-<i>1</i>")
    future.result()
    page = future._repr_html_()
    assert row(page, "Status") == "finished" and row(page, "Type") == "int"
    assert row(page, "Key") == "inc-<i>1</i>"
    assert "<i>1</i>" not in page and "&lt;i&gt;1&lt;/i&gt;" in page
    bad = c.submit(boom, 1)
    c.gather([bad], errors="skip")
    page = bad._repr_html_()
    assert row(page, "Status") == "error"
    assert "<script>" not in page and "alert(1)" in row(page, "Exception")
    assert repr(future) == f"<Future: finished, type: int, key: {future.key}>"


# ---------------------------------------------------------------------- servers


@gen_cluster(nthreads=(2, 3))
async def test_scheduler_repr(c, s, a, b):
    futures = c.map(inc, range(5))
    await c.gather(futures)
    page = s._repr_html_()
    assert row(page, "Address") == s.address and row(page, "Status") == "running"
    assert row(page, "Workers") == "2" and row(page, "Threads") == "5"
    assert row(page, "Memory") == format_bytes(a.memory_limit + b.memory_limit)
    assert row(page, "Tasks") == "5" and row(page, "Clients") == "1"
    assert a.address in page and b.address in page
    assert repr(s).startswith("<Scheduler ")


def test_a_scheduler_not_started_renders():
    page = Scheduler()._repr_html_()
    assert row(page, "Address") == "not started" and row(page, "Workers") == "0"
    assert row(page, "Memory") == "0 B"


@gen_cluster(nthreads=())
async def test_worker_repr_escapes_its_name(c, s):
    async with Worker(s.address, nthreads=3, name="<b>w</b>", memory_limit="2 GiB") as w:
        await c.submit(inc, 1, workers=[w.address])
        page = w._repr_html_()
        assert "<b>w</b>" not in page and "&lt;b&gt;w&lt;/b&gt;" in page
        assert row(page, "Address") == w.address and row(page, "Threads") == "3"
        assert row(page, "Memory limit") == "2.00 GiB" and row(page, "Status") == "running"
        assert row(page, "Scheduler") == s.address
        assert row(page, "Tasks stored") == "1" and row(page, "Tasks running") == "0 / 3"
        assert row(page, "Memory in use").endswith("B")
        scheduler_page = s._repr_html_()
        assert "<b>w</b>" not in scheduler_page and "&lt;b&gt;w&lt;/b&gt;" in scheduler_page


def test_nanny_repr(processes):
    cluster, _ = processes
    nanny = next(iter(cluster.workers.values()))
    page = nanny._repr_html_()
    assert row(page, "Address") == nanny.address and row(page, "Worker") == nanny.worker_address
    assert row(page, "Threads") == "1" and row(page, "Status") == "running"
    assert row(page, "Worker process") == str(nanny.process.pid)
    assert row(page, "Memory limit") == format_bytes(nanny.memory_limit)
    assert repr(nanny).startswith("<Nanny: ")


def test_a_dashboard_link_is_a_link():
    async def main():
        template = {"distributed.dashboard.link": "{scheme}://{host}:{port}/status?x=<1>"}
        with dask.config.set(template):
            async with Scheduler(dashboard_address=":0") as s:
                port = s.service_ports["dashboard"]
                page = s._repr_html_()
        assert f'<a href="http://127.0.0.1:{port}/status?x=&lt;1&gt;"' in page

    asyncio.run(main())


# ---------------------------------------------------------------------- the cluster template


def test_the_cluster_template_renders_its_context():
    workers = [
        {"name": 0, "address": "tcp://127.0.0.1:1", "nthreads": 2, "memory_limit": 2**30},
        {"name": "<x>", "address": "tcp://127.0.0.1:2", "nthreads": 1, "memory_limit": 0},
    ]
    page = render(
        "cluster.html.j2",
        type="LocalCluster",
        name="<mine>",
        status="running",
        scheduler_address="tcp://127.0.0.1:9",
        dashboard_link="http://127.0.0.1:8787/status",
        workers=workers,
        details=[("Adaptive", "off")],
    )
    assert row(page, "Workers") == "2" and row(page, "Threads") == "3"
    assert row(page, "Memory") == "1.00 GiB" and row(page, "Adaptive") == "off"
    assert row(page, "Scheduler") == "tcp://127.0.0.1:9"
    assert '<a href="http://127.0.0.1:8787/status"' in page
    assert "&lt;mine&gt;" in page and "&lt;x&gt;" in page and "<x>" not in page
    assert "no limit" in page  # (the worker without a memory limit)
    empty = render("cluster.html.j2", type="SpecCluster", workers=[])
    assert row(empty, "Workers") == "0" and row(empty, "Dashboard") == "none"


# ---------------------------------------------------------------------- dask's own reprs


def test_dask_collection_reprs_render_without_distributed():
    code = """
        import sys
        sys.modules["distributed"] = None  # (not importable)
        import distributary
        import dask.array as da
        import dask.dataframe as dd
        import pandas as pd
        array = da.ones(10)._repr_html_()
        assert "<table" in array and "Bytes" in array, array[:300]
        df = dd.from_pandas(pd.DataFrame({"a": [1, 2, 3]}), npartitions=2)
        frame = df._repr_html_()
        assert "Dask DataFrame Structure" in frame, frame[:300]
        assert "distributed" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
        print("ok")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok"]
