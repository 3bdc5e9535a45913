"""Every keyword is honoured, refused as not supported yet, or a TypeError naming it:
nothing is silently ignored."""

from __future__ import annotations

import asyncio

import pytest

from distributary import Client, LocalCluster, Nanny, Scheduler, Worker

pytestmark = pytest.mark.timeout(60)


def inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: Worker("tcp://127.0.0.1:8786", nthreadz=3),
        lambda: Scheduler(bogus=1),
        lambda: Nanny("tcp://127.0.0.1:8786", nthreadz=3),
        lambda: Client("tcp://127.0.0.1:8786", n_workerz=2),
    ],
    ids=["Worker", "Scheduler", "Nanny", "Client"],
)
def test_an_unknown_keyword_is_a_type_error_naming_it(make):
    with pytest.raises(TypeError, match="nthreadz|bogus|n_workerz"):
        make()


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: Worker("tcp://127.0.0.1:8786", preload=["mod"]), "preload"),
        (lambda: Worker("tcp://127.0.0.1:8786", reconnect=False), "reconnect"),
        (lambda: Scheduler(extensions={"x": object}), "extensions"),
        (lambda: Nanny("tcp://127.0.0.1:8786", quiet=True), "quiet"),
        (lambda: Client("tcp://127.0.0.1:8786", deserializers=["pickle"]), "deserializers"),
        (lambda: Client("tcp://127.0.0.1:8786", serializers=["pickle"]), "serializers"),
        (lambda: Client("tcp://127.0.0.1:8786", direct_to_workers=False), "direct_to_workers"),
    ],
)
def test_a_documented_keyword_not_supported_yet_says_so(make, name):
    with pytest.raises(NotImplementedError, match=f"{name}=.*not supported"):
        make()


def test_keywords_at_their_documented_defaults_or_without_effect_are_taken():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Scheduler(loop=loop, dashboard_address=":0", services=None) as s:
            worker = Worker(s.address, reconnect=True, metrics={}, loop=loop, nthreads=1)
            async with worker, Client(s.address, asynchronous=True, loop=loop) as c:
                assert await c.submit(inc, 1) == 2

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_local_cluster_passes_a_bad_worker_keyword_on_and_fails_cleanly():
    with pytest.raises(TypeError, match="nthreadz"):
        LocalCluster(n_workers=1, processes=False, nthreadz=2, dashboard_address=None)
    # (the failure left nothing behind to trip on)
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(inc, 1).result() == 2


def test_compute_persist_and_get_refuse_options_they_would_not_pass_on():
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        import dask

        x = dask.delayed(inc)(1)
        for call in (client.compute, client.persist):
            with pytest.raises(TypeError, match="fuse_ave_width"):
                call(x, fuse_ave_width=3)
        with pytest.raises(TypeError, match="bogus"):
            client.get({"y": (inc, 1)}, "y", bogus=True)
        assert client.compute(x).result() == 2
