"""Keys released and asked for again, on real clusters: in-process workers and worker
processes under nannies, clients in memory and over TCP.

The same scenarios as the model test (``test_key_lifecycle_model.py``), with real
timing: each ends with every future right and nothing left on the scheduler.
"""

from __future__ import annotations

import dask
import pytest
from conftest import poll
from dask import delayed

from distributary import Client, LocalCluster, fire_and_forget
from distributary.exceptions import FutureCancelledError


def inc(x):
    return x + 1


def raise_zero_division():
    return 1 / 0


def _clusters():
    return [
        pytest.param((dict(processes=False), "cluster"), id="threads-inproc"),
        pytest.param((dict(processes=False), "address"), id="threads-tcp"),
        pytest.param((dict(processes=True), "address"), id="nannies-tcp"),
    ]


@pytest.fixture(params=_clusters())
def cluster_and_client(request):
    options, how = request.param
    with LocalCluster(n_workers=2, threads_per_worker=1, **options) as cluster:
        target = cluster if how == "cluster" else cluster.scheduler_address
        with Client(target) as client:
            yield cluster, client


def nothing_held(cluster) -> bool:
    """No task, and no client record but those of the clients connected, wanting nothing."""
    clients = cluster.scheduler.state.clients
    return not cluster.scheduler.tasks and all(
        not record.wants_what and cluster.scheduler.is_connected(name)
        for name, record in clients.items()
    )


@pytest.mark.timeout(60)
def test_the_program_of_the_issue(cluster_and_client):
    """Released keys asked for again, with dependents: it raised "Dependency ... is
    unknown" every time, and broke the client for good."""
    cluster, c = cluster_and_client
    c.gather(c.map(inc, range(5)))  # computed, then released
    first = c.map(inc, range(5))  # the same keys again
    second = c.map(inc, first)
    del first
    assert c.gather(second) == [2, 3, 4, 5, 6]
    assert c.gather(c.map(inc, c.map(inc, range(5)))) == [2, 3, 4, 5, 6]
    del second
    poll(lambda: nothing_held(cluster))


@pytest.mark.timeout(60)
def test_compute_on_a_collection_that_just_failed(cluster_and_client):
    """It gave "Dependency 'raise_zero_division-…' is unknown" now and then."""
    cluster, c = cluster_and_client
    bad = delayed(raise_zero_division)()
    for _ in range(20):
        with pytest.raises(ZeroDivisionError):
            c.compute(bad).result()
        with pytest.raises(ZeroDivisionError):
            dask.compute(delayed(inc)(bad))
    poll(lambda: nothing_held(cluster))


@pytest.mark.timeout(120)
def test_a_thousand_rounds_of_map_release_and_resubmit(cluster_and_client):
    """The same keys, again and again, with every kind of reuse in between."""
    cluster, c = cluster_and_client
    for round_ in range(1000):
        kind = round_ % 5
        if kind == 0:  # released, then asked for again at once
            assert c.gather(c.map(inc, range(10))) == list(range(1, 11))
        elif kind == 1:  # dependents of keys released while they run
            first = c.map(inc, range(10))
            second = c.map(inc, first)
            del first
            assert c.gather(second) == list(range(2, 12))
            del second
        elif kind == 2:  # cancelled, then submitted again
            futures = c.map(inc, range(10))
            c.cancel(futures)
            assert all(f.cancelled() for f in futures)
            with pytest.raises(FutureCancelledError):
                futures[0].result()
            assert c.gather(c.map(inc, range(10))) == list(range(1, 11))
            del futures
        elif kind == 3:  # an erred key, released and submitted again
            with pytest.raises(ZeroDivisionError):
                c.submit(raise_zero_division, pure=True).result()
            with pytest.raises(ZeroDivisionError):
                c.submit(raise_zero_division, pure=True).result()
        else:  # the same key held twice, one Future dropped before the result
            a = c.submit(inc, round_)
            b = c.submit(inc, round_)
            del a
            assert b.result() == round_ + 1
            del b
    poll(lambda: nothing_held(cluster), timeout=20)


@pytest.mark.timeout(60)
def test_big_maps_of_keys_computed_before(cluster_and_client):
    """``gather(map(inc, range(500)))`` after earlier maps of the same keys sometimes
    never returned."""
    cluster, c = cluster_and_client
    for _ in range(10):
        assert c.gather(c.map(inc, range(500))) == list(range(1, 501))
    poll(lambda: nothing_held(cluster))


@pytest.mark.timeout(60)
def test_two_clients_sharing_keys():
    """Each client's futures of a shared key live as long as that client holds them."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster.scheduler_address) as a,
        Client(cluster.scheduler_address) as b,
    ):
        for _ in range(50):
            fa = a.map(inc, range(10))
            fb = b.map(inc, range(10))
            del fa  # a's release must not free what b holds
            assert b.gather(b.map(inc, fb)) == list(range(2, 12))
            fa = a.map(inc, range(10))
            b.cancel(fb)  # b's cancel must not cancel a's futures
            assert a.gather(fa) == list(range(1, 11))
            del fa, fb
        poll(lambda: nothing_held(cluster))


@pytest.mark.timeout(60)
def test_a_forced_cancel_by_another_client():
    """``cancel(force=True)`` cancels every client's futures of the key; submitting the
    key again then computes it afresh for whoever asks."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster.scheduler_address) as a,
        Client(cluster.scheduler_address) as b,
    ):
        fa = a.submit(inc, 1)
        assert fa.result() == 2
        fb = b.submit(inc, 1)
        assert fb.result() == 2
        b.cancel(fb, force=True)
        poll(fa.cancelled)
        assert a.submit(inc, 1).result() == 2
        assert b.submit(inc, 1).result() == 2
        del fa, fb
        poll(lambda: nothing_held(cluster))


@pytest.mark.timeout(60)
def test_a_task_on_a_cancelled_future_is_cancelled(c):
    """As in dask.distributed: its dependency is gone, "lost dependencies"."""
    x = c.submit(inc, 1)
    x.result()
    c.cancel(x, force=True)
    y = c.submit(inc, x)
    with pytest.raises(FutureCancelledError, match="lost dependencies"):
        y.result(timeout=10)
    assert c.submit(inc, c.submit(inc, 1)).result() == 3


def test_fire_and_forget_leaves_nothing_behind(cluster_and_client):
    cluster, c = cluster_and_client
    for _ in range(20):
        fire_and_forget(c.map(inc, range(5)))  # running, or finished already
    done = c.map(inc, range(5))
    assert c.gather(done) == list(range(1, 6))
    fire_and_forget(done)  # finished: there is nothing to keep them for
    del done
    poll(lambda: nothing_held(cluster), timeout=20)
