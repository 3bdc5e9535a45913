"""The dashboard's pages in a real headless browser (Debian's chromium, driven by
playwright): they load without console errors, show the cluster and follow it live.

The browser is tests/browser.py's (``open_page``).  Screenshots are kept in
``test-artifacts/`` (not in git).  Without chromium the tests are skipped, saying so.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from browser import open_page, requires_chromium

from distributary import Client, Event, LocalCluster

ARTIFACTS = pathlib.Path(__file__).parent.parent / "test-artifacts"

pytestmark = [requires_chromium, pytest.mark.timeout(90)]


def slow_inc(x: int) -> int:
    time.sleep(0.02)
    return x + 1


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def received(page) -> int:
    return int(page.eval_on_selector("#task-stream", "c => c.dataset.received"))


def test_the_status_page_shows_the_workers_and_its_task_stream_grows(cluster):
    cluster, client = cluster
    grown = "() => +document.getElementById('task-stream').dataset.received > {}"
    with open_page(client.dashboard_link) as (page, errors):
        page.wait_for_selector("nav .live.on")
        for ws in cluster.scheduler.workers.values():
            page.wait_for_selector(f'#memory g[data-row="{ws.name}"]')
            page.wait_for_selector(f'#processing g[data-row="{ws.name}"]')
        assert page.inner_text('[data-fact="Workers"] b') == "2"
        assert received(page) == 0

        futures = client.map(slow_inc, range(400))
        page.wait_for_function(grown.format(0))
        page.wait_for_function(grown.format(received(page)))
        assert not all(f.done() for f in futures)  # (it grew while the computation ran)
        client.gather(futures)
        page.wait_for_function(grown.format(399))
        page.wait_for_function(
            "() => document.querySelector('#progress g[data-row=\"slow_inc\"]')"
            "?.textContent.includes('400 / 400')"
        )
        screenshot(page, "dashboard-status")
        assert errors == []


def test_the_workers_page_lists_every_worker_live(cluster):
    cluster, client = cluster
    with open_page(client.dashboard_link.replace("/status", "/workers")) as (page, errors):
        addresses = set(cluster.scheduler.workers)
        rows = "document.querySelectorAll('#workers-table tr[data-address]').length"
        page.wait_for_function(f"() => {rows} == {len(addresses)}")
        shown = page.eval_on_selector_all(
            "#workers-table tr[data-address]", "rows => rows.map(r => r.dataset.address)"
        )
        assert set(shown) == addresses
        cluster.scale(3)
        client.wait_for_workers(3)
        page.wait_for_function(f"() => {rows} == 3")
        screenshot(page, "dashboard-workers")
        assert errors == []


def test_the_info_pages_of_a_worker_and_of_a_task(cluster):
    cluster, client = cluster
    future = client.submit(slow_inc, 1, key=("x", 1))
    assert future.result() == 2
    [holder] = client.who_has(future)[future.key]
    base = client.dashboard_link.replace("/status", "")
    with open_page(f"{base}/info/worker/{quote(holder, safe='')}") as (page, errors):
        page.wait_for_selector("text=Worker")
        assert holder in page.inner_text("main")
        page.click("text=('x', 1)")  # the key it holds, to the task's page
        page.wait_for_selector("text=Story")
        text = page.inner_text("main")
        assert "memory" in text and "processing" in text and holder in text
        screenshot(page, "dashboard-task")
        page.goto(f"{base}/info/task/{quote('no-such-key')}")
        page.wait_for_selector("text=No task 'no-such-key'")
        marked = client.submit(slow_inc, 2, key="<b id=injected>bold</b>")
        assert marked.result() == 3
        page.goto(f"{base}/info/task/{quote(marked.key)}")
        page.wait_for_selector("text=Story")
        assert marked.key in page.inner_text("main")  # (shown as text, not as markup)
        assert page.query_selector("#injected") is None
        assert [e for e in errors if "404" not in e] == []  # (the page of a missing key)


def wait_for(event_name: str) -> str:
    Event(event_name).wait(timeout=60)
    return "done"


def test_an_info_page_follows_its_task_as_the_feed_pushes(cluster):
    cluster, client = cluster
    go = Event("go")
    future = client.submit(wait_for, "go", key="waiter")
    base = client.dashboard_link.replace("/status", "")
    state = "() => document.querySelector('main dl dd')?.textContent"
    with open_page(f"{base}/info/task/waiter") as (page, errors):
        page.wait_for_function(f"{state} === 'processing'")
        feed = cluster.scheduler.http.feed
        assert feed is not None and feed.connections == 1  # (the page is on the live feed)
        go.set()
        assert future.result(timeout=30) == "done"
        page.wait_for_function(f"{state} === 'memory'")  # (no reload: the page read again)
        assert errors == []
