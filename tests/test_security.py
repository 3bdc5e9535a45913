"""Security (its parameters, the configuration, validation), ``blocked_handlers``, the
refusal of plain connections with ``require_encryption``, the warning for exposed
plain listeners, and handshakes that are plain data (nothing unpickled from a peer
not yet accepted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import ssl
import struct

import dask.config
import msgpack
import pytest
from conftest import apoll, run

from distributary import Client, LocalCluster, Nanny, Scheduler, Security, Worker
from distributary.comm import PROTOCOL_VERSION, connect, listen
from distributary.security import as_security
from distributary.utils.certificates import new_authority

pytestmark = pytest.mark.timeout(60)


def inc(x: int) -> int:
    return x + 1


@pytest.fixture
def pem_files(tmp_path):
    """A CA and one certificate for each role, as files: ``{name: path}``."""
    authority = new_authority("test CA")
    paths = {"ca": tmp_path / "ca.pem"}
    paths["ca"].write_text(authority.cert)
    for role in ("scheduler", "worker", "client"):
        credentials = authority.issue(role)
        paths[f"{role}-cert"] = tmp_path / f"{role}.pem"
        paths[f"{role}-key"] = tmp_path / f"{role}.key"
        paths[f"{role}-cert"].write_text(credentials.cert)
        paths[f"{role}-key"].write_text(credentials.key)
    return {name: str(path) for name, path in paths.items()}


# ---------------------------------------------------------------------- Security


def test_defaults_without_tls():
    sec = Security()
    assert sec.require_encryption is False
    assert sec.tls_min_version is ssl.TLSVersion.TLSv1_2
    assert sec.tls_max_version is None and sec.tls_ca_file is None
    assert sec.get_connection_args("client") == {
        "ssl_context": None,
        "require_encryption": False,
        "extra_conn_args": {},
    }
    assert sec.get_listen_args("scheduler") == {"ssl_context": None, "require_encryption": False}


def test_parameters_given_require_encryption_unless_told_otherwise(pem_files):
    sec = Security(tls_ca_file=pem_files["ca"], tls_client_cert=pem_files["client-cert"])
    assert sec.require_encryption is True
    sec = Security(False, tls_ca_file=pem_files["ca"])
    assert sec.require_encryption is False
    with dask.config.set({"distributed.comm.require-encryption": False}):
        assert Security(tls_ca_file=pem_files["ca"]).require_encryption is False
    with dask.config.set({"distributed.comm.require-encryption": True}):
        assert Security().require_encryption is True
    with pytest.raises(TypeError, match="require_encryption"):
        Security(require_encryption="yes")


def test_settings_come_from_the_configuration(pem_files):
    config = {
        "distributed.comm.tls.ca-file": pem_files["ca"],
        "distributed.comm.tls.scheduler.cert": pem_files["scheduler-cert"],
        "distributed.comm.tls.scheduler.key": pem_files["scheduler-key"],
        "distributed.comm.tls.client.cert": pem_files["client-cert"],
        "distributed.comm.tls.client.key": pem_files["client-key"],
        "distributed.comm.tls.min-version": 1.3,
        "distributed.comm.tls.ciphers": "ECDHE+AESGCM",
    }
    with dask.config.set(config):
        sec = Security()
    assert sec.tls_ca_file == pem_files["ca"]
    assert sec.tls_scheduler_cert == pem_files["scheduler-cert"]
    assert sec.tls_client_key == pem_files["client-key"]
    assert sec.tls_worker_cert is None
    assert sec.tls_min_version is ssl.TLSVersion.TLSv1_3
    assert sec.require_encryption is False  # (only explicit parameters imply it)
    assert sec.get_tls_config_for_role("scheduler") == {
        "ca_file": pem_files["ca"],
        "ciphers": "ECDHE+AESGCM",
        "cert": pem_files["scheduler-cert"],
        "key": pem_files["scheduler-key"],
    }
    ctx = sec.get_listen_args("scheduler")["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert sec.get_listen_args("worker")["ssl_context"] is None  # (no worker certificate)


def test_tls_versions():
    assert Security(tls_min_version=ssl.TLSVersion.TLSv1_3).tls_min_version.name == "TLSv1_3"
    assert Security(tls_max_version="1.2").tls_max_version is ssl.TLSVersion.TLSv1_2
    for bad in (ssl.TLSVersion.TLSv1_1, 1.1, "new", True):
        with pytest.raises(ValueError, match="tls_min_version"):
            Security(tls_min_version=bad)


def test_a_missing_file_is_an_error_naming_it(tmp_path, pem_files):
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(FileNotFoundError, match="tls_ca_file") as info:
        Security(tls_ca_file=missing)
    assert info.value.filename == missing and missing in str(info.value)
    with pytest.raises(FileNotFoundError, match="tls_worker_key"):
        Security(tls_ca_file=pem_files["ca"], tls_worker_key=missing)
    with (
        dask.config.set({"distributed.comm.tls.client.cert": missing}),
        pytest.raises(FileNotFoundError, match="distributed.comm.tls.client.cert"),
    ):
        Security()
    with pytest.raises(TypeError, match="tls_ca_file"):
        Security(tls_ca_file=42)


def test_unusable_credentials_are_errors_naming_them(tmp_path, pem_files):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    sec = Security(tls_ca_file=pem_files["ca"], tls_client_cert=str(junk))
    with pytest.raises(ValueError, match="tls_client_cert.*junk.pem"):
        sec.get_connection_args("client")
    with pytest.raises(ValueError, match="tls_ca_file.*junk.pem"):
        Security(tls_ca_file=str(junk)).get_connection_args("client")
    with pytest.raises(ValueError, match="tls_ca_file"):
        Security(tls_client_cert=pem_files["client-cert"]).get_connection_args("client")
    sec = Security(tls_ca_file=pem_files["ca"], tls_ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ValueError, match="tls_ciphers"):
        sec.get_connection_args("client")
    with pytest.raises(ValueError, match="role"):
        Security().get_connection_args("nanny")


def test_a_key_appended_to_its_certificate(tmp_path, pem_files):
    both = tmp_path / "both.pem"
    with open(pem_files["client-cert"]) as cert, open(pem_files["client-key"]) as key:
        both.write_text(cert.read() + key.read())
    sec = Security(tls_ca_file=pem_files["ca"], tls_client_cert=str(both))
    assert isinstance(sec.get_connection_args("client")["ssl_context"], ssl.SSLContext)


def test_temporary_credentials_are_in_memory_and_pickle_without_contexts():
    sec = Security.temporary()
    other = Security.temporary(tls_min_version=ssl.TLSVersion.TLSv1_3)
    assert sec.require_encryption and sec.tls_ca_file != other.tls_ca_file
    assert other.tls_min_version is ssl.TLSVersion.TLSv1_3
    assert sec.tls_ca_file.startswith("-----BEGIN CERTIFICATE-----")
    assert sec.tls_scheduler_cert == sec.tls_worker_cert == sec.tls_client_cert
    for role in ("scheduler", "worker", "client"):
        assert isinstance(sec.get_listen_args(role)["ssl_context"], ssl.SSLContext)
        assert isinstance(sec.get_connection_args(role)["ssl_context"], ssl.SSLContext)
    text = repr(sec)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text and "<PEM in memory>" in text
    copy = pickle.loads(pickle.dumps(sec))  # (as a nanny hands it to its worker process)
    assert copy.tls_client_key == sec.tls_client_key
    assert copy.get_connection_args("client")["ssl_context"] is not None
    assert "_contexts" not in copy.__getstate__()


@pytest.mark.parametrize("in_memory", [True, False], ids=["memfd", "temporary-file"])
def test_credentials_in_memory_are_loaded_without_leaving_a_file(in_memory, tmp_path):
    from distributary.security import _MEMORY_FILES, _as_files

    if in_memory and not _MEMORY_FILES:
        pytest.skip("no files in memory on this system")
    credentials = new_authority().issue()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with _as_files(credentials.cert, credentials.key, in_memory=in_memory) as (path, key):
        assert key is None and (path.startswith("/proc/self/fd/") == in_memory)
        ctx.load_cert_chain(path)
        if not in_memory:
            assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not os.path.exists(path) or in_memory


def test_extra_conn_args_are_checked_and_passed_to_the_connection():
    with pytest.raises(TypeError, match="bogus"):
        Security(extra_conn_args={"bogus": 1})
    with pytest.raises(TypeError, match="mapping"):
        Security(extra_conn_args=[("local_addr", None)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sec = Security(extra_conn_args={"local_addr": ("127.0.0.1", port)})

    async def main():
        async def echo(comm):
            await comm.write(await comm.read())

        listener = await listen("tcp://127.0.0.1:0", echo)
        try:
            comm = await connect(listener.address, timeout=5, **sec.get_connection_args("client"))
            assert comm.local_address == f"tcp://127.0.0.1:{port}"
            await comm.close()
        finally:
            await listener.close()

    run(main())


def test_what_security_keywords_take():
    sec = Security()
    assert as_security(sec, "X") is sec
    assert as_security({"require_encryption": True}, "X").require_encryption is True
    assert as_security(None, "X").require_encryption is False
    assert as_security(True, "X", temporary=True).tls_ca_file is not None
    with pytest.raises(TypeError, match=r"Scheduler\(security=...\)"):
        as_security(True, "Scheduler")
    with pytest.raises(TypeError, match=r"Client\(security=...\)"):
        Client("tcp://127.0.0.1:8786", security=object())
    with pytest.raises(TypeError, match=r"LocalCluster\(security=...\)"):
        LocalCluster(security="yes", n_workers=0, processes=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Security(tls_cert="x")


# ---------------------------------------------------------------------- require_encryption


def test_require_encryption_refuses_plain_listeners_and_connections():
    secure = Security(require_encryption=True)

    async def main():
        with pytest.raises(RuntimeError, match="Encryption is required.*tcp://"):
            await Scheduler(protocol="tcp", security=secure)
        # by default such a scheduler listens on tls://, which needs its certificate
        with pytest.raises(ValueError, match="tls://.*needs TLS credentials"):
            await Scheduler(security=secure)
        async with Scheduler() as s:
            with pytest.raises(RuntimeError, match="Encryption is required"):
                await connect(s.address, timeout=5, require_encryption=True)
            with pytest.raises(RuntimeError, match="Encryption is required"):
                await Worker(s.address, security=secure, nthreads=1)
            with pytest.raises(RuntimeError, match="Encryption is required"):
                await Client(s.address, asynchronous=True, security=secure)
            with (
                dask.config.set({"distributed.comm.require-encryption": True}),
                pytest.raises(RuntimeError, match="Encryption is required"),
            ):
                await Client(s.address, asynchronous=True)

        # in-process connections need no encryption
        async def echo(comm):
            await comm.write(await comm.read())

        listener = await listen("inproc://", echo, require_encryption=True)
        comm = await connect(listener.address, timeout=5, require_encryption=True)
        await comm.write("in memory")
        assert await comm.read() == "in memory"
        await comm.close()
        await listener.close()

    run(main())


def test_a_plain_listener_reachable_from_other_machines_gets_a_loud_warning(caplog):
    async def main():
        with caplog.at_level(logging.WARNING, logger="distributary.comm"):
            async with Scheduler(host="127.0.0.1"):
                pass
            assert "without TLS" not in caplog.text
            async with Scheduler(host="0.0.0.0"):
                pass
            assert "without TLS" in caplog.text and "run any code" in caplog.text
            caplog.clear()
            async with Scheduler(host="0.0.0.0", security=Security.temporary()) as s:
                assert s.address.startswith("tls://")
            assert "without TLS" not in caplog.text

    run(main())


def test_local_cluster_workers_listen_on_loopback():
    with LocalCluster(n_workers=1, processes=False, protocol="tcp", dashboard_address=None) as lc:
        (worker,) = lc.workers.values()
        assert worker.address.startswith("tcp://127.0.0.1:")
        assert lc.scheduler_address.startswith("tcp://127.0.0.1:")


# ---------------------------------------------------------------------- blocked handlers


def test_blocked_handlers_of_the_scheduler_refuse_with_a_clear_error(caplog):
    async def main():
        async with (
            Scheduler(blocked_handlers=["run_function", "who_has", "no_such_op"]) as s,
            Worker(s.address, nthreads=1) as w,
            Client(s.address, asynchronous=True) as c,
        ):
            with pytest.raises(ValueError, match="'run' operation is blocked on this Scheduler"):
                await c.run_on_scheduler(os.getpid)
            with pytest.raises(ValueError, match="'who-has' operation is blocked"):
                await c.who_has()
            assert await c.run(inc, 1) == {w.address: 2}  # (not blocked)
            assert await c.submit(inc, 1) == 2
        with dask.config.set({"distributed.scheduler.blocked-handlers": ["broadcast"]}):
            async with (
                Scheduler() as s,
                Worker(s.address, nthreads=1),
                Client(s.address, asynchronous=True) as c,
            ):
                with pytest.raises(ValueError, match="'run-on-workers' operation is blocked"):
                    await c.run(inc, 1)
                assert await c.run_on_scheduler(inc, 1) == 2

    with caplog.at_level(logging.WARNING, logger="distributary.core"):
        run(main())
    assert "'no_such_op' name no operation of it" in caplog.text


def test_blocked_handlers_of_workers_and_from_a_local_cluster():
    async def main():
        async with (
            Scheduler() as s,
            Worker(s.address, nthreads=1, blocked_handlers=["run"]) as w,
            Client(s.address, asynchronous=True) as c,
        ):
            with pytest.raises(ValueError, match="'run' operation is blocked on this Worker"):
                await c.run(inc, 1)
            assert (await c.run(inc, 1, on_error="return"))[w.address].args[0].startswith("The")
            assert await c.submit(inc, 1) == 2
        with dask.config.set({"distributed.worker.blocked-handlers": ["get_data"]}):
            async with Scheduler() as s, Worker(s.address, nthreads=1) as w:
                assert w.server.blocked_handlers == ["get_data"]
        async with (
            LocalCluster(
                n_workers=1, processes=False, asynchronous=True, blocked_handlers=["run_function"]
            ) as lc,
            Client(lc, asynchronous=True) as c,
        ):
            with pytest.raises(ValueError, match="blocked on this Scheduler"):
                await c.run_on_scheduler(inc, 1)
            assert list((await c.run(inc, 1)).values()) == [2]

    run(main())
    for bad in ("run", [1], 5):
        with pytest.raises(TypeError, match="blocked_handlers"):
            Scheduler(blocked_handlers=bad)


@pytest.mark.timeout(90)
def test_a_nanny_and_its_worker_process_refuse_what_is_blocked():
    async def main():
        async with (
            Scheduler() as s,
            Nanny(s.address, nthreads=1, blocked_handlers=["run"]) as n,
            Client(s.address, asynchronous=True) as c,
        ):
            assert n.server.blocked_handlers == ["run"]
            for nanny in (False, True):
                with pytest.raises(ValueError, match="blocked on this (Worker|Nanny)"):
                    await c.run(os.getpid, nanny=nanny)
            assert await c.submit(inc, 1) == 2

    run(main(), timeout=80)


# ---------------------------------------------------------------------- plain handshakes


class Bomb:
    """Unpickled, it makes a directory: proof that something was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _frame(msg: object) -> bytes:
    data = msgpack.packb(msg, use_bin_type=True)
    return struct.pack("<QQ", 1, len(data)) + data


def _pickled_ext(obj: object) -> msgpack.ExtType:
    """The wire form of a small pickled value (distributary's inline extension)."""
    return msgpack.ExtType(43, msgpack.packb([pickle.dumps(obj)], use_bin_type=True))


def test_nothing_a_peer_sends_is_unpickled_before_its_handshake_is_accepted(tmp_path, caplog):
    marker = str(tmp_path / "unpickled")

    async def main():
        accepted = []

        async def handle(comm):
            accepted.append(comm)

        listener = await listen("tcp://127.0.0.1:0", handle)
        host, port = listener.address[len("tcp://") :].rsplit(":", 1)
        try:
            for handshake in (
                {"distributary": PROTOCOL_VERSION, "x": _pickled_ext(Bomb(marker))},
                [_pickled_ext(Bomb(marker))],
            ):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(_frame(handshake))
                writer.write(_frame({"op": "x", "y": _pickled_ext(Bomb(marker))}))
                with contextlib.suppress(ConnectionResetError):  # its handshake, then EOF
                    await asyncio.wait_for(reader.read(), 5)
                writer.close()
            await apoll(lambda: "Malformed handshake" in caplog.text)
            assert accepted == []
        finally:
            await listener.close()

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert "plain data" in caplog.text
    assert not os.path.exists(marker)


def test_the_scheduler_does_not_unpickle_what_a_peer_sends_it(tmp_path):
    marker = str(tmp_path / "unpickled")

    async def main():
        async with (
            Scheduler() as s,
            Worker(s.address, nthreads=1),
            Client(s.address, asynchronous=True) as c,
        ):
            comm = await connect(s.address, timeout=5)
            for msg in (
                {"op": "who-has", "keys": [_pickled_ext(Bomb(marker))]},
                {"op": "identity", "extra": _pickled_ext(Bomb(marker))},
                {"op": "no-such-op", "x": _pickled_ext(Bomb(marker))},
            ):
                await comm.write(msg)
                await comm.read()
            await comm.close()
            assert await c.submit(inc, 1) == 2

    run(main())
    assert not os.path.exists(marker)
