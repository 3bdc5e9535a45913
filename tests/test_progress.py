"""``progress()`` on real clusters over TCP: a text bar in a terminal (captured stdout),
with an asynchronous client, with worker processes, and a live widget in a real IPython
kernel; and the scheduler's progress extension while a computation runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pathlib
import re
import textwrap
import threading
import time

import dask.array as da
import pytest
from conftest import gen_cluster
from test_progress_state import active, expected_counts

from distributary import Client, LocalCluster, progress

ROOT = pathlib.Path(__file__).parent.parent


def slow(x, delay=0.005):
    time.sleep(delay)
    return x


def inc(x):
    return x + 1


def boom(x):
    raise ValueError(f"boom <{x}>")


GATES: dict[str, threading.Event] = {}  # (the workers of gen_cluster run in this process)


def gated(x, name):
    assert GATES[name].wait(20)
    return x


def gate(name: str) -> threading.Event:
    GATES[name] = threading.Event()
    return GATES[name]


@pytest.fixture
def tcp_client():
    """A blocking client of a two-worker cluster in this process, over TCP."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp") as cl,
        Client(cl.scheduler_address) as client,
    ):
        yield client


def final_lines(out: str) -> list[str]:
    """What a terminal shows at the end: each line as its last ``\\r`` left it."""
    return [line.rsplit("\r", 1)[-1] for line in out.rstrip("\n").split("\n")]


# ---------------------------------------------------------------------- terminal


def test_text_bar_blocks_until_done_and_reaches_100_percent(tcp_client, capsys):
    xs = tcp_client.map(slow, range(40))
    ys = tcp_client.map(inc, xs)
    assert progress(ys, multi=False) is None
    assert all(f.done() for f in ys + xs)  # (it blocked until every task finished)
    out = capsys.readouterr().out
    first, *rest = final_lines(out)
    assert re.fullmatch(r"\[#{40}\] \| 100% Completed \| +\d+\.\ds", first), first
    assert rest == []
    assert "\r[" in out and out.endswith("\n")


def test_text_bar_has_a_line_per_prefix_with_multi(tcp_client, capsys):
    xs = tcp_client.map(slow, range(30))
    ys = tcp_client.map(inc, xs)
    total = tcp_client.submit(sum, ys, key="total-1")
    progress(total, width=20)
    assert total.result() == sum(range(1, 31))
    first, *rest = final_lines(capsys.readouterr().out)
    assert first.startswith("[" + "#" * 20 + "] | 100% Completed")
    lines = [line.split() for line in rest]
    # the most numerous first: each with its bar full and finished / all
    assert [line[0] for line in lines] == ["inc", "slow", "total"]
    assert [line[-3:] for line in lines] == [["30", "/", "30"], ["30", "/", "30"], ["1", "/", "1"]]
    assert all(line[1] == "[" + "#" * 20 + "]" for line in lines)


def test_text_bar_shows_erred_tasks(tcp_client, capsys):
    bad = tcp_client.submit(boom, 1)
    after = tcp_client.map(inc, [bad] * 3, pure=False)
    good = tcp_client.map(slow, range(5))
    progress(after + good)
    first, *rest = final_lines(capsys.readouterr().out)
    assert "| 100% Completed | 4 erred |" in first
    assert any(line.split()[0] == "inc" and line.endswith("3 / 3, 3 erred") for line in rest)
    assert any(line.split()[0] == "boom" and line.endswith("1 / 1, 1 erred") for line in rest)
    assert "Exception:" in rest[-1] and "boom <1>" in rest[-1]
    assert [f.result() for f in good] == list(range(5))  # (the cluster works on)


@gen_cluster()
async def test_complete_false_counts_only_what_is_left_to_run(c, s, a, b):
    first = c.map(slow, range(10))
    await c.gather(first)
    go = gate("go-complete")
    then = c.map(gated, first, name="go-complete")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        left = progress(then, complete=False)
        everything = progress(then, complete=True)
        await poll_async(lambda: len(s.progress._bars) == 2)  # (both started: then go)
        go.set()
        await asyncio.gather(left, everything)
    groups = [line.split() for line in final_lines(out.getvalue()) if line.startswith("  ")]
    # complete=False: the tasks still to run; complete=True: those that ran already too
    assert sorted(g[0] for g in groups) == ["gated", "gated", "slow"]
    assert all(g[-3:] == ["10", "/", "10"] for g in groups)


def test_group_by_a_function_of_the_key(tcp_client, capsys):
    xs = tcp_client.map(slow, range(6), key=[f"x-{i % 2}-{i}" for i in range(6)])
    progress(xs, group_by=lambda key: "even" if key.split("-")[1] == "0" else "odd")
    _, *rest = final_lines(capsys.readouterr().out)
    assert sorted(line.split()[0] for line in rest) == ["even", "odd"]


def test_collections_persisted_and_not(tcp_client, capsys):
    x = da.ones((40,), chunks=10)
    persisted = tcp_client.persist(x + 1)
    progress(persisted)
    first, *rest = final_lines(capsys.readouterr().out)
    assert "100% Completed" in first
    assert [line.split()[0] for line in rest] == ["add"] and rest[0].endswith(" 4 / 4")
    progress(x)  # (not persisted: no futures, nothing to follow, as in dask)
    first, *rest = final_lines(capsys.readouterr().out)
    assert "100% Completed" in first and rest == []
    assert persisted.sum().compute() == 80.0


def test_bad_input_gets_a_clear_error(tcp_client):
    f = tcp_client.submit(inc, 1)
    with pytest.raises(TypeError, match="colour"):
        progress(f, colour="red")
    with pytest.raises(NotImplementedError, match="spans"):
        progress(f, group_by="spans")
    with pytest.raises(ValueError, match="group_by"):
        progress(f, group_by=3)
    with pytest.raises(NotImplementedError, match="loop"):
        progress(f, loop=object())
    with pytest.raises(ZeroDivisionError):
        progress(f, group_by=lambda key: 1 / 0)  # (raised on the scheduler)
    assert tcp_client.submit(inc, 2).result() == 3


def test_updates_travel_at_the_bar_s_interval_not_per_task(tcp_client, capsys):
    from distributary.diagnostics.progressbar import TextProgressBar

    xs = tcp_client.map(slow, range(400), delay=0.002)
    bar = TextProgressBar([f.key for f in xs], tcp_client, interval="100ms")
    started = time.monotonic()
    tcp_client.sync(bar.listen)
    elapsed = time.monotonic() - started
    assert bar.status == "finished"
    # (at most one report per interval, plus the first: never one per task)
    assert bar.reports <= elapsed / 0.1 + 2 and bar.reports < len(xs) / 4, bar.reports


def test_worker_processes(processes, capsys):
    _, client = processes
    xs = client.map(slow, range(20))
    progress(xs)
    assert all(f.status == "finished" for f in xs)
    first, *rest = final_lines(capsys.readouterr().out)
    assert "100% Completed" in first and rest[0].endswith("20 / 20")


# ---------------------------------------------------------------------- asynchronous


@gen_cluster()
async def test_asynchronous_client_returns_a_running_task(c, s, a, b):
    go = gate("go-async")
    xs = c.map(gated, range(10), name="go-async")
    task = progress(xs)
    assert isinstance(task, asyncio.Task)
    await poll_async(lambda: s.progress._bars)  # (the bar started on the scheduler)
    assert not task.done()  # (it does not block, and the tasks wait)
    go.set()
    await asyncio.wait_for(task, 10)
    assert all(f.done() for f in xs)
    assert not s.progress._bars and s.state.observers == []


@gen_cluster()
async def test_asynchronous_text_output(c, s, a, b):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        await progress(c.map(inc, range(5)))
    first, *rest = final_lines(out.getvalue())
    assert "100% Completed" in first and rest == ["  inc [" + "#" * 40 + "] 5 / 5"]


@gen_cluster()
async def test_a_bar_stopped_early_leaves_nothing_on_the_scheduler(c, s, a, b):
    go = gate("go-stop")
    xs = c.map(gated, range(4), name="go-stop")
    task = progress(xs, notebook=False)
    await poll_async(lambda: s.progress._bars)
    assert s.state.observers
    task.cancel()
    await poll_async(lambda: not s.progress._bars)
    assert s.state.observers == []
    go.set()
    await c.gather(xs)


async def poll_async(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, predicate
        await asyncio.sleep(0.005)


@gen_cluster()
async def test_widgets_with_an_asynchronous_client(c, s, a, b):
    from distributary.diagnostics.progressbar import MultiProgressWidget, ProgressWidget

    go = gate("go-widget")
    xs = c.map(gated, range(6), name="go-widget")
    bad = c.submit(boom, "<b>")
    multi = progress(xs, bad, notebook=True)
    single = progress(xs, notebook=True, multi=False)
    assert isinstance(multi, MultiProgressWidget) and isinstance(single, ProgressWidget)
    assert not multi._listening.done()  # (returned at once)
    go.set()
    await asyncio.wait_for(asyncio.gather(multi._listening, single._listening), 10)
    assert single.bar.value == 1.0 and single.bar.bar_style == "success"
    assert "6 / 6" in single.bar_text.value and "Finished" in single.elapsed_time.value
    assert multi.bars["gated"].value == 1.0 and multi.bars["gated"].bar_style == "success"
    assert multi.bars["boom"].bar_style == "danger"
    assert "1 erred" in multi.bar_texts["boom"].value
    assert "Exception" in multi.elapsed_time.value and "&lt;b&gt;" in multi.elapsed_time.value
    rows = multi.widget.children[1].children
    assert [row.children[1] for row in rows] == [multi.bars["gated"], multi.bars["boom"]]


# ---------------------------------------------------------------------- the extension


@gen_cluster(nthreads=(2, 1))
async def test_counts_per_prefix_match_the_state_at_each_step(c, s, a, b):
    """After each batch of events the scheduler handles (checked at the next turn of
    its loop, once a transition happened), the counts are the state's."""
    assert s.state.observers == []
    xs = c.map(slow, range(20))
    await c.gather(xs[:3])  # (counting begins with tasks in several states)
    watch = s.progress.acquire()
    loop = asyncio.get_running_loop()
    steps = []
    wrong = []

    def check():
        steps.append(None)
        if active(watch.counts()) != expected_counts(s.state):
            wrong.append((active(watch.counts()), expected_counts(s.state)))

    def moved(key, start, finish, stimulus_id):
        if not steps or steps[-1] is not False:
            steps.append(False)
            loop.call_soon(check)

    s.state.observers.append(moved)
    try:
        ys = c.map(inc, xs)
        bad = c.submit(boom, 0)
        total = c.submit(sum, ys)
        await total
        await c.gather([bad], errors="skip")
        counts = watch.counts()
        assert counts["sum"]["memory"] == 1 and counts["boom"]["erred"] == 1
        assert counts["slow"]["all"] == 20 and counts["inc"]["all"] == 20
        del xs, ys, bad, total
        await poll_async(lambda: watch.counts().get("slow", {}).get("forgotten") == 20)
    finally:
        s.state.observers.remove(moved)
    assert not wrong, wrong[0]
    counts = watch.counts()
    assert not s.state.tasks and all(row["all"] == row["forgotten"] for row in counts.values())
    assert steps.count(None) > 10  # (checked at many steps)
    watch.release()
    assert s.state.observers == []  # (nobody wants progress: no transition pays)


@gen_cluster()
async def test_no_observer_while_nobody_wants_progress(c, s, a, b):
    await c.gather(c.map(inc, range(10)))
    assert s.state.observers == []
    go = gate("go-watch")
    xs = c.map(gated, range(3), name="go-watch")
    task = progress(xs)
    await poll_async(lambda: s.state.observers)
    go.set()
    await task
    assert s.state.observers == []


# ---------------------------------------------------------------------- a notebook kernel

KERNEL_CODE = """
import time
from distributary import Client, Event, LocalCluster, progress
cluster = LocalCluster(
    n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None
)
client = Client(cluster.scheduler_address)

def gated(x):
    Event("go-kernel").wait()
    return x

xs = client.map(gated, range(12))
ys = client.map(lambda x: x + 1, xs, key=[f"plus-{i}" for i in range(12)])
started = time.monotonic()
bar = progress(ys)
print("returned", type(bar).__name__, time.monotonic() - started < 5, bar._listening.done())
bar
"""

KERNEL_AFTER = """
import json
Event("go-kernel").set()
bar._listening.result(timeout=30)
rows = bar.widget.children[1].children
print(json.dumps({
    "elapsed": bar.widget.children[0].value,
    "rows": [[r.children[2].value, r.children[1].value, r.children[1].max,
              r.children[1].bar_style, r.children[0].value] for r in rows],
    "model_ids": [r.children[1].model_id for r in rows],
}))
client.close()
cluster.close()
"""


def run_cell(kc, code: str) -> tuple[dict, list[dict]]:
    """Run ``code`` in the kernel: its reply, and every message on iopub until the kernel
    is idle again (those sent from other threads, without a parent, too)."""
    msg_id = kc.execute(textwrap.dedent(code))
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        messages.append(msg)
        if (
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id
        ):
            break
    while True:  # (replies to the kernel-info requests of wait_for_ready may come first)
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply, messages


def printed(messages: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


@pytest.mark.timeout(120)
def test_a_live_widget_in_a_notebook_kernel():
    from jupyter_client import KernelManager

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, first = run_cell(kc, KERNEL_CODE)
        assert reply["content"]["status"] == "ok", reply["content"]
        # (it returned at once, while the tasks wait for the event)
        assert printed(first).split() == ["returned", "MultiProgressWidget", "True", "False"]
        shown = [m for m in first if m["msg_type"] in ("display_data", "execute_result")]
        assert shown and "application/vnd.jupyter.widget-view+json" in shown[0]["content"]["data"]
        reply, after = run_cell(kc, KERNEL_AFTER)
        assert reply["content"]["status"] == "ok", reply["content"]
        state = json.loads(printed(after).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "Finished" in state["elapsed"]
    labels = " ".join(row[0] for row in state["rows"])
    assert ">gated<" in labels and ">plus<" in labels
    for _, value, maximum, style, count in state["rows"]:
        assert value == maximum == 1.0 and style == "success"
        assert "12 / 12" in count
    # the kernel told the frontend each bar's last value (the widgets' comm messages)
    values = {}
    for msg in first + after:
        if msg["msg_type"] in ("comm_msg", "comm_open"):
            widget_state = msg["content"]["data"].get("state", {})
            if "value" in widget_state:
                values[msg["content"]["comm_id"]] = widget_state["value"]
    assert [values.get(model) for model in state["model_ids"]] == [1.0, 1.0], values


def test_the_signature_is_dask_distributed_s():
    import inspect

    P = inspect.Parameter
    params = [(p.name, p.kind, p.default) for p in inspect.signature(progress).parameters.values()]
    assert params == [
        ("futures", P.VAR_POSITIONAL, P.empty),
        ("notebook", P.KEYWORD_ONLY, None),
        ("multi", P.KEYWORD_ONLY, True),
        ("complete", P.KEYWORD_ONLY, True),
        ("group_by", P.KEYWORD_ONLY, "prefix"),
        ("kwargs", P.VAR_KEYWORD, P.empty),
    ]


TTY_CODE = """
import time
from distributary import Client, LocalCluster, progress

def slow(x):
    time.sleep(0.01)
    return x

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp") as cl:
        with Client(cl.scheduler_address) as client:
            xs = client.map(slow, range(30))
            ys = client.map(lambda x: x + 1, xs, key=[f"plus-{i}" for i in range(30)])
            progress(ys, width=10)
            print("done")
"""


def test_on_a_terminal_the_lines_per_prefix_are_redrawn_in_place():
    import pty
    import subprocess
    import sys

    master, replica = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TTY_CODE)], stdout=replica, env=env
    )
    os.close(replica)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # (the child closed the terminal)
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode().replace("\r\n", "\n")
    assert out.count("\x1b[3F") >= 1  # (back up over the total and the two prefixes)
    last = out.rsplit("\x1b[3F", 1)[-1]
    screen = [line.replace("\x1b[2K", "") for line in last.split("\n") if line]
    assert screen[0].startswith("[##########] | 100% Completed | ")
    assert screen[1:] == ["  plus [##########] 30 / 30", "  slow [##########] 30 / 30", "done"]
