"""Looking into a running cluster: where keys are and what runs, scheduler_info and the
scheduler's records, call stacks, logs, events, versions and stories, from the Client
and from the Scheduler, on real clusters over TCP (in-process workers, and worker
processes under nannies)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import dask.config
import pytest
from conftest import apoll, gen_cluster, poll
from dask.sizeof import sizeof

from distributary import Client, Scheduler, SchedulerPlugin, Worker, get_worker
from distributary.protocol.introspection import GetLogs
from distributary.utils.logs import RecentLogs
from distributary.utils.versions import VersionMismatchWarning, mismatches

RELEASE = threading.Event()  # what ``block`` waits for (in-process workers)


def inc(x):
    return x + 1


def block(x):
    RELEASE.wait(20)
    return x


def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def log_from_task(topic, msg):
    worker = get_worker()
    worker.log_event(topic, msg)
    return worker.get_current_task()


def log_an_object():
    get_worker().log_event("task", object())


def warn_in_worker(text: str) -> int:
    logging.getLogger("distributary.worker").warning(text)
    return os.getpid()


def local_directory(dask_worker) -> str:
    return dask_worker.local_directory


class OldToolzWorker(Worker):
    """A worker that says it runs another toolz."""

    def versions(self, packages=None):
        found = super().versions(packages)
        found["packages"]["toolz"] = "0.0.1"
        return found


# ---------------------------------------------------------------------- keys and workers


@gen_cluster(nthreads=(1, 2))
async def test_where_keys_are_what_runs_and_how_big(c, s, a, b):
    futures = c.map(inc, range(4))
    await c.gather(futures)
    who_has = await c.who_has()
    has_what = await c.has_what()
    assert set(has_what) == {a.address, b.address}
    assert {k for keys in has_what.values() for k in keys} == {f.key for f in futures}
    for key, holders in who_has.items():
        assert all(key in has_what[w] for w in holders)
    assert await c.has_what(workers=[a.address]) == {a.address: has_what[a.address]}
    assert await c.nthreads() == {a.address: 1, b.address: 2}
    assert await c.ncores(b.address) == {b.address: 2}
    assert await c.processing() == {a.address: (), b.address: ()}

    exact = await c.nbytes(summary=False)
    assert exact == {f.key: sizeof(i + 1) for i, f in enumerate(futures)}
    assert await c.nbytes() == {"inc": sum(exact.values())}
    assert await c.nbytes(keys=[futures[0]], summary=False) == {
        futures[0].key: exact[futures[0].key]
    }
    assert await c.nbytes(keys=["never-computed"]) == {}

    RELEASE.clear()
    blocked = c.submit(block, 1, key="blocked", workers=[a.address])
    await apoll(lambda: s.tasks.get("blocked") and s.tasks["blocked"].state == "processing")
    assert await c.processing(workers=[a.address]) == {a.address: ("blocked",)}
    assert await c.processing() == {a.address: ("blocked",), b.address: ()}
    RELEASE.set()
    assert await blocked == 1
    assert await c.processing() == {a.address: (), b.address: ()}


@gen_cluster()
async def test_workers_are_named_by_address_name_or_host(c, s, a, b):
    async with Worker(s.address, nthreads=3, name="alice") as alice:
        assert await c.nthreads(workers=["alice"]) == {alice.address: 3}
        assert await c.has_what(workers="alice") == {alice.address: ()}
        everyone = {a.address: 1, b.address: 1, alice.address: 3}
        assert await c.nthreads(workers=["127.0.0.1"]) == everyone  # a host: its workers
        with pytest.raises(ValueError, match=r"No such worker\(s\): 'nobody', 5"):
            await c.nthreads(workers=["nobody", 5])
        with pytest.raises(ValueError, match="No such worker"):
            await c.processing(workers=["tcp://127.0.0.1:1"])
        assert await c.submit(inc, 1, workers=["alice"]) == 2  # (nothing else lost)
        assert await c.nthreads() == everyone


@gen_cluster()
async def test_scheduler_info_and_the_records_behind_it(c, s, a, b):
    future = c.submit(inc, 1, workers=[a.address])
    assert await future == 2
    info = await c.scheduler_info()
    assert info["type"] == "Scheduler" and info["id"] == s.id and info["address"] == s.address
    assert info["services"] == {} and 0 < info["started"] <= time.time()
    assert (info["n_workers"], info["total_threads"]) == (2, 2)
    assert set(info["workers"]) == {a.address, b.address}
    for worker in (a, b):
        w = info["workers"][worker.address]
        assert w["type"] == "Worker" and w["host"] == "127.0.0.1" and w["pid"] == os.getpid()
        assert (w["id"], w["name"], w["nthreads"]) == (worker.address, worker.address, 1)
        assert w["memory_limit"] == worker.memory_limit and w["resources"] == {}
        assert w["local_directory"] == worker.local_directory and os.path.isdir(
            w["local_directory"]
        )
        assert w["nanny"] is None and w["status"] == "running"
        assert w["services"] == worker.http.services == {"dashboard": worker.http.server.port}
        assert w["last_seen"] > 0 and {"memory", "managed_bytes"} <= set(w["metrics"])
        record = s.workers[worker.address]
        assert (record.address, record.name, record.host) == (worker.address,) * 2 + ("127.0.0.1",)
        assert (record.pid, record.nthreads, record.memory_limit) == (
            os.getpid(),
            1,
            worker.memory_limit,
        )
        assert record.resources == {} and record.status == "running" and record.nanny is None
        assert record.local_directory == worker.local_directory
        assert record.metrics == w["metrics"]
    assert len((await c.scheduler_info(n_workers=1))["workers"]) == 1
    info["workers"][a.address]["resources"]["GPU"] = 1  # a copy: the record is unchanged
    assert s.workers[a.address].resources == {}

    ts = s.tasks[future.key]
    assert (ts.key, ts.state, ts.processing_on) == (future.key, "memory", None)
    assert ts.who_has == (s.workers[a.address],) and ts.nbytes == sizeof(2)
    assert future.key in a.data and a.data[future.key] == 2
    assert (a.name, a.nthreads, a.address) == (a.address, 1, s.workers[a.address].address)
    assert c.id.startswith("Client-") and c.status == "running"
    assert c.loop is asyncio.get_running_loop() and c.dashboard_link == ""  # (none served)
    assert await c.sync(c.nthreads) == await c.nthreads()


def test_a_client_of_a_cluster_object_has_the_clusters_dashboard_link(c):
    assert c.dashboard_link == c.cluster.scheduler.dashboard_link


@pytest.mark.timeout(30)
def test_unknown_keywords_are_type_errors(c):
    for method in (c.has_what, c.nthreads, c.ncores, c.nbytes, c.scheduler_info, c.who_has):
        with pytest.raises(TypeError, match="bogus"):
            method(bogus=1)
    assert c.submit(inc, 1).result() == 2


SIGNATURES = {  # as the spec (spec/002_*, spec/004_*) gives them
    Client.call_stack: "(self, futures=None, keys=None)",
    Client.get_scheduler_logs: "(self, n=None)",
    Client.get_versions: "(self, check=False, packages=None)",  # ([]: the same)
    Client.get_worker_logs: "(self, n=None, workers=None, nanny=False)",
    Client.has_what: "(self, workers=None)",
    Client.nbytes: "(self, keys=None, summary=True)",
    Client.ncores: "(self, workers=None)",
    Client.nthreads: "(self, workers=None)",
    Client.processing: "(self, workers=None)",
    Client.scheduler_info: "(self, n_workers=-1)",
    Client.who_has: "(self, futures=None, **kwargs)",
    Scheduler.broadcast: (
        "(self, comm=None, msg=None, workers=None, hosts=None, nanny=False, serializers=None, "
        "on_error='raise')"  # (on_error: as dask.distributed has it now)
    ),
    Scheduler.coerce_address: "(self, addr, resolve=True)",
    Scheduler.coerce_hostname: "(self, host)",
    Scheduler.identity: "(self, comm=None)",
    Scheduler.story: "(self, *keys)",
    Scheduler.transition_story: "(self, *keys)",
    Scheduler.workers_list: "(self, workers)",
    Scheduler.get_worker_logs: "(self, n=None, workers=None, nanny=False)",
    Scheduler.log_event: "(self, topic, msg)",
    Scheduler.get_events: "(self, topic=None)",
    Worker.log_event: "(self, topic, msg)",
}


@pytest.mark.parametrize("method", SIGNATURES, ids=lambda m: m.__qualname__)
def test_signatures_are_the_documented_ones(method):
    signature = inspect.signature(method).replace(return_annotation=inspect.Signature.empty)
    unannotated = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    assert str(signature.replace(parameters=unannotated)) == SIGNATURES[method]
    assert method.__doc__


# ---------------------------------------------------------------------- call stacks


@gen_cluster()
async def test_call_stack_shows_the_tasks_running_now(c, s, a, b):
    assert await c.call_stack() == {}
    RELEASE.clear()
    blocked = c.submit(block, 1, key="blocked", workers=[a.address])
    after = c.submit(inc, blocked, key="after")
    await apoll(lambda: s.tasks.get("blocked") and s.tasks["blocked"].state == "processing")
    stacks = await c.call_stack()
    assert list(stacks) == [a.address] and list(stacks[a.address]) == ["blocked"]
    frames = stacks[a.address]["blocked"]
    assert any("in block" in f and "RELEASE.wait(20)" in f for f in frames[-3:])  # (innermost)
    assert await c.call_stack(futures=[blocked]) == stacks
    assert list(await c.call_stack(futures=[after])) == [a.address]  # what it waits for
    assert list(await c.call_stack(keys=["blocked"])) == [a.address]
    assert await c.call_stack(keys=["no-such-key"]) == {}
    assert a.get_call_stack(keys=["other"]) == {} and list(a.get_call_stack()) == ["blocked"]
    RELEASE.set()
    assert await after == 2
    assert await c.call_stack() == {}


# ---------------------------------------------------------------------- events and stories


@gen_cluster()
async def test_events_from_clients_tasks_and_the_scheduler(c, s, a, b):
    before = time.time()
    await c.log_event("topic", {"a": [1, 2]})
    await c.log_event(["x", "y"], "both")
    key = "logging-task"
    assert await c.submit(log_from_task, "task", {"n": 7}, key=key) == key
    s.log_event("scheduler", 1)
    assert s.get_events("scheduler")[0][1] == 1
    (when, msg), *_ = await c.get_events("topic")
    assert before <= when <= time.time() and msg == {"a": (1, 2)}  # as a message carries it
    assert [m for _, m in await c.get_events("task")] == [{"n": 7}]  # before the result
    everything = await c.get_events()
    assert {"topic", "x", "y", "task", "scheduler"} <= set(everything)
    assert everything["x"] == everything["y"] and everything["x"][0][1] == "both"
    assert await c.get_events("nothing-here") == ()

    with pytest.raises(TypeError, match="topic is a string"):
        await c.log_event(5, "x")
    with pytest.raises(TypeError, match="msg must be plain data"):
        await c.log_event("topic", object())
    with pytest.raises(TypeError, match="topic is a string"):
        await c.get_events(["topic"])
    with pytest.raises(TypeError, match="must be plain data"):
        await c.submit(log_an_object)
    with pytest.raises(TypeError, match="topic is a string"):
        s.log_event(None, "x")
    assert len(await c.get_events("topic")) == 1 and await c.submit(inc, 1) == 2


def test_a_topic_keeps_its_latest_events():
    async def main():
        with dask.config.set({"distributed.admin.low-level-log-length": 3}):
            async with Scheduler() as s:
                for i in range(5):
                    s.log_event("t", i)
                assert [msg for _, msg in s.get_events("t")] == [2, 3, 4]

    asyncio.run(asyncio.wait_for(main(), 10))


def test_events_through_an_in_process_client_are_kept_as_messages_carry_them(c):
    values = [1, 2]
    c.log_event("t", values)
    values.append(3)  # (the scheduler in this process kept its own copy)
    assert [m for _, m in c.get_events("t")] == [(1, 2)]
    with pytest.raises(TypeError, match="must be plain data"):
        c.log_event("t", {1, 2})


@gen_cluster()
async def test_story_of_keys(c, s, a, b):
    future = c.submit(inc, 1)
    assert await future == 2
    story = await c.story(future)
    assert [(k, start, finish) for k, start, finish, _ in story][-1] == (
        future.key,
        "processing",
        "memory",
    )
    assert story == await c.story(future.key) == [tuple(e) for e in s.story(future.key)]
    assert s.transition_story(future.key) == s.story(future.key)
    assert await c.story("never-seen") == []


# ---------------------------------------------------------------------- logs


@gen_cluster()
async def test_logs_of_the_scheduler_and_the_workers(c, s, a, b):
    logging.getLogger("distributary.scheduler").warning("a scheduler marker")
    (level, message), *_ = await c.get_scheduler_logs(n=1)
    assert level == "WARNING"
    assert message.endswith(" - distributary.scheduler - WARNING - a scheduler marker")
    assert s.get_logs(1) == [(level, message)]
    logging.getLogger("distributary.worker").error("a worker marker")
    logs = await c.get_worker_logs(n=1)
    assert set(logs) == {a.address, b.address}  # (in-process workers share their logger)
    assert all(entries[0][0] == "ERROR" for entries in logs.values())
    assert all(entries[0][1].endswith("a worker marker") for entries in logs.values())
    assert set(await c.get_worker_logs(workers=[a.address])) == {a.address}
    assert await s.get_worker_logs(n=1, workers=[b.address]) == {b.address: logs[b.address]}
    with pytest.raises(ValueError, match="without a nanny"):
        await c.get_worker_logs(nanny=True)
    with pytest.raises(ValueError, match="n must be None or at least 0"):
        await c.get_scheduler_logs(n=-1)
    assert await c.submit(inc, 1) == 2


def test_recent_logs_keep_the_newest_records_while_attached():
    logs = RecentLogs(n=2)
    logs.attach("distributary.test-recent-logs")
    log = logging.getLogger("distributary.test-recent-logs")
    for i in range(3):
        log.warning("record %d", i)
    logs.detach()
    log.warning("not kept")
    assert [m.rsplit(" - ", 1)[1] for _, m in logs.recent()] == ["record 2", "record 1"]
    assert len(logs.recent(1)) == 1 and logs.recent(0) == []
    assert logs not in log.handlers


def test_keeping_logs_changes_nothing_of_what_is_printed():
    """Without any logging set up Python prints warnings to stderr by itself; a server
    keeping its logs must not stop that (nor print anything twice)."""
    code = """
        import asyncio, logging
        from distributary import Scheduler, Worker

        async def main():
            async with Scheduler() as s, Worker(s.address) as a, Worker(s.address) as b:
                logging.getLogger("distributary.worker").warning("printed once")
                logging.getLogger("distributary.worker").info("not printed")
                print(len(a.get_logs()), len(b.get_logs()))

        asyncio.run(main())
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=45
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
    assert result.stderr.count("printed once") == 1 and "not printed" not in result.stderr


# ---------------------------------------------------------------------- the scheduler's methods


@gen_cluster()
async def test_scheduler_methods_for_introspection(c, s, a, b):
    async with Worker(s.address, nthreads=1, name="alice") as alice:
        everyone = [a.address, b.address, alice.address]
        identity = s.identity()
        assert identity["id"] == s.id and set(identity["workers"]) == set(everyone)
        assert set(s.workers_list(None)) == set(everyone)
        assert set(s.workers_list(["127.0.0.1"])) == set(everyone)
        assert s.workers_list(["alice", a.address]) == [alice.address, a.address]
        with pytest.raises(ValueError, match="No such worker"):
            s.workers_list(["bob"])
        assert s.coerce_hostname("alice") == "127.0.0.1"
        assert s.coerce_hostname("elsewhere") == "elsewhere"
        port = int(a.address.rsplit(":", 1)[1])
        assert s.coerce_address(("127.0.0.1", port)) == a.address
        assert s.coerce_address(f"localhost:{port}") == a.address
        assert s.coerce_address(f"localhost:{port}", resolve=False) == f"tcp://localhost:{port}"
        assert s.coerce_address("alice") == alice.address

        replies = await s.broadcast(msg=GetLogs(0))
        assert replies == {address: () for address in everyone}
        assert await s.broadcast(msg=GetLogs(0), workers=["alice"]) == {alice.address: ()}
        assert set(await s.broadcast(msg=GetLogs(0), hosts=["127.0.0.1"])) == set(everyone)
        assert set(await s.broadcast(msg=GetLogs(0), hosts=["alice"])) == set(everyone)
        with pytest.raises(ValueError, match="Unknown operation 'no-such-op'"):
            await s.broadcast(msg={"op": "no-such-op"})
        returned = await s.broadcast(msg={"op": "no-such-op"}, on_error="return")
        assert set(returned) == set(everyone)
        assert all(isinstance(r, ValueError) for r in returned.values())
        assert await s.broadcast(msg={"op": "no-such-op"}, on_error="ignore") == {}
        with pytest.raises(ValueError, match="without a nanny"):
            await s.broadcast(msg=GetLogs(0), nanny=True)
        with pytest.raises(NotImplementedError, match="serializers"):
            await s.broadcast(msg=GetLogs(0), serializers=["pickle"])
        with pytest.raises(ValueError, match="on_error must be one of"):
            await s.broadcast(msg=GetLogs(0), on_error="shrug")
        with pytest.raises(TypeError, match="broadcast needs a request"):
            await s.broadcast()
        assert set(await s.get_worker_logs(n=0)) == set(everyone)
        assert await c.submit(inc, 1, workers=["alice"]) == 2


# ---------------------------------------------------------------------- versions


@gen_cluster()
async def test_versions_of_everyone(c, s, a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions = await c.get_versions(check=True, packages=["pytest"])
    assert set(versions) == {"scheduler", "workers", "client"}
    assert set(versions["workers"]) == {a.address, b.address}
    for found in [versions["scheduler"], versions["client"], *versions["workers"].values()]:
        assert {"python", "OS", "machine"} <= set(found["host"])
        packages = found["packages"]
        assert packages["python"] == ".".join(map(str, sys.version_info))
        assert packages["distributary"] == "0.1.0" and packages["dask"] == dask.__version__
        assert packages["pytest"] == pytest.__version__
        assert {"msgpack", "cloudpickle", "toolz", "numpy", "pandas", "lz4"} <= set(packages)
    assert a.versions(["pytest"])["packages"] == versions["client"]["packages"]


@gen_cluster()
async def test_a_worker_with_another_version_is_reported(c, s, a, b):
    async with OldToolzWorker(s.address, nthreads=1) as old:
        with pytest.warns(VersionMismatchWarning, match=r"(?s)Mismatched.*toolz.*0\.0\.1"):
            versions = await c.get_versions()
        assert versions["workers"][old.address]["packages"]["toolz"] == "0.0.1"
        with pytest.raises(ValueError, match=r"(?s)Mismatched versions found.*\| toolz +\|"):
            await c.get_versions(check=True)
        assert await c.submit(inc, 1) == 2


def test_mismatches_compare_the_scheduler_only_where_it_matters():
    def side(**packages):
        return {"host": {}, "packages": {"python": "3", "dask": "1", "numpy": "2", **packages}}

    same = {"w1": side(), "w2": side()}
    assert mismatches(side(), side(numpy="9"), same) == []  # the scheduler unpickles nothing
    assert mismatches(side(), side(dask="9"), same) == [("dask", "1", "9", "1")]
    rows = mismatches(side(), side(), {"w1": side(numpy="9"), "w2": side()})
    assert rows == [("numpy", "2", "2", {"2", "9"})]


# ---------------------------------------------------------------------- worker processes


@pytest.mark.timeout(60)
def test_the_records_and_call_stacks_of_worker_processes(processes, tmp_path):
    cluster, c = processes
    info = c.scheduler_info()
    pids = c.run(os.getpid)
    directories = c.run(local_directory)
    assert set(info["workers"]) == set(pids) and os.getpid() not in pids.values()
    for address, w in info["workers"].items():
        record = cluster.scheduler.workers[address]
        assert w["pid"] == record.pid == pids[address]
        assert w["local_directory"] == record.local_directory == directories[address]
        assert w["nanny"] == record.nanny and record.nanny.startswith("tcp://127.0.0.1:")

    first = sorted(pids)[0]
    path = str(tmp_path / "go")
    waiting = c.submit(wait_for_file, path, workers=[first])
    poll(lambda: c.processing()[first] == (waiting.key,))
    stacks = c.call_stack()
    assert list(stacks) == [first] and list(stacks[first]) == [waiting.key]
    assert any("in wait_for_file" in frame for frame in stacks[first][waiting.key][-3:])
    assert list(c.call_stack(futures=[waiting])) == [first]
    assert c.call_stack(keys=["something-else"]) == {}
    open(path, "w").close()
    assert waiting.result(timeout=20) == path
    assert c.call_stack() == {}


@pytest.mark.timeout(60)
def test_logs_events_and_versions_of_worker_processes(processes):
    cluster, c = processes
    first, second = sorted(cluster.scheduler.workers)
    pid = c.submit(warn_in_worker, "marker in a process", workers=[first]).result(timeout=20)
    logs = c.get_worker_logs()
    assert any("marker in a process" in m for _, m in logs[first])
    assert not any("marker in a process" in m for _, m in logs[second])  # another process
    logging.getLogger("distributary.nanny").warning("marker of the nannies")
    nannies = c.get_worker_logs(n=1, nanny=True)  # (in this process: they share a logger)
    assert set(nannies) == {first, second}
    assert all(logs[0][1].endswith("marker of the nannies") for logs in nannies.values())

    key = c.submit(log_from_task, "from-a-process", {"pid": pid}, workers=[first]).result()
    assert [m for _, m in c.get_events("from-a-process")] == [{"pid": pid}]
    assert key.startswith("log_from_task-")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions = c.get_versions(check=True)
    assert set(versions["workers"]) == {first, second}
    assert versions["workers"][first]["packages"] == versions["client"]["packages"]


class EventRecorder(SchedulerPlugin):
    def __init__(self):
        self.seen = []

    def log_event(self, topic, msg):
        self.seen.append((topic, msg))


@gen_cluster(nthreads=(1,))
async def test_workers_joining_and_leaving_are_events_and_plugins_hear_of_every_event(c, s, a):
    plugin = EventRecorder()
    s.add_plugin(plugin)
    await c.log_event("mine", {"n": 1})
    async with Worker(s.address, nthreads=1) as b:
        pass
    await apoll(lambda: ("all", {"action": "remove-worker", "worker": b.address}) in plugin.seen)
    assert ("mine", {"n": 1}) in plugin.seen
    assert ("all", {"action": "add-worker", "worker": b.address}) in plugin.seen
    actions = [msg["action"] for _, msg in await c.get_events(b.address)]
    assert actions == ["add-worker", "remove-worker"]
    assert {"action": "add-worker", "worker": a.address} in [m for _, m in s.get_events("all")]


def test_the_transition_log_keeps_as_many_entries_as_configured():
    with dask.config.set({"distributed.scheduler.transition-log-length": 5}):
        s = Scheduler()
    assert s.state.transition_log.maxlen == 5
    assert Scheduler().state.transition_log.maxlen == 1000  # (as in dask.distributed)


def test_the_transition_log_length_survives_dask_distributed_renaming_its_key():
    # (what importing dask.distributed does to the key, as dask.dataframe may import it)
    old = "distributed.scheduler.transition-log-length"
    new = "distributed.admin.low-level-log-length"
    with dask.config.set({new: dask.config.get(new)}), dask.config.set({old: 7}):  # (restored)
        dask.config.rename({old: new})
        assert dask.config.get(old, None) is None
        assert Scheduler().state.transition_log.maxlen == 7
