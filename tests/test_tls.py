"""TLS: ``tls://`` comms with mutual authentication, and clusters over TLS end to end
(worker processes under nannies, with ``Security.temporary()`` and with certificate
files written here, and from the command line).  Each wrong credential or transport
is a clear error on the connecting side, within the connect timeout, and the server
goes on serving the others."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import ssl
import struct
import subprocess
import sys
import tempfile
import time

import dask.config
import numpy as np
import psutil
import pytest
from conftest import apoll, poll, run

from distributary import Client, LocalCluster, Nanny, Scheduler, Security, Worker, get_client
from distributary.comm import CommClosedError, HandshakeError, connect, listen
from distributary.protocol.serialize import Serialize, deserialize
from distributary.utils.certificates import new_authority

pytestmark = pytest.mark.timeout(90)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def submit_from_a_task(x: int) -> int:
    return get_client().submit(inc, x).result()


def schemes(dask_worker) -> set[str]:
    """(Run on a worker) the schemes of its own address and its scheduler's."""
    return {dask_worker.address.split("://")[0], dask_worker.scheduler_address.split("://")[0]}


@pytest.fixture
def authority():
    return new_authority("test CA")


@pytest.fixture
def files(tmp_path, authority):
    """A CA and a certificate for each role, written to files: ``{name: path}``."""
    paths = {"ca": tmp_path / "ca.pem"}
    paths["ca"].write_text(authority.cert)
    for role in ("scheduler", "worker", "client"):
        credentials = authority.issue(role)
        paths[f"{role}-cert"] = tmp_path / f"{role}-cert.pem"
        paths[f"{role}-cert"].write_text(credentials.cert)
        paths[f"{role}-key"] = tmp_path / f"{role}-key.pem"
        paths[f"{role}-key"].write_text(credentials.key)
    return {name: str(path) for name, path in paths.items()}


def security_of(files: dict, role: str) -> Security:
    return Security(
        tls_ca_file=files["ca"],
        **{f"tls_{role}_cert": files[f"{role}-cert"], f"tls_{role}_key": files[f"{role}-key"]},
    )


async def echo_listener(sec: Security, accepted: list):
    async def echo(comm):
        accepted.append(comm)
        while True:
            try:
                await comm.write(await comm.read())
            except CommClosedError:
                return

    return await listen("tls://127.0.0.1:0", echo, **sec.get_listen_args("scheduler"))


# ---------------------------------------------------------------------- comms


def test_tls_comm_round_trips_small_and_large_messages():
    sec = Security.temporary()

    async def main():
        accepted: list = []
        listener = await echo_listener(sec, accepted)
        try:
            assert listener.address.startswith("tls://127.0.0.1:")
            comm = await connect(listener.address, timeout=5, **sec.get_connection_args("client"))
            assert comm.peer_address == listener.address
            assert comm.local_address.startswith("tls://127.0.0.1:")
            for i in range(100):
                await comm.write({"i": i, "key": ("x", i)})
                assert await comm.read() == {"i": i, "key": ("x", i)}
            x = np.random.default_rng(0).integers(0, 255, 20_000_000, dtype="u1")
            await comm.write({"x": Serialize(x), "small": b"y" * 100_000})
            reply = await comm.read()
            assert np.array_equal(deserialize(reply["x"]), x)
            assert accepted[0].peer_address == comm.local_address
            await comm.close()
        finally:
            await listener.close()

    run(main())


def test_tls_under_uvloop():
    uvloop = pytest.importorskip("uvloop")
    sec = Security.temporary()

    async def main():
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        listener = await echo_listener(sec, [])
        comm = await connect(listener.address, timeout=5, **sec.get_connection_args("worker"))
        x = np.arange(3_000_000)
        await comm.write({"x": Serialize(x), "n": 1})
        assert np.array_equal(deserialize((await comm.read())["x"]), x)
        with pytest.raises(HandshakeError, match="not accepted"):
            await connect(
                listener.address, timeout=5, **Security.temporary().get_connection_args("client")
            )
        await comm.close()
        await listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 30))


def test_an_untrusted_client_certificate_is_refused_before_anything_is_read(authority, caplog):
    """A peer whose certificate another CA signed gets no comm: nothing it sends is
    parsed, let alone unpickled; the listener logs why, and goes on serving."""
    server = Security.temporary()
    stranger = new_authority("another CA").issue("stranger")
    # the stranger trusts the server (it has its CA), but is not trusted by it
    untrusted = Security(
        tls_ca_file=server.tls_ca_file,
        tls_client_cert=stranger.cert,
        tls_client_key=stranger.key,
    )

    async def main():
        accepted: list = []
        listener = await echo_listener(server, accepted)
        try:
            start = time.monotonic()
            with pytest.raises(CommClosedError, match="certificate"):
                await connect(
                    listener.address, timeout=5, **untrusted.get_connection_args("client")
                )
            assert time.monotonic() - start < 5

            # a raw TLS peer without any certificate, which writes frames at once
            host, port = listener.address[len("tls://") :].rsplit(":", 1)
            ctx = ssl.create_default_context(cadata=server.tls_ca_file)
            ctx.check_hostname = False
            reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            writer.write(struct.pack("<QQ", 1, 2**40))
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await apoll(lambda: caplog.text.count("Rejected a TLS connection") >= 2)
            assert accepted == []  # no comm was made for either: nothing was read

            comm = await connect(
                listener.address, timeout=5, **server.get_connection_args("client")
            )
            await comm.write("still serving")
            assert await comm.read() == "still serving"
            await comm.close()
        finally:
            await listener.close()

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert "did not return a certificate" in caplog.text
    assert "max-message-size" not in caplog.text  # (the forged frame was never parsed)


def test_wrong_transports_and_credentials_are_clear_errors_naming_the_cause(authority, caplog):
    """Against a TLS scheduler and a plain one: each wrong client fails at once (within
    the connect timeout) with an error naming the cause; the schedulers go on serving."""
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = authority.issue("expired", now - datetime.timedelta(days=9), now)

    def credentials(role: str, issued) -> Security:
        return Security(
            tls_ca_file=authority.cert,
            **{f"tls_{role}_cert": issued.cert, f"tls_{role}_key": issued.key},
        )

    server = credentials("scheduler", authority.issue("scheduler"))
    good = credentials("client", authority.issue("client"))

    async def main():
        async with (
            Scheduler(security=server) as tls,
            Scheduler(protocol="tcp") as plain,
            Worker(tls.address, nthreads=1, security=credentials("worker", authority.issue("w"))),
            Worker(plain.address, nthreads=1),
            Client(tls.address, asynchronous=True, security=good) as c,
            Client(plain.address, asynchronous=True, set_as_default=False) as d,
        ):
            cases = [
                # a plain client against the TLS scheduler
                (tls.address.replace("tls://", "tcp://"), None, "takes TLS connections only"),
                # a TLS client against the plain scheduler
                (plain.address.replace("tcp://", "tls://"), good, "plain tcp:// server"),
                # a client that trusts another CA (and whose certificate another CA signed)
                (tls.address, Security.temporary(), "certificate was not accepted"),
                # a client whose certificate has expired
                (tls.address, credentials("client", expired), "certificate"),
                # a client without a certificate
                (tls.address, Security(tls_ca_file=authority.cert), "certificate"),
                # no credentials at all for a tls:// address
                (tls.address, Security(), "needs TLS credentials"),
            ]
            for address, security, match in cases:
                start = time.monotonic()
                with pytest.raises((OSError, ValueError), match=match):
                    await Client(address, asynchronous=True, security=security, timeout=5)
                assert time.monotonic() - start < 5, match
            assert await c.submit(inc, 1) == 2
            assert await d.submit(inc, 2) == 3
            assert len(tls.workers) == len(plain.workers) == 1

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main(), timeout=60)
    assert "does not speak TLS" in caplog.text  # (the TLS scheduler, of the plain client)
    assert "the peer speaks TLS" in caplog.text  # (the plain scheduler, of the TLS client)
    assert "did not return a certificate" in caplog.text
    assert "certificate has expired" in caplog.text


def test_expired_certificates_are_refused_on_both_sides(authority, caplog):
    now = datetime.datetime.now(datetime.timezone.utc)
    old = authority.issue(
        "old", now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    )
    good = authority.issue("good")

    def security(credentials) -> Security:
        return Security(
            tls_ca_file=authority.cert,
            **{
                f"tls_{r}_{p}": getattr(credentials, p)
                for r in ("scheduler", "client")
                for p in ("cert", "key")
            },
        )

    async def main():
        for server, client, match in [
            (security(old), security(good), "certificate has expired"),
            (security(good), security(old), "certificate"),
        ]:
            listener = await echo_listener(server, [])
            try:
                with pytest.raises(CommClosedError, match=match):
                    await connect(
                        listener.address, timeout=5, **client.get_connection_args("client")
                    )
            finally:
                await listener.close()

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert "certificate has expired" in caplog.text  # (the server, of the client's)


def test_a_tls_listener_drops_peers_that_say_nothing():
    sec = Security.temporary()

    async def main():
        with dask.config.set({"distributed.comm.timeouts.connect": "0.3s"}):
            listener = await echo_listener(sec, [])
        host, port = listener.address[len("tls://") :].rsplit(":", 1)
        try:
            silent = [await asyncio.open_connection(host, int(port)) for _ in range(20)]
            # a ClientHello's first byte, and then nothing: the TLS handshake times out
            silent[0][1].write(b"\x16")
            start = time.monotonic()
            for reader, writer in silent:
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            assert time.monotonic() - start < 3
            await apoll(lambda: not listener._pending)
        finally:
            await listener.close()

    run(main())


# ---------------------------------------------------------------------- clusters


def test_a_tls_cluster_of_worker_processes_with_temporary_credentials():
    sec = Security.temporary()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, security=sec, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.security is sec and client.security is sec
        assert cluster.scheduler_address.startswith("tls://")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(a.startswith("tls://") for a in workers)
        assert all(w["nanny"].startswith("tls://") for w in workers.values())
        a, b = list(workers)
        x = client.submit(inc, 1, workers=[a])
        y = client.submit(inc, 2, workers=[b])
        assert client.submit(add, x, y, workers=[a]).result() == 5  # (worker to worker)
        [big] = client.scatter([np.arange(1_000_000)], workers=[b])
        assert client.submit(np.sum, big, workers=[a]).result() == np.arange(1_000_000).sum()
        assert client.submit(submit_from_a_task, 10).result() == 11
        assert client.run(schemes) == {a: {"tls"}, b: {"tls"}}

        # a plain client, or one with other credentials, is refused; the cluster goes on
        start = time.monotonic()
        with pytest.raises(HandshakeError, match="takes TLS connections only"):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=5)
        with pytest.raises(HandshakeError, match="not accepted"):
            Client(cluster.scheduler_address, timeout=5, security=Security.temporary())
        assert time.monotonic() - start < 10
        assert client.submit(inc, 41).result() == 42


def test_security_true_means_temporary_credentials():
    with Client(security=True, n_workers=1, processes=False, dashboard_address=None) as client:
        assert client.scheduler_address.startswith("tls://")
        assert client.cluster.security is client.security
        assert client.security.tls_ca_file.startswith("-----BEGIN")
        assert client.submit(inc, 1).result() == 2
    with LocalCluster(security=True, n_workers=1, processes=False, dashboard_address=None) as lc:
        assert lc.scheduler_address.startswith("tls://")
        with Client(lc.scheduler_address, security=lc.security, timeout=10) as client:
            # (over TLS, not in memory: the address given is the cluster's, not the object)
            assert client.submit(inc, 2).result() == 3


def test_a_tls_cluster_from_certificate_files(files):
    async def main():
        async with Scheduler(security=security_of(files, "scheduler")) as s:
            assert s.address.startswith("tls://")
            async with (
                Nanny(s.address, nthreads=1, security=security_of(files, "worker")) as n,
                Worker(s.address, nthreads=1, security=security_of(files, "worker")) as w,
                Client(s.address, asynchronous=True, security=security_of(files, "client")) as c,
            ):
                assert n.address.startswith("tls://") and n.worker_address.startswith("tls://")
                x = c.submit(inc, 1, workers=[n.worker_address])
                assert await c.submit(add, x, 1, workers=[w.address]) == 3
                # a client inside a task uses its worker's credentials
                assert await c.submit(submit_from_a_task, 1, workers=[n.worker_address]) == 2
                # credentials another CA signed are refused; the cluster goes on
                stranger = Security.temporary()
                with pytest.raises(HandshakeError, match="not accepted"):
                    await Client(s.address, asynchronous=True, security=stranger, timeout=5)
                assert await c.submit(inc, 10) == 11

    run(main(), timeout=80)


def test_configuration_keys_give_the_credentials(files):
    config = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": files["ca"],
        "distributed.comm.tls.scheduler.cert": files["scheduler-cert"],
        "distributed.comm.tls.scheduler.key": files["scheduler-key"],
        "distributed.comm.tls.worker.cert": files["worker-cert"],
        "distributed.comm.tls.worker.key": files["worker-key"],
        "distributed.comm.tls.client.cert": files["client-cert"],
        "distributed.comm.tls.client.key": files["client-key"],
    }

    async def main():
        with dask.config.set(config):
            async with (
                Scheduler() as s,
                Worker(s.address, nthreads=1) as w,
                Client(s.address, asynchronous=True) as c,
            ):
                assert s.address.startswith("tls://") and w.address.startswith("tls://")
                assert await c.submit(inc, 1) == 2

    run(main())


# ---------------------------------------------------------------------- command line


class _Command:
    def __init__(self, args: list, log):
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distributary.cli", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)]
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
            psutil.wait_procs(procs, timeout=10)


def test_command_line_tls_options(files, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    commands = []
    try:
        commands.append(
            _Command(
                [
                    "scheduler",
                    "--port",
                    "0",
                    "--scheduler-file",
                    scheduler_file,
                    "--tls-ca-file",
                    files["ca"],
                    "--tls-cert",
                    files["scheduler-cert"],
                    "--tls-key",
                    files["scheduler-key"],
                ],
                tmp_path / "scheduler.log",
            )
        )
        poll(lambda: "Scheduler at: tls://" in commands[0].output(), timeout=30)
        address = re.search(r"Scheduler at: (\S+)", commands[0].output()).group(1)
        commands.append(
            _Command(
                [
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--tls-ca-file",
                    files["ca"],
                    "--tls-cert",
                    files["worker-cert"],
                    "--tls-key",
                    files["worker-key"],
                ],
                tmp_path / "worker.log",
            )
        )
        with Client(address, security=security_of(files, "client"), timeout=20) as client:
            poll(lambda: client.scheduler_info()["workers"], timeout=30)
            (worker,) = client.scheduler_info()["workers"]
            assert worker.startswith("tls://")
            assert client.submit(sum, [1, 2]).result() == 3  # (the worker has no tests/)
        # a worker with the wrong key for its certificate fails, saying which
        bad = _Command(
            [
                "worker",
                address,
                "--tls-ca-file",
                files["ca"],
                "--tls-cert",
                files["worker-cert"],
                "--tls-key",
                files["client-key"],
            ],
            tmp_path / "bad-worker.log",
        )
        commands.append(bad)
        assert bad.proc.wait(30) != 0
        assert "tls_worker_cert" in bad.output()
    finally:
        for command in reversed(commands):
            command.stop()
    for command in commands:
        assert "Traceback" not in command.output(), command.output()


def test_a_nanny_in_a_worker_process_keeps_its_credentials_in_memory(tmp_path):
    """Temporary credentials reach a worker process through the nanny's pipe, not a
    file, and are loaded from memory: no key is written to any file."""
    temporary = set(os.listdir(tempfile.gettempdir()))
    sec = Security.temporary()
    with (
        LocalCluster(
            n_workers=1, security=sec, dashboard_address=None, local_directory=str(tmp_path)
        ) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(inc, 1).result() == 2
        for root, _, names in os.walk(tmp_path):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    assert b"PRIVATE KEY" not in f.read(), name
        made = set(os.listdir(tempfile.gettempdir())) - temporary
        assert not [name for name in made if name.startswith("distributary-tls-")]
