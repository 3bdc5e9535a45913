"""The statistical profiler: stacks counted in dask.distributed's nested dict, merged and
selected by time (pure, no event loop), the sampling thread, and Client.profile on real
clusters."""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import threading
import time

import dask.config
import pytest
from conftest import apoll, gen_cluster, poll

from distributary import Client, Scheduler, Worker
from distributary.diagnostics import profile as pf
from distributary.worker import profiler

# ---------------------------------------------------------------------- helpers


def outer(depth: int = 0):
    return middle(depth)


def middle(depth: int):
    return inner(depth)


def inner(depth: int):
    if depth:
        return inner(depth - 1)
    return sys._getframe()


def busy_loop_fn(seconds: float) -> float:
    end = time.time() + seconds
    while time.time() < end:
        pass
    return seconds


def other_busy_fn(seconds: float) -> float:
    return busy_loop_fn(seconds)


def path_of(profile: dict, *names: str) -> dict:
    """The node reached from ``profile`` through children of these names."""
    node = profile
    for name in names:
        (node,) = [c for c in node["children"].values() if c["description"]["name"] == name]
    return node


def names_in(profile: dict) -> set[str]:
    return pf.names(profile)


# ---------------------------------------------------------------------- the profile format


def test_a_sample_is_a_path_of_nodes_counted_from_the_root():
    state = pf.create()
    frame = outer()
    assert pf.process(frame, state, stop=None)
    assert pf.process(frame, state)
    assert state["identifier"] == "root" and state["count"] == 2
    leaf = path_of(state, *_caller_names(frame))
    assert leaf["count"] == 2 and leaf["children"] == {}
    assert leaf["description"]["name"] == "inner"
    assert leaf["description"]["filename"] == __file__
    assert leaf["description"]["line"].startswith("return sys._getframe()")
    assert leaf["identifier"] == f"inner;{__file__};{inner.__code__.co_firstlineno}"
    assert set(leaf) == {"count", "description", "children", "identifier"}
    assert set(leaf["description"]) == {"filename", "name", "line_number", "line"}


def _caller_names(frame) -> list[str]:
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names[::-1]


def test_the_format_is_dask_distributed_s():
    """The same sample as dask.distributed's ``distributed.profile`` gave (its output is
    kept in tests/data, written by that package from the same code)."""
    kept = json.loads(
        (pathlib.Path(__file__).parent / "data" / "dask_profile_format.json").read_text()
    )
    code = kept["code"].replace("import distributed.profile as theirs", "")
    code = code.replace("b = theirs.create()", "from distributary.diagnostics import profile as pf")
    code = code.replace("theirs.process(frame, None, b)", "b = pf.create(); pf.process(frame, b)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout) == kept["profile"], done.stderr


def test_stop_cuts_the_frames_above_and_idle_drops_the_sample():
    frame = outer(2)
    assert pf.stack(frame, stop=__file__) is None  # (the innermost frame is in this file)
    below = pf.stack(frame, stop="python.py")  # (pytest's frames, and those above, cut)
    assert below[-1] is frame and all("pytest" not in f.f_code.co_filename for f in below[:1])
    assert pf.stack(frame, stop="no-such-file.py")[-1] is frame
    assert pf.stack(frame, idle=("test_profile.py",)) is None  # (the innermost frame is here)
    assert pf.stack(frame.f_back.f_back.f_back, idle=("not-here.py",)) is not None
    assert not pf.process(None, pf.create())


def test_very_deep_stacks_keep_the_frames_nearest_the_root():
    frame = outer(pf.MAX_DEPTH + 50)
    state = pf.create()
    pf.process(frame, state)
    depth, node = 0, state
    while node["children"]:
        (node,) = node["children"].values()
        depth += 1
    assert depth == pf.MAX_DEPTH


def test_merge_adds_counts_node_by_node():
    a, b = pf.create(), pf.create()
    for _ in range(3):
        pf.process(outer(), a)
    pf.process(outer(1), b)
    merged = pf.merge(a, b)
    assert merged["count"] == 4
    assert path_of(merged, *_caller_names(outer()))["count"] == 4  # (through inner once)
    deeper = path_of(merged, *_caller_names(outer(1)))
    assert deeper["count"] == 1
    assert a["count"] == 3 and b["count"] == 1  # (unchanged)
    assert pf.merge() == pf.create() == pf.merge(pf.create())


def test_history_answers_for_the_cycles_overlapping_a_span():
    history = pf.History(length=3)
    for i in range(4):
        history.add(float(i), float(i + 1), i)
    assert history.between() == [1, 2, 3]  # (bounded)
    assert history.between(start=2.5) == [2, 3]
    assert history.between(stop=2.5) == [1, 2]
    assert history.between(2.2, 2.4) == [2]
    assert history.between(10, 20) == []


def test_threads_profile_rolls_cycles_and_selects_by_time_and_prefix():
    frame = outer()
    frames = {1: frame, 2: frame}
    p = profiler.ThreadsProfile(cycle=1.0, now=0.0, by_key=True)
    inc, total = "inc-0a22aed9f0841e08478eed46065956a1", ("sum-5467b1f7f60aa8bb405afabe4ee72f64", 0)
    p.sample(frames, {1: inc, 2: total}, now=0.5)
    p.sample(frames, {1: inc}, now=1.5)  # (a new cycle from 1.5)
    p.sample(frames, {3: "inc-x"}, now=1.6)  # (no such thread: nothing)
    assert p.get()["count"] == 3
    assert p.get(start=1.55)["count"] == 1  # (the current cycle only: the first is 0-1.5)
    assert p.get(stop=1.0)["count"] == 2
    assert p.get(key="inc")["count"] == 2 and p.get(key="sum")["count"] == 1
    assert p.get(key="sum", start=1.55)["count"] == 0
    assert p.get(key="nothing") == pf.create()
    assert len(p.history) == 1


def test_profiler_settings_come_from_dask_config():
    low_level = {"distributed.worker.profile.low-level": True}
    with dask.config.set(low_level), pytest.raises(NotImplementedError, match="low-level"):
        profiler.settings()
    with dask.config.set(
        {"distributed.worker.profile.interval": "5ms", "distributed.worker.profile.cycle": "2s"}
    ):
        assert profiler.settings() == (True, 0.005, 2.0)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        assert profiler.settings()[0] is False
    zero = {"distributed.worker.profile.interval": "0ms"}
    with dask.config.set(zero), pytest.raises(ValueError, match="positive"):
        profiler.settings()


# ---------------------------------------------------------------------- on a cluster


@gen_cluster()
async def test_the_profile_holds_the_function_that_ran(c, s, a, b):
    started = time.time()
    # (one after the other: two busy threads of one process can starve the sampler of
    # the interpreter lock)
    await c.submit(busy_loop_fn, 0.3, workers=[a.address])
    await c.submit(other_busy_fn, 0.3, workers=[b.address])
    state = await c.profile()
    assert {"busy_loop_fn", "other_busy_fn"} <= names_in(state)
    assert state["count"] >= 10  # (0.6 s of samples, every 10 ms)
    root_names = {child["description"]["name"] for child in state["children"].values()}
    assert root_names == {"busy_loop_fn", "other_busy_fn"}  # (below the worker's frames)
    assert names_in(await c.profile(key="other_busy_fn")) == {"other_busy_fn", "busy_loop_fn"}
    assert (await c.profile(key="nothing"))["count"] == 0
    by_worker = await c.profile(merge_workers=False, start=started)
    assert set(by_worker) == {a.address, b.address}
    assert "other_busy_fn" in names_in(by_worker[b.address])
    assert "other_busy_fn" not in names_in(by_worker[a.address])
    only_a = await c.profile(workers=[a.address])
    assert names_in(only_a) == {"busy_loop_fn"}
    with pytest.raises(ValueError, match="No such worker"):
        await c.profile(workers=["tcp://127.0.0.1:1"])
    with pytest.raises(TypeError, match="key"):
        await c.profile(key=("x", 1))
    assert await c.submit(busy_loop_fn, 0) == 0  # (the cluster keeps working)


def test_time_filtering_by_cycles():
    async def main() -> None:
        config = {"distributed.worker.profile.cycle": "50ms"}
        with dask.config.set(config):
            async with (
                Scheduler() as s,
                Worker(s.address, nthreads=1),
                Client(s.address, asynchronous=True) as c,
            ):
                await c.submit(busy_loop_fn, 0.2)
                middle = time.time()
                await asyncio.sleep(0.12)  # (a cycle with no task between the two)
                await c.submit(other_busy_fn, 0.2)
                assert names_in(await c.profile(stop=middle)) == {"busy_loop_fn"}
                assert "other_busy_fn" in names_in(await c.profile(start=middle + 0.06))
                assert "other_busy_fn" not in names_in(await c.profile(stop=middle))
                assert names_in(await c.profile(start="0.1s", stop="0s")) >= {"other_busy_fn"}
                assert (await c.profile(start=time.time() + 10))["count"] == 0

    asyncio.run(asyncio.wait_for(main(), 30))


@gen_cluster()
async def test_event_loop_profiles_of_the_workers_and_the_scheduler(c, s, a, b):
    await c.gather(c.map(busy_loop_fn, [i * 1e-9 for i in range(2000)]))
    for state in (await c.profile(server=True), await c.profile(scheduler=True)):
        assert state["count"] > 0
        files = {n["description"]["filename"] for n in pf.nodes(state)}
        assert any("distributary" in f for f in files)
        assert "busy_loop_fn" not in names_in(state)


def test_profile_of_worker_processes_and_its_flame_graph(processes, tmp_path):
    cluster, client = processes
    client.gather(client.map(busy_loop_fn, [0.3, 0.31]))
    state = client.profile()
    assert "busy_loop_fn" in names_in(state) and state["count"] >= 10
    again, figure = client.profile(filename=tmp_path / "profile.html")
    page = (tmp_path / "profile.html").read_text()
    assert page == figure.html and "busy_loop_fn" in page and "flame-graph" in page
    assert again["count"] >= state["count"]
    assert isinstance(client.profile(plot=True), tuple)


RELEASE = threading.Event()  # (in-process workers: the task waits on it)


def waiting_fn() -> None:
    RELEASE.wait(20)


def test_trigger_profile_samples_the_running_tasks_on_demand():
    async def main() -> None:
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            async with (
                Scheduler() as s,
                Worker(s.address, nthreads=1) as w,
                Client(s.address, asynchronous=True) as c,
            ):
                RELEASE.clear()
                future = c.submit(waiting_fn)
                await apoll(lambda: w.state.executing)
                await asyncio.sleep(0.05)  # (nothing samples by itself)
                assert w.get_profile()["count"] == 0
                for _ in range(3):
                    w.trigger_profile()
                RELEASE.set()
                await future
                state = w.get_profile()
                assert state["count"] == 3 and "waiting_fn" in names_in(state)
                assert (await c.profile(key="waiting_fn"))["count"] == 3

    asyncio.run(asyncio.wait_for(main(), 30))


def test_low_level_profiling_is_refused_clearly():
    async def main() -> None:
        async with Scheduler() as s:
            low_level = {"distributed.worker.profile.low-level": True}
            with dask.config.set(low_level), pytest.raises(NotImplementedError, match="low-level"):
                Worker(s.address, nthreads=1)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_sampling_thread_runs_only_while_someone_profiles():
    def sampling() -> bool:
        return any(t.name == "distributary-profile" for t in threading.enumerate())

    poll(lambda: not sampling())

    async def main() -> None:
        async with Scheduler() as s, Worker(s.address, nthreads=1), Worker(s.address, nthreads=1):
            threads = [t for t in threading.enumerate() if t.name == "distributary-profile"]
            assert len(threads) == 1  # (one per process, for every profiler in it)

    asyncio.run(asyncio.wait_for(main(), 30))
    poll(lambda: not sampling())
