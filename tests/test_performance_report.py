"""performance_report: one self-contained HTML file of what a block made the cluster do
(summary, task stream, profile, bandwidth), written even when the block raises, and
opened in a real headless browser."""

from __future__ import annotations

import gzip
import json
import re
import tempfile
import time

import pytest
from browser import open_page, requires_chromium
from conftest import gen_cluster

from distributary import performance_report
from distributary.diagnostics import html


def busy_loop_fn(seconds: float) -> float:
    end = time.time() + seconds
    while time.time() < end:
        pass
    return seconds


def add(x: float, y: float) -> float:
    return x + y


def inc(x: int) -> int:
    return x + 1


def chart_data(page: str, kind: str) -> list:
    """The JSON data of each chart of ``kind`` in the page."""
    found = re.findall(
        rf'<script type="application/json" id="{kind}-\d+-data">(.*?)</script>', page
    )
    return [json.loads(text) for text in found]


def run_work(client) -> tuple:
    """Work with a transfer: two busy tasks on two workers, and a task that adds them."""
    a, b = sorted(client.scheduler_info()["workers"])
    x = client.submit(busy_loop_fn, 0.3, workers=[a])
    y = client.submit(busy_loop_fn, 0.31, workers=[b])
    z = client.submit(add, x, y, workers=[b])
    assert z.result() == 0.61
    return a, b, (x, y, z)


def test_the_report_of_worker_processes_holds_what_ran(processes, tmp_path):
    cluster, client = processes
    client.submit(inc, 0).result()  # (before the block: not in the report)
    filename = tmp_path / "report.html"
    with performance_report(filename=str(filename)):
        a, b, futures = run_work(client)
    page = filename.read_text()
    assert "<title>Dask Performance Report</title>" in page
    (stream,) = chart_data(page, "task-stream")
    assert set(stream["keys"]) == {f.key for f in futures}
    compute, workers_loop, scheduler_loop = chart_data(page, "flame-graph")
    assert "busy_loop_fn" in json.dumps(compute)
    assert re.search(r"<dt>Number of tasks</dt><dd>3</dd>", page)
    assert "run_work(client)" in page  # (the code of the block)
    assert f"<td>{a}</td><td>{b}</td>" in page  # (the bandwidth between them)
    assert "src=" not in page and 'href="http' not in page  # (nothing to fetch)


@gen_cluster()
async def test_the_report_with_an_asynchronous_client(c, s, a, b):
    with tempfile.TemporaryDirectory() as directory:
        filename = f"{directory}/report.html.gz"
        async with performance_report(filename=filename):
            await c.gather(c.map(inc, range(5)))
        with gzip.open(filename, "rt") as f:
            page = f.read()
    (stream,) = chart_data(page, "task-stream")
    assert len(stream["keys"]) == 5
    assert "async with performance_report" in page


def test_the_report_is_written_when_the_block_raises(c, tmp_path):
    filename = tmp_path / "failed.html"
    with pytest.raises(ZeroDivisionError), performance_report(filename=filename):
        c.submit(inc, 1).result()
        print(1 / 0)
    page = filename.read_text()
    assert "raised ZeroDivisionError" in page
    assert len(chart_data(page, "task-stream")[0]["keys"]) == 1
    assert c.submit(inc, 2).result() == 3


def test_what_the_report_cannot_do_is_refused_clearly(c, tmp_path):
    with pytest.raises(NotImplementedError, match="storage_options"):
        performance_report(filename=str(tmp_path / "r.html"), storage_options={"anon": True})
    with pytest.raises(NotImplementedError, match="mode='cdn'"):
        performance_report(mode="cdn")
    with pytest.raises(NotImplementedError, match="local files"):
        performance_report(filename="s3://bucket/report.html")
    with pytest.raises(TypeError):
        performance_report(file="x.html")
    with performance_report(filename=str(tmp_path / "inline.html"), mode="inline"):
        pass
    assert "Number of tasks</dt><dd>0" in (tmp_path / "inline.html").read_text()


@requires_chromium
def test_the_report_in_a_browser(processes, tmp_path):
    cluster, client = processes
    filename = tmp_path / "report.html"
    with performance_report(filename=str(filename)):
        a, b, futures = run_work(client)
    with open_page(filename.as_uri()) as (page, errors):
        page.wait_for_selector(".task-stream svg rect.phase")
        keys = set(
            page.eval_on_selector_all(".task-stream rect.phase", "rs => rs.map(r => r.dataset.key)")
        )
        assert keys == {f.key for f in futures}
        actions = page.eval_on_selector_all(
            ".task-stream rect.phase", "rs => rs.map(r => r.dataset.action)"
        )
        assert actions.count("compute") == 3 and "transfer" in actions
        assert page.locator(".task-stream text").filter(has_text="#0").count() == 2  # (rows)
        flame = page.locator("section.flame-graph").first
        assert flame.locator('rect.node[data-name="busy_loop_fn"]').count() >= 1
        width = flame.locator('rect.node[data-name="busy_loop_fn"]').first.bounding_box()["width"]
        flame.locator('rect.node[data-name="busy_loop_fn"]').first.click()  # (zoom in)
        zoomed = flame.locator('rect.node[data-name="busy_loop_fn"]').first.bounding_box()["width"]
        assert zoomed >= width and "busy_loop_fn" in flame.locator(".breadcrumbs").inner_text()
        assert page.locator("table.bandwidth tbody tr").count() == 1
        assert "Number of tasks" in page.locator("section.summary").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert errors == []


@requires_chromium
def test_the_task_stream_and_flame_graph_pages_in_a_browser(c, tmp_path):
    c.gather(c.map(busy_loop_fn, [0.05, 0.051, 0.052, 0.053]))
    c.get_task_stream(plot="save", filename=str(tmp_path / "ts.html"))
    c.profile(filename=str(tmp_path / "profile.html"))
    with open_page((tmp_path / "ts.html").as_uri()) as (page, errors):
        assert page.locator("rect.phase-compute").count() == 4
        page.goto((tmp_path / "profile.html").as_uri())
        assert page.locator('rect.node[data-name="busy_loop_fn"]').count() >= 1
        assert errors == []


def test_the_pages_keep_task_names_as_data_never_as_markup():
    key = "evil-</script><img src=x onerror=alert(1)>"
    record = {
        "key": key,
        "worker": "tcp://127.0.0.1:1",
        "thread": 1,
        "status": "OK",
        "startstops": ({"action": "compute", "start": 1.0, "stop": 2.0},),
    }
    page = html.task_stream_figure([record]).html
    assert "</script><img" not in page and "<img" not in page
    (stream,) = chart_data(page, "task-stream")
    assert stream["keys"] == [key] and stream["rects"] == [[0, 0.0, 1.0, 0, 0, 0, 1, -1]]
    summary = html.page("t", [html.summary_section([("<b>label</b>", "<i>value</i>")], "x < y")])
    assert "&lt;b&gt;label&lt;/b&gt;" in summary and "x &lt; y" in summary
