"""Scheduler, worker and nanny plugins, and worker callbacks: on real schedulers, workers
(in this process and in nanny processes) and clients over TCP."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest
from conftest import apoll, gen_cluster, poll, second_client

import distributary
from distributary import (
    Client,
    Nanny,
    NannyPlugin,
    Scheduler,
    SchedulerPlugin,
    Worker,
    WorkerPlugin,
    get_worker,
)


class Recorder(WorkerPlugin):
    """Records what a worker told it."""

    def __init__(self, tag: str = ""):
        self.tag = tag
        self.calls: list = []

    def setup(self, worker):
        self.worker = worker
        self.calls.append(("setup", worker.address))

    def teardown(self, worker):
        self.calls.append(("teardown", worker.address))

    def transition(self, key, start, finish, **kwargs):
        self.calls.append((key, start, finish))


class Named(Recorder):
    name = "named"


class Idempotent(Recorder):
    name = "named"
    idempotent = True


class AsyncPlugin(WorkerPlugin):
    name = "async"

    async def setup(self, worker):
        await asyncio.sleep(0)
        self.ready = True

    async def teardown(self, worker):
        await asyncio.sleep(0)
        TORN_DOWN.append(worker.address)


TORN_DOWN: list = []
CALLED: list = []


def plain():
    CALLED.append(len(CALLED))


class FailingSetup(WorkerPlugin):
    name = "failing"

    def setup(self, worker):
        raise ZeroDivisionError(f"no setup on {worker.address}")


class FailingTransition(WorkerPlugin):
    def transition(self, key, start, finish, **kwargs):
        raise RuntimeError("a broken hook")


class SchedulerRecorder(SchedulerPlugin):
    """Records every hook the scheduler called, in order."""

    def __init__(self):
        self.calls: list = []

    async def start(self, scheduler):
        await asyncio.sleep(0)
        self.scheduler = scheduler
        self.calls.append("start")

    async def before_close(self):
        self.calls.append("before_close")

    async def close(self):
        self.calls.append("close")

    def update_graph(self, scheduler, *, client, keys, tasks, annotations, priority, **kwargs):
        states = {key: scheduler.tasks[key].state for key in tasks}  # (before they move)
        call = ("update_graph", client, keys, sorted(tasks), annotations, priority, states)
        self.calls.append(call)

    def restart(self, scheduler):
        self.calls.append("restart")

    def transition(self, key, start, finish, *args, stimulus_id=None, **kwargs):
        assert isinstance(stimulus_id, str)
        self.calls.append((key, start, finish))

    async def add_worker(self, scheduler, worker):
        await asyncio.sleep(0)
        self.calls.append(("add_worker", worker))

    def remove_worker(self, scheduler, worker, *, stimulus_id=None, **kwargs):
        self.calls.append(("remove_worker", worker))

    def add_client(self, scheduler, client):
        self.calls.append(("add_client", client))

    def remove_client(self, scheduler, client):
        self.calls.append(("remove_client", client))


class FailingStart(SchedulerPlugin):
    name = "failing-start"

    async def start(self, scheduler):
        raise KeyError("cannot start")


def inc(x):
    return x + 1


def plugin_tag(name):
    return get_worker().plugins[name].tag


# ---------------------------------------------------------------------- worker plugins


@gen_cluster()
async def test_worker_plugin_is_set_up_on_every_worker_told_of_transitions_torn_down(c, s, a, b):
    assert await c.register_plugin(Recorder("r"), name="rec") == {
        a.address: {"status": "OK"},
        b.address: {"status": "OK"},
    }
    mine, theirs = a.plugins["rec"], b.plugins["rec"]
    assert mine is not theirs  # (each worker has its own copy)
    assert mine.calls == [("setup", a.address)] and mine.worker is a
    assert await c.submit(inc, 1, key="one", workers=[a.address]) == 2
    assert mine.calls[1:] == [
        ("one", "released", "waiting"),
        ("one", "waiting", "ready"),
        ("one", "ready", "executing"),
        ("one", "executing", "memory"),
    ]
    assert theirs.calls == [("setup", b.address)]
    assert a.state.observers and b.state.observers
    assert await c.unregister_worker_plugin("rec") == {
        a.address: {"status": "OK"},
        b.address: {"status": "OK"},
    }
    assert mine.calls[-1] == ("teardown", a.address) and "rec" not in a.plugins
    assert not a.state.observers and not b.state.observers  # (no hook left to call)
    with pytest.raises(ValueError, match="No worker plugin named 'rec'"):
        await c.unregister_worker_plugin("rec")


@gen_cluster()
async def test_a_worker_that_joins_later_sets_plugins_up_before_its_first_task(c, s, a, b):
    await c.register_plugin(Recorder("first"), name="one")
    await c.register_plugin(Recorder("second"), name="two")
    async with Worker(s.address, nthreads=1) as late:
        assert list(late.plugins) == ["one", "two"]  # in the order registered
        assert late.plugins["one"].calls == [("setup", late.address)]
        assert await c.submit(plugin_tag, "two", workers=[late.address]) == "second"
    assert late.plugins == {}  # torn down as it closed


@gen_cluster()
async def test_the_same_name_replaces_the_plugin_unless_idempotent(c, s, a, b):
    first = Named("first")
    await c.register_plugin(first)  # (named by its ``name``)
    old = a.plugins["named"]
    await c.register_plugin(Named("second"))
    assert old.calls[-1] == ("teardown", a.address)
    assert a.plugins["named"].tag == "second"
    assert await c.register_plugin(Idempotent("third")) == {}
    assert await c.register_plugin(Named("fourth"), idempotent=True) == {}
    assert a.plugins["named"].tag == "second"
    await c.register_plugin(Idempotent("fifth"), idempotent=False)
    assert a.plugins["named"].tag == "fifth"
    # Without a name, equal plugins get the same one (made of their class and contents).
    await c.register_plugin(Recorder("same"))
    await c.register_plugin(Recorder("same"))
    await c.register_plugin(Recorder("other"))
    assert sorted(n.split("-")[0] for n in a.plugins) == ["Recorder", "Recorder", "named"]


@gen_cluster()
async def test_coroutine_hooks_are_awaited(c, s, a, b):
    TORN_DOWN.clear()
    await c.register_plugin(AsyncPlugin())
    assert a.plugins["async"].ready and b.plugins["async"].ready
    await c.unregister_worker_plugin("async")
    assert sorted(TORN_DOWN) == sorted([a.address, b.address])


@gen_cluster()
async def test_a_setup_that_raises_is_an_error_at_registration(c, s, a, b):
    with pytest.raises(ZeroDivisionError, match="no setup on tcp://"):
        await c.register_plugin(FailingSetup())
    assert "failing" not in a.plugins and "failing" not in b.plugins
    assert await c.submit(inc, 1) == 2  # the cluster works on
    # It stays registered: a worker that joins tries it, logs the error and works.
    async with Worker(s.address, nthreads=1) as late:
        assert late.status == "running" and "failing" not in late.plugins
        assert await c.submit(inc, 2, workers=[late.address]) == 3
    await c.unregister_worker_plugin("failing")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@gen_cluster()
async def test_a_transition_hook_that_raises_is_logged_and_tasks_go_on(c, s, a, b):
    collect = Collect()
    logging.getLogger("distributary.plugins").addHandler(collect)
    try:
        await c.register_plugin(FailingTransition(), name="broken")
        assert await c.submit(inc, 10) == 11
        assert await c.gather(c.map(inc, range(5))) == [1, 2, 3, 4, 5]
    finally:
        logging.getLogger("distributary.plugins").removeHandler(collect)
    assert collect.records and "a broken hook" in str(collect.records[0].exc_info[1])


@gen_cluster()
async def test_worker_callbacks_run_on_every_worker_there_is_and_will_be(c, s, a, b):
    def mark(dask_worker):
        dask_worker.marks = [*getattr(dask_worker, "marks", []), "with worker"]

    CALLED.clear()
    await c.register_worker_callbacks(mark)
    await c.register_worker_callbacks(setup=plain)
    assert a.marks == b.marks == ["with worker"] and CALLED == [0, 1]
    async with Worker(s.address, nthreads=1) as late:
        assert late.marks == ["with worker"] and CALLED == [0, 1, 2]  # (in this order)
    with pytest.raises(TypeError, match="needs a callable, not 5"):
        await c.register_worker_callbacks(5)


@gen_cluster()
async def test_register_worker_plugin_keeps_working_with_plugins_of_any_class(c, s, a, b):
    class DuckTyped:  # (no base class: dask.distributed's older plugins)
        name = "duck"

        def setup(self, worker):
            worker.duck = True

    assert await c.register_worker_plugin(DuckTyped()) == {
        a.address: {"status": "OK"},
        b.address: {"status": "OK"},
    }
    assert a.duck and b.duck and "duck" in a.plugins
    await c.register_worker_plugin(Recorder("legacy"), name="legacy")
    assert a.plugins["legacy"].tag == "legacy"
    with pytest.warns(UserWarning, match="nanny=True is ignored: Recorder is a worker plugin"):
        await c.register_worker_plugin(Recorder("legacy"), name="legacy", nanny=True)
    assert a.plugins["legacy"].calls == [("setup", a.address)]
    # A NannyPlugin goes to the nannies (these workers have none).
    assert await c.register_worker_plugin(Environment("x")) == {}
    assert await c.unregister_worker_plugin("environment", nanny=True) == {}


def test_a_worker_sets_up_the_plugins_it_is_given():
    async def main():
        async with Scheduler() as s, Worker(s.address, plugins=[Named("given")]) as w:
            assert w.plugins["named"].calls == [("setup", w.address)]

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------- scheduler plugins


@gen_cluster(nthreads=(1,))
async def test_scheduler_plugin_hooks(c, s, a):
    plugin = SchedulerRecorder()
    assert await c.register_plugin(plugin, name="recorder") is None
    kept = s.plugins["recorder"]
    assert kept.calls == ["start"] and kept.scheduler is s
    assert await c.submit(inc, 1, key="k", retries=2) == 2
    assert ("k", "processing", "memory") in kept.calls
    graph = next(call for call in kept.calls if call[0] == "update_graph")
    assert graph[:5] == ("update_graph", c.id, {"k"}, ["k"], {"retries": {"k": 2}})
    (user_priority, _window, order) = graph[5]["k"]  # (see SubmissionWindows)
    assert (user_priority, order) == (0, 0)
    assert graph[6] == {"k": "released"}  # told before the graph's tasks moved, as in dask
    assert kept.calls.index(graph) < kept.calls.index(("k", "released", "waiting"))
    kept.calls.clear()
    async with Worker(s.address, nthreads=1) as late:
        await apoll(lambda: ("add_worker", late.address) in kept.calls)  # (a coroutine)
    await apoll(lambda: ("remove_worker", late.address) in kept.calls)
    other = await second_client(s)
    await other.close()
    await apoll(lambda: ("remove_client", other.id) in kept.calls)
    assert ("add_client", other.id) in kept.calls
    await c.unregister_scheduler_plugin("recorder")
    assert kept.calls[-1] == "close" and "recorder" not in s.plugins
    assert not s.state.observers
    with pytest.raises(ValueError, match="No scheduler plugin named 'recorder'"):
        await c.unregister_scheduler_plugin("recorder")


def test_scheduler_plugins_close_with_the_scheduler():
    async def main():
        plugin = SchedulerRecorder()
        s = Scheduler()
        s.add_plugin(plugin, name="early")  # before it starts: started with it
        async with s:
            assert plugin.calls == ["start"]
        assert plugin.calls == ["start", "before_close", "close"]

    asyncio.run(asyncio.wait_for(main(), 30))


@gen_cluster(nthreads=(1,))
async def test_a_start_that_raises_is_an_error_and_the_plugin_is_not_kept(c, s, a):
    with pytest.raises(KeyError, match="cannot start"):
        await c.register_plugin(FailingStart())
    assert "failing-start" not in s.plugins
    assert await c.submit(inc, 1) == 2


@gen_cluster(nthreads=(1,))
async def test_replacing_a_scheduler_plugin_closes_the_old_one(c, s, a):
    await c.register_plugin(SchedulerRecorder(), name="r")
    old = s.plugins["r"]
    await c.register_scheduler_plugin(SchedulerRecorder(), name="r")
    assert old.calls == ["start", "close"] and s.plugins["r"] is not old
    new = s.plugins["r"]
    await c.register_plugin(SchedulerRecorder(), name="r", idempotent=True)
    assert s.plugins["r"] is new


@gen_cluster(nthreads=(1,))
async def test_scheduler_add_plugin_remove_plugin_and_register_worker_plugin(c, s, a):
    plugin = SchedulerRecorder()
    s.add_plugin(plugin)  # running already: not started (as in dask.distributed)
    (name,) = s.plugins
    assert name.startswith("SchedulerRecorder-") and plugin.calls == []
    s.add_plugin(SchedulerRecorder(), name=name, idempotent=True)
    assert s.plugins[name] is plugin
    s.add_plugin(plugin, name="again")
    assert await c.submit(inc, 1, key="x") == 2
    assert plugin.calls.count(("x", "processing", "memory")) == 2  # (kept twice)
    s.remove_plugin(plugin)  # every name it is kept as
    assert s.plugins == {} and not s.state.observers
    s.add_plugin(plugin, name="byname")
    s.remove_plugin(name="byname")
    with pytest.raises(ValueError, match="No scheduler plugin 'byname'"):
        s.remove_plugin(name="byname")
    with pytest.raises(ValueError, match="a plugin or a name"):
        s.remove_plugin()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments: \['extension'\]"):
        s.add_plugin(plugin, extension=True)
    with pytest.raises(TypeError, match="add_plugin needs a plugin"):
        s.add_plugin()
    assert await s.register_worker_plugin(None, Recorder("direct"), name="direct") == {
        a.address: {"status": "OK"}
    }
    assert a.plugins["direct"].tag == "direct"


def test_the_restart_hook_and_worker_plugins_after_a_restart():
    async def main():
        async with (
            Scheduler() as s,
            Nanny(s.address, nthreads=1),
            Client(s.address, asynchronous=True) as c,
        ):
            await c.register_plugin(SchedulerRecorder(), name="r")
            await c.register_plugin(Recorder("kept"), name="w")
            await c.restart()
            assert "restart" in s.plugins["r"].calls
            # The new worker process set the worker plugin up again.
            assert await c.submit(plugin_tag, "w", pure=False) == "kept"

    asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------------- nanny plugins


class Environment(NannyPlugin):
    """Sets an environment variable for the nanny's worker processes."""

    name = "environment"
    restart = True

    def __init__(self, value: str):
        self.value = value
        self.setups = 0

    def setup(self, nanny):
        self.setups += 1
        nanny.env["DISTRIBUTARY_PLUGIN_TEST"] = self.value

    def teardown(self, nanny):
        nanny.env.pop("DISTRIBUTARY_PLUGIN_TEST", None)


def environment():
    return os.environ.get("DISTRIBUTARY_PLUGIN_TEST"), os.getpid()


def nanny_view(dask_worker):
    plugin = dask_worker.plugins.get("environment")
    return plugin and plugin.setups


def worker_pid(name, dask_worker):
    return dask_worker.plugins[name].pid, os.getpid()


class WhereAmI(WorkerPlugin):
    name = "where"

    def setup(self, worker):
        self.pid = os.getpid()


class FailsInTheProcess(WorkerPlugin):
    def setup(self, worker):
        raise OSError(f"nothing here in {os.getpid()}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [1], indirect=True)
def test_worker_plugins_on_worker_processes_under_nannies(processes):
    cluster, c = processes
    c.register_plugin(WhereAmI())
    ((setup_pid, pid),) = c.run(worker_pid, "where").values()
    assert setup_pid == pid != os.getpid()
    # A setup that raises in a worker process: the error comes back as itself.
    with pytest.raises(OSError, match="nothing here in"):
        c.register_plugin(FailsInTheProcess(), name="fails")
    assert c.submit(inc, 1).result() == 2
    # A worker process that starts later sets them up (and logs the failing one).
    cluster.scale(2)
    c.wait_for_workers(2)
    assert len(set(c.run(worker_pid, "where").values())) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [1], indirect=True)
def test_nanny_plugins_are_set_up_before_the_worker_process_starts(processes):
    cluster, c = processes
    (old,) = cluster.scheduler.workers
    # restart=True: set up on each nanny, whose worker process then restarts.
    assert c.register_plugin(Environment("on")) == {old: {"status": "OK"}}
    workers = cluster.scheduler.workers
    poll(lambda: len(workers) == 1 and old not in workers)  # (the old one left)
    assert [value for value, _ in c.run(environment).values()] == ["on"]
    assert list(c.run(nanny_view, nanny=True).values()) == [1]
    assert c.register_plugin(Environment("again"), idempotent=True) == {}  # (no restart)
    # A nanny that starts later sets it up before its worker starts: once, no restart.
    cluster.scale(2)
    c.wait_for_workers(2)
    assert [value for value, _ in c.run(environment).values()] == ["on", "on"]
    assert list(c.run(nanny_view, nanny=True).values()) == [1, 1]
    assert len(c.unregister_worker_plugin("environment", nanny=True)) == 2
    assert list(c.run(nanny_view, nanny=True).values()) == [None, None]


# ---------------------------------------------------------------------- bad input


class Unpicklable(WorkerPlugin):
    def __init__(self):
        self.lock = threading.Lock()


@gen_cluster(nthreads=(1,))
async def test_bad_input_is_a_clear_error_and_the_cluster_works_on(c, s, a):
    with pytest.raises(TypeError, match="subclass of SchedulerPlugin, WorkerPlugin or Nanny"):
        await c.register_plugin(object())
    with pytest.raises(TypeError, match="the class Recorder \\(an instance of it is\\)"):
        await c.register_plugin(Recorder)
    with pytest.raises(TypeError, match="Could not pickle the plugin"):
        await c.register_plugin(Unpicklable())
    with pytest.raises(TypeError, match="idempotent is True or False, not 'yes'"):
        await c.register_plugin(Recorder(), idempotent="yes")
    with pytest.raises(TypeError, match="non-empty str, not 5"):
        await c.register_plugin(Recorder(), name=5)
    with pytest.raises(TypeError, match="register_worker_plugin takes a WorkerPlugin"):
        await c.register_worker_plugin()
    with pytest.raises(TypeError, match="register_worker_plugin takes a WorkerPlugin"):
        await c.register_worker_plugin(SchedulerRecorder())
    with pytest.raises(TypeError, match="register_scheduler_plugin takes a SchedulerPlugin"):
        await c.register_scheduler_plugin(Recorder())
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        c.register_plugin(Recorder(), bogus=1)
    assert a.plugins == {} and s.plugins == {}
    assert await c.submit(inc, 1) == 2


def test_plugin_names_are_exported_as_dask_distributed_exports_them():
    assert distributary.WorkerPlugin is distributary.plugins.WorkerPlugin
    assert issubclass(distributary.UploadFile, distributary.WorkerPlugin)
    assert NannyPlugin.restart is False and WorkerPlugin.idempotent is False
