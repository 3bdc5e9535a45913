"""Variable: set, get with timeouts and delete, futures as values kept alive until
overwritten or deleted, from asynchronous and blocking clients and from tasks."""

from __future__ import annotations

import asyncio
import gc
import pickle

import pytest
from conftest import apoll, gen_cluster, poll, second_client

from distributary import Client, Future, LocalCluster, Variable


def inc(x):
    return x + 1


def only_real_clients(s) -> bool:
    """No pseudo-client holding a value's keys is left."""
    return not [c for c in s.state.clients if c.startswith(("variable-", "receipt-"))]


def waiting_gets(s, name) -> int:
    variable = s.variables.variables.get(name)
    return 0 if variable is None else len(variable.getters)


# ---------------------------------------------------------------------- values


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_set_get_overwrite_delete(c, s, a, b):
    x = Variable("x", client=c)
    await x.set(1)
    assert await x.get() == 1
    await x.set({"a": [1, 2]})
    assert await Variable("x", client=c).get() == {"a": [1, 2]}
    await x.delete()
    with pytest.raises(TimeoutError, match="x"):
        await x.get(timeout=0.05)
    assert not s.variables.variables  # an unset variable nobody waits on is forgotten


@pytest.mark.timeout(30)
@gen_cluster()
async def test_getting_an_unset_variable_times_out_or_waits_for_a_set(c, s, a, b):
    x = Variable("x", client=c)
    with pytest.raises(TimeoutError):
        await x.get(timeout="50ms")
    got = asyncio.ensure_future(x.get(timeout=10))
    second = asyncio.ensure_future(x.get())
    await apoll(
        lambda: "x" in s.variables.variables and len(s.variables.variables["x"].getters) == 2
    )
    async with second_client(s) as c2:
        await Variable("x", client=c2).set("hello")
    assert (await got, await second) == ("hello", "hello")


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_delete_done_without_being_awaited(c, s, a, b):
    x = Variable("x", client=c)
    await x.set(1)
    x.delete()  # as dask.distributed's asynchronous users write it
    await apoll(lambda: not s.variables.variables)


# ---------------------------------------------------------------------- futures as values


@pytest.mark.timeout(30)
@gen_cluster(protocols=("tcp", "inproc"))
async def test_a_future_keeps_its_data_until_overwritten(c, s, a, b):
    x = Variable("x", client=c)
    await x.set(c.submit(inc, 1))  # at once, and the future dropped right away
    got = await x.get()
    key = got.key
    assert await got == 2
    del got
    gc.collect()
    await apoll(lambda: key in s.tasks and c.id not in s.tasks[key].who_wants)
    assert s.tasks[key].state == "memory"  # held by the variable alone
    await x.set("something else")
    await apoll(lambda: key not in s.tasks)
    await apoll(lambda: only_real_clients(s))


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_future_keeps_its_data_until_deleted_and_leaves_then(c, s, a, b):
    x = Variable("x", client=c)
    future = c.submit(inc, 10)
    await x.set(future)
    key = future.key
    await future
    del future
    gc.collect()
    await apoll(lambda: c.id not in s.tasks[key].who_wants)
    async with second_client(s) as c2:
        got = await Variable("x", client=c2).get()
        assert isinstance(got, Future) and got.client is c2
        assert await got == 11
        await x.delete()
        await apoll(lambda: s.tasks[key].who_wants == (c2.id,))  # the getter's own hold
        assert await got == 11
        del got
        gc.collect()
        await apoll(lambda: key not in s.tasks)
    assert not any(key in w.data for w in (a, b))
    await apoll(lambda: set(s.state.clients) == {c.id})


@pytest.mark.timeout(30)
@gen_cluster()
async def test_a_future_dropped_as_its_client_gets_it_back_stays(c, s, a, b):
    x = Variable("x", client=c)
    for i in range(20):
        await x.set(c.submit(inc, i))  # dropped at once: its release races the get
        got = await x.get()
        await x.delete()
        assert await got == i + 1


@pytest.mark.timeout(30)
@gen_cluster()
async def test_setting_the_same_future_again_keeps_it(c, s, a, b):
    x = Variable("x", client=c)
    future = c.submit(inc, 1)
    await x.set(future)
    await x.set([future, 1])  # the key is in both values: it stays throughout
    key = future.key
    del future
    gc.collect()
    await apoll(lambda: c.id not in s.tasks[key].who_wants)
    value = await x.get()
    assert await value[0] == 2


@pytest.mark.timeout(30)
@gen_cluster()
async def test_setting_a_released_future_fails_and_keeps_the_old_value(c, s, a, b):
    x = Variable("x", client=c)
    await x.set(1)
    future = c.submit(inc, 1)
    await future
    await c.cancel([future])
    await apoll(lambda: future.key not in s.tasks)
    with pytest.raises(ValueError, match=future.key):
        await x.set(future)
    assert await x.get() == 1


def set_in_task(value):
    Variable("from-task").set(value)
    return value


def get_in_task(variable):
    return variable.get(timeout=10)


@pytest.mark.timeout(60)
def test_tasks_set_and_get_variables(c):
    assert c.submit(set_in_task, 5).result(timeout=10) == 5
    assert Variable("from-task").get(timeout=5) == 5
    shared = Variable("shared")
    waiting = c.submit(get_in_task, shared)  # waits in its task until set
    shared.set(c.submit(inc, 41))
    got = waiting.result(timeout=10)
    assert isinstance(got, Future) and got.result(timeout=10) == 42


# ---------------------------------------------------------------------- the objects


@pytest.mark.timeout(30)
def test_names_pickling_and_bad_arguments(c):
    assert Variable().name != Variable().name
    assert Variable().name.startswith("variable-")
    x = pickle.loads(pickle.dumps(Variable("x")))
    assert x.name == "x" and repr(x) == "<Variable: 'x'>"
    Variable("x", maxsize=0)  # accepted, as dask.distributed documents it
    with pytest.raises(ValueError, match="maxsize must be 0, not 3"):
        Variable("x", maxsize=3)
    with pytest.raises(TypeError, match="name"):
        Variable({1})
    with pytest.raises(TypeError, match="colour"):
        Variable("x", colour="red")
    with pytest.raises(ValueError, match="negative"):
        x.get(timeout=-1)
    x.set(3)
    assert x.get() == 3


@pytest.mark.timeout(30)
def test_a_variable_of_a_closed_client_raises_a_clear_error(cluster):
    with Client(cluster) as client:
        x = Variable("x", client=client)
        x.set(1)
    for call in (lambda: x.set(2), lambda: x.get(timeout=1), x.delete):
        with pytest.raises(RuntimeError, match="closed"):
            call()


@pytest.mark.timeout(30)
@gen_cluster()
async def test_the_waits_of_a_client_that_leaves_are_dropped(c, s, a, b):
    c2 = await second_client(s)
    waiting = asyncio.ensure_future(Variable("x", client=c2).get())
    await apoll(lambda: waiting_gets(s, "x") == 1)
    await c2.close()
    with pytest.raises((OSError, RuntimeError)):  # (its connection closed)
        await waiting
    await apoll(lambda: not s.variables.variables)


@pytest.mark.timeout(60)
def test_a_getter_that_closes_leaves_nothing_held():
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        s = cluster.scheduler
        x = Variable("x")
        future = client.submit(inc, 1)
        x.set(future)
        with Client(cluster, set_as_default=False) as other:
            assert Variable("x", client=other).get().result() == 2
        x.delete()
        key = future.key
        del future
        poll(lambda: key not in s.tasks)
        assert set(s.state.clients) == {client.id}
