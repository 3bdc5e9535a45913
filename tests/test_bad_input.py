"""Bad input gets a clear error and leaves the cluster working, with nothing else lost.

Every test runs against a real LocalCluster on TCP (127.0.0.1): the scheduler runs in
this process, and the two workers too (``cluster``) or in processes of their own under
nannies (``process_cluster``) where crossing a process boundary matters (unpicklable
results, a worker's port in another process). Before the bad input a
*baseline* is put on the cluster (a computed result and a scattered value); after it,
``assert_nothing_lost`` checks that the same workers are there, that the baseline's
data is still where it was, and that new work (including work depending on the
baseline) gets the right answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgpack
import psutil
import pytest

from distributary import Client, Future, LocalCluster, Nanny
from distributary.comm import PROTOCOL_VERSION, connect

N_WORKERS = 2


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def make_lock():
    return threading.Lock()


def type_name(x):
    return type(x).__name__


def poll(predicate: Callable[[], object], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or predicate}")
        time.sleep(0.01)


# ---------------------------------------------------------------------- fixtures


def _local_cluster(processes: bool) -> LocalCluster:
    return LocalCluster(
        n_workers=N_WORKERS,
        threads_per_worker=1,
        processes=processes,
        protocol="tcp",
        dashboard_address=None,
    )


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Scheduler and workers in this process, talking TCP."""
    with _local_cluster(processes=False) as cluster:
        yield cluster


@pytest.fixture
def process_cluster() -> Iterator[LocalCluster]:
    """Scheduler in this process, each worker in its own process under a Nanny."""
    with _local_cluster(processes=True) as cluster:
        yield cluster


@pytest.fixture
def client(cluster) -> Iterator[Client]:
    with Client(cluster, timeout=10) as client:
        yield client


@pytest.fixture
def process_client(process_cluster) -> Iterator[Client]:
    with Client(process_cluster, timeout=10) as client:
        yield client


@dataclass
class Baseline:
    workers: set
    computed: Future
    scattered: Future
    holders: dict


@pytest.fixture
def baseline(client) -> Baseline:
    """Work done before the bad input, which must survive it."""
    return _baseline(client)


@pytest.fixture
def process_baseline(process_client) -> Baseline:
    return _baseline(process_client)


def _baseline(client: Client) -> Baseline:
    workers = set(client.scheduler_info()["workers"])
    assert len(workers) == N_WORKERS
    computed = client.submit(inc, 1)
    scattered = client.scatter(100)
    assert computed.result(timeout=20) == 2
    holders = client.who_has([computed, scattered])
    return Baseline(workers, computed, scattered, holders)


def assert_nothing_lost(client: Client, baseline: Baseline, workers: list | None = None) -> None:
    """The cluster is as it was, and still computes correctly."""
    assert set(client.scheduler_info()["workers"]) >= baseline.workers
    holders = client.who_has([baseline.computed, baseline.scattered])
    for key, where in baseline.holders.items():  # (more replicas are fine)
        assert set(where) <= set(holders[key]), (key, where, holders[key])
    assert baseline.computed.result(timeout=20) == 2
    assert baseline.scattered.result(timeout=20) == 100
    opts = {"workers": workers} if workers else {}
    assert client.submit(inc, 41, pure=False, **opts).result(timeout=20) == 42
    assert (
        client.submit(add, baseline.computed, baseline.scattered, **opts).result(timeout=20) == 102
    )
    futures = client.map(inc, range(20), pure=False, **opts)
    assert client.gather(futures) == list(range(1, 21))


# ---------------------------------------------------------------------- submit and map


@pytest.mark.parametrize("func", [5, None, "inc", [inc]])
def test_submit_of_a_non_callable_raises_type_error_naming_it(client, baseline, func):
    with pytest.raises(TypeError, match="callable") as info:
        client.submit(func, 1)
    assert repr(func) in str(info.value)
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("func", [None, 5])
def test_map_of_a_non_callable_raises_type_error_naming_it(client, baseline, func):
    with pytest.raises(TypeError, match="callable") as info:
        client.map(func, [1])
    assert repr(func) in str(info.value)
    assert_nothing_lost(client, baseline)


class _RefusesPickling:
    def __reduce__(self):
        raise RuntimeError("no pickling for me")


def _generator():
    yield 1


def _unpicklables() -> list:
    return [
        pytest.param(threading.Lock, "lock", id="lock"),
        pytest.param(_generator, "generator", id="generator"),
        pytest.param(_RefusesPickling, "_RefusesPickling", id="reduce-raises"),
    ]


@pytest.mark.parametrize("make, name", _unpicklables())
@pytest.mark.parametrize(
    "how",
    [
        "positional",
        "keyword",
        "nested",
        "map",
    ],
)
def test_unpicklable_argument_raises_at_submit_naming_the_type(client, baseline, make, name, how):
    value = make()
    with pytest.raises(TypeError) as info:
        if how == "positional":
            client.submit(type_name, value)
        elif how == "keyword":
            client.submit(type_name, x=value)
        elif how == "nested":
            client.submit(type_name, [1, {"a": (2, value)}])
        else:
            client.map(type_name, [1, value])
    message = str(info.value)
    assert "serializ" in message.lower(), message
    assert name in message, message
    # nothing was sent: the scheduler has nothing but the baseline
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("make, name", [p for p in _unpicklables() if p.id != "generator"])
def test_unpicklable_scatter_raises_naming_the_type(client, baseline, make, name):
    """(A generator is an iterator: ``scatter`` sends its items, as dask.distributed does.)"""
    with pytest.raises(TypeError) as info:
        client.scatter(make())
    message = str(info.value)
    assert "serializ" in message.lower() and name in message, message
    assert_nothing_lost(client, baseline)


def test_function_closing_over_an_unpicklable_raises_at_submit(client, baseline):
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(TypeError, match="(?i)pickl|serializ") as info:
        client.submit(uses_lock, 1)
    assert "lock" in str(info.value)
    assert_nothing_lost(client, baseline)


# ---------------------------------------------------------------------- unpicklable results


def test_unpicklable_result_gives_a_serialization_error_in_the_client(
    process_client, process_baseline
):
    client, baseline = process_client, process_baseline
    future = client.submit(make_lock)
    with pytest.raises(Exception, match="(?i)serializ|pickl") as info:
        future.result(timeout=20)
    assert "lock" in str(info.value)
    # again, and through gather, together with a good result
    good = client.submit(inc, 10)
    with pytest.raises(Exception, match="(?i)serializ|pickl"):
        client.gather([good, future])
    assert client.gather([good]) == [11]
    assert_nothing_lost(client, baseline)


def test_unpicklable_result_needed_by_a_task_on_another_worker_fails_that_task(
    process_client, process_baseline
):
    """The dependent task cannot get its input: it fails with the serialization error
    rather than waiting forever; the workers stay up and later work runs."""
    client, baseline = process_client, process_baseline
    a, b = sorted(baseline.workers)
    lock = client.submit(make_lock, workers=[a])
    dependent = client.submit(type_name, lock, workers=[b])
    with pytest.raises(Exception, match="(?i)serializ|pickl") as info:
        dependent.result(timeout=20)
    assert "lock" in str(info.value)
    # a task on the same worker can use it (no serialization needed there)
    same_worker = client.submit(type_name, lock, workers=[a], pure=False)
    assert same_worker.result(timeout=20) == "lock"
    assert_nothing_lost(client, baseline)


# ---------------------------------------------------------------------- wrong arguments


def test_wrong_number_of_arguments_raises_the_original_type_error(client, baseline):
    with pytest.raises(TypeError, match=r"inc\(\) takes 1 positional argument but 2"):
        client.submit(inc, 1, 2).result(timeout=20)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'z'"):
        client.submit(inc, 1, z=3).result(timeout=20)
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'y'"):
        client.gather(client.map(add, [1, 2]))
    assert_nothing_lost(client, baseline)


def test_wrong_argument_type_raises_the_original_error(client, baseline):
    with pytest.raises(TypeError, match="can only concatenate str"):
        client.submit(add, "a", 1).result(timeout=20)
    assert_nothing_lost(client, baseline)


# ---------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1",
        "tcp://host:notaport",
        "tcp://127.0.0.1:99999",
        "tcp://:8786",
        "foo://x:1",
        "127.0.0.1",
        123,
        3.5,
    ],
)
def test_malformed_address_raises_value_error_naming_it(address):
    with pytest.raises(ValueError) as info:
        Client(address, timeout=1)
    assert repr(address) in str(info.value) or str(address) in str(info.value)


def test_malformed_address_in_asynchronous_client_raises_value_error():
    async def main() -> None:
        with pytest.raises(ValueError, match="notaport"):
            await Client("tcp://127.0.0.1:notaport", asynchronous=True, timeout=1)

    asyncio.run(main())


@contextlib.contextmanager
def _unused_port() -> Iterator[int]:
    """A port bound (so nobody else takes it) but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def _silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel does) but never says anything."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("where", [_unused_port, _silent_listener], ids=["refused", "silent"])
def test_client_to_an_address_where_no_scheduler_answers_times_out(where):
    with where() as port:
        address = f"tcp://127.0.0.1:{port}"
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            Client(address, timeout=1)
        elapsed = time.monotonic() - start
    assert elapsed < 1 + 2, elapsed
    assert address in str(info.value), str(info.value)


def test_asynchronous_client_to_an_address_where_nothing_listens_times_out():
    async def main() -> float:
        with _unused_port() as port:
            start = time.monotonic()
            with pytest.raises(OSError, match=str(port)):
                await Client(f"tcp://127.0.0.1:{port}", asynchronous=True, timeout=1)
            return time.monotonic() - start

    assert asyncio.run(main()) < 3


# ---------------------------------------------------------------------- closed clients


def test_closed_client_raises_a_clear_error(cluster):
    client = Client(cluster, timeout=10)
    done = client.submit(inc, 1)
    assert done.result(timeout=20) == 2
    client.close()
    calls = {
        "submit": lambda: client.submit(inc, 2),
        "map": lambda: client.map(inc, [1, 2]),
        "gather": lambda: client.gather([done]),
        "scatter": lambda: client.scatter(1),
        "result": lambda: done.result(timeout=5),
    }
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(Exception, match="(?i)closed") as info:
            call()
        assert time.monotonic() - start < 5, name
        assert not isinstance(info.value, AttributeError), (name, info.value)
    client.close()  # closing again is fine
    assert client.status == "closed"
    with Client(cluster, timeout=10) as other:
        assert other.submit(inc, 41).result(timeout=20) == 42


def test_closed_asynchronous_client_raises_a_clear_error(cluster):
    async def main() -> None:
        client = await Client(cluster.scheduler_address, asynchronous=True, timeout=10)
        assert await client.submit(inc, 1) == 2
        await client.close()
        with pytest.raises(Exception, match="(?i)closed"):
            client.submit(inc, 2)
        await client.close()

    asyncio.run(main())


# ---------------------------------------------------------------------- raw sockets

_U64 = struct.Struct("<Q")


def _frames(*frames: bytes) -> bytes:
    return struct.pack(f"<{len(frames) + 1}Q", len(frames), *map(len, frames)) + b"".join(frames)


def _message(msg: object) -> bytes:
    return _frames(msgpack.packb(msg, use_bin_type=True))


class RawPeer:
    """A plain socket speaking (or not) distributary's wire format."""

    def __init__(self, address: str):
        host, port = address[len("tcp://") :].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buf = b""

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data

    def read(self) -> object:
        """Read one message (its first frame, msgpack-decoded)."""
        self._need(8)
        (n,) = _U64.unpack_from(self.buf)
        self._need(8 + 8 * n)
        lengths = struct.unpack_from(f"<{n}Q", self.buf, 8)
        start = 8 + 8 * n
        self._need(start + sum(lengths))
        first = self.buf[start : start + lengths[0]]
        self.buf = self.buf[start + sum(lengths) :]
        return msgpack.unpackb(first, strict_map_key=False)

    def handshake(self, version: object = PROTOCOL_VERSION) -> None:
        theirs = self.read()
        assert theirs["distributary"] == PROTOCOL_VERSION
        self.send(_message({"distributary": version}))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, msg: dict) -> object:
        self.send(_message(msg))
        return self.read()

    def closed_by_peer(self, timeout: float = 10) -> bool:
        """Whether the server closes the connection within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_peer(address: str) -> Iterator[RawPeer]:
    peer = RawPeer(address)
    try:
        yield peer
    finally:
        peer.close()


def _target(cluster: LocalCluster, client: Client, which: str) -> tuple[str, int]:
    """The address and the pid of the scheduler or of a worker."""
    if which == "scheduler":
        return cluster.scheduler_address, os.getpid()
    node = next(iter(cluster.workers.values()))
    if isinstance(node, Nanny):
        return node.worker_address, node.process.pid
    return node.address, os.getpid()


def _server_side_open(pid: int, server_port: int, peer_port: int) -> bool:
    """Whether process ``pid`` still has its end of the connection from ``peer_port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.laddr.port == server_port and c.raddr and c.raddr.port == peer_port for c in conns)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


_DROPPED = {
    "garbage": (False, b"\xff" * 64),
    "garbage-after-handshake": (True, b"\xff" * 64),
    "huge-frame": (True, struct.pack("<QQ", 1, 2**40)),
    "huge-frame-before-handshake": (False, struct.pack("<QQ", 1, 2**40)),
    "too-many-frames": (True, _U64.pack(10**9)),
    "zero-frames": (True, _U64.pack(0)),
    "invalid-msgpack": (True, _frames(b"\xc1\xc1\xc1")),
    "unknown-msgpack-extension": (True, _frames(msgpack.packb(msgpack.ExtType(7, b"x")))),
    "serialized-value-pointing-past-frames": (
        True,
        _frames(
            msgpack.packb({"op": "identity", "x": msgpack.ExtType(42, struct.pack("<II", 5, 1))})
        ),
    ),
}

# What the scheduler logs when it drops each of them.
_LOGGED = {
    "garbage": "frames",
    "garbage-after-handshake": "frames",
    "huge-frame": "max-message-size",
    "huge-frame-before-handshake": "max-message-size",
    "too-many-frames": "frames",
    "zero-frames": "frames",
    "invalid-msgpack": "Malformed",
    "unknown-msgpack-extension": "Malformed",
    "serialized-value-pointing-past-frames": "Malformed",
}


@pytest.mark.parametrize("which", ["scheduler", "worker"])
@pytest.mark.parametrize("case", list(_DROPPED))
def test_malformed_bytes_drop_the_connection_and_the_server_goes_on(
    cluster, client, baseline, caplog, which, case
):
    handshake, payload = _DROPPED[case]
    address, pid = _target(cluster, client, which)
    with caplog.at_level(logging.WARNING, logger="distributary"):
        with raw_peer(address) as peer:
            if handshake:
                peer.handshake()
            peer.send(payload)
            assert peer.closed_by_peer(), f"{which} kept a connection that sent {case}"
            poll(lambda: not _server_side_open(pid, _port(address), peer.port))
        poll(lambda: _LOGGED[case] in caplog.text, what=f"a log line about {case}")
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize(
    "case", ["garbage", "huge-frame", "invalid-msgpack", "truncated", "not-an-operation"]
)
def test_bad_bytes_to_a_worker_in_its_own_process(
    process_cluster, process_client, process_baseline, case
):
    address, pid = _target(process_cluster, process_client, "worker")
    assert pid != os.getpid()
    with raw_peer(address) as peer:
        port = peer.port
        if case == "truncated":
            peer.handshake()
            peer.send(_message({"op": "identity"})[:-2])
        elif case == "not-an-operation":
            peer.handshake()
            reply = peer.call([1, 2])
            assert reply["status"] == "error" and "dict" in reply["exception_text"], reply
            assert peer.call({"op": "identity"})["address"] == address
        else:
            handshake, payload = _DROPPED[case]
            if handshake:
                peer.handshake()
            peer.send(payload)
            assert peer.closed_by_peer()
    poll(lambda: not _server_side_open(pid, _port(address), port), what="connection freed")
    assert_nothing_lost(process_client, process_baseline)


@pytest.mark.parametrize("which", ["scheduler", "worker"])
@pytest.mark.parametrize(
    "version", [PROTOCOL_VERSION + 1, None, "1"], ids=["newer", "none", "string"]
)
def test_handshake_with_a_wrong_version_is_rejected(
    cluster, client, baseline, caplog, which, version
):
    address, pid = _target(cluster, client, which)
    with caplog.at_level(logging.WARNING, logger="distributary"), raw_peer(address) as peer:
        peer.handshake(version)
        assert peer.closed_by_peer()
        poll(lambda: "version" in caplog.text, what="a log line about the version")
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("which", ["scheduler", "worker"])
def test_handshake_that_is_not_a_dict_is_rejected(cluster, client, baseline, which):
    address, _ = _target(cluster, client, which)
    with raw_peer(address) as peer:
        peer.read()
        peer.send(_message([1, 2, 3]))
        assert peer.closed_by_peer()
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("which", ["scheduler", "worker"])
@pytest.mark.parametrize("cut", [4, 8, 12, 20, -1], ids=lambda c: f"cut-at-{c}")
def test_message_truncated_mid_frame_then_closed(cluster, client, baseline, which, cut):
    """Half a message, then the peer goes away: the server frees that connection."""
    address, pid = _target(cluster, client, which)
    whole = _message({"op": "identity", "padding": "x" * 100})
    with raw_peer(address) as peer:
        peer.handshake()
        peer.send(whole[:cut])
        # the server waits for the rest: the connection is still there ...
        assert _server_side_open(pid, _port(address), peer.port)
        port = peer.port
    # ... until the peer closes it
    poll(lambda: not _server_side_open(pid, _port(address), port), what="connection freed")
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("which", ["scheduler", "worker"])
@pytest.mark.parametrize(
    "msg, expected",
    [
        ([1, 2, 3], "dict"),
        ("identity", "dict"),
        (42, "dict"),
        ({"op": "no-such-operation"}, "no-such-operation"),
        ({"op": 17}, "17"),
        ({"no-op": True}, "None"),
    ],
    ids=["list", "string", "int", "unknown-op", "op-not-a-string", "no-op"],
)
def test_message_that_is_not_an_operation_gets_an_error_reply(
    cluster, client, baseline, which, msg, expected
):
    """A well-formed message that names no known operation is answered with an error
    naming the problem; the connection can still be used, and the server goes on."""
    address, _ = _target(cluster, client, which)
    with raw_peer(address) as peer:
        peer.handshake()
        reply = peer.call(msg)
        assert isinstance(reply, dict) and reply["status"] == "error", reply
        assert expected in reply["exception_text"], reply
        identity = peer.call({"op": "identity"})
        assert identity["address"] == address
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize("which", ["scheduler", "worker"])
def test_known_operation_with_missing_or_wrong_fields_gets_an_error_reply(
    cluster, client, baseline, which
):
    address, _ = _target(cluster, client, which)
    bad = (
        [{"op": "who-has"}, {"op": "who-has", "keys": 5}, {"op": "story", "keys": None}]
        if which == "scheduler"
        else [{"op": "get-data"}, {"op": "get-data", "keys": 5}, {"op": "update-data"}]
    )
    with raw_peer(address) as peer:
        peer.handshake()
        for msg in bad:
            reply = peer.call(msg)
            assert isinstance(reply, dict) and reply["status"] == "error", (msg, reply)
        assert peer.call({"op": "identity"})["address"] == address
    assert_nothing_lost(client, baseline)


def test_many_bad_connections_at_once_do_not_disturb_the_scheduler(cluster, client, baseline):
    address = cluster.scheduler_address
    peers = [RawPeer(address) for _ in range(20)]
    try:
        for i, peer in enumerate(peers):
            if i % 2:
                peer.handshake()
            peer.send(b"\xff" * 32)
        assert all(peer.closed_by_peer() for peer in peers)
    finally:
        for peer in peers:
            peer.close()
    assert_nothing_lost(client, baseline)


# ---------------------------------------------------------------------- a misbehaving worker


class FakeWorker:
    """A 'worker' that registers with the scheduler and then says odd things."""

    def __init__(self, comm, address: str):
        self.comm = comm
        self.address = address

    @classmethod
    async def register(cls, scheduler: str, address: str) -> FakeWorker:
        comm = await connect(scheduler, timeout=10)
        await comm.write(
            {
                "op": "register-worker",
                "reply": False,
                "address": address,
                "nthreads": 1,
                "name": "fake-worker",
                "memory_limit": 0,
                "resources": {},
                "nanny": None,
            }
        )
        reply = await asyncio.wait_for(comm.read(), 10)
        assert reply["status"] == "OK", reply
        return cls(comm, address)

    async def send(self, msgs: object) -> None:
        await self.comm.write(msgs)

    async def next_message(self, op: str, timeout: float = 20) -> dict:
        """The next message with this op from the scheduler."""

        async def find() -> dict:
            while True:
                batch = await self.comm.read()
                for msg in (batch,) if isinstance(batch, dict) else batch:
                    if msg.get("op") == op:
                        return msg

        return await asyncio.wait_for(find(), timeout)


_MALFORMED_STREAM = [
    [{"op": "task-finished"}],
    [{"op": "task-finished", "key": "x", "stimulus_id": "s"}],
    [{"op": "task-erred", "key": "x"}],
    [{"op": "missing-data", "stimulus_id": "s"}],
    [{"op": "add-keys", "stimulus_id": "s", "keys": 5}],
    [{"op": "no-such-op", "stimulus_id": "s"}],
    [{"no-op": 1}],
    [1, "two", None, [3]],
    [{"op": "task-finished", "stimulus_id": "s", "key": {"k": 1}, "run_id": 1, "nbytes": 1}],
    [{"op": "task-finished", "stimulus_id": "s", "key": "never-heard", "run_id": 1, "nbytes": 1}],
    [{"op": "worker-status-change", "stimulus_id": "s", "status": "no-such-status"}],
    "not a batch",
    42,
    None,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scheduler_call(cluster: LocalCluster, fn: Callable[[], object]) -> object:
    """Run ``fn`` on the scheduler's event loop (to look at its state safely)."""

    async def run() -> object:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), cluster.loop).result(10)


def test_malformed_stream_messages_from_a_worker_are_ignored(cluster, client, baseline):
    real_workers = sorted(baseline.workers)
    fake_address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = cluster.scheduler

    async def main() -> None:
        fake = await FakeWorker.register(cluster.scheduler_address, fake_address)
        try:
            await asyncio.to_thread(
                poll, lambda: fake_address in client.scheduler_info()["workers"]
            )
            for msgs in _MALFORMED_STREAM:
                await fake.send(msgs)
            # still registered: the stream was not dropped, the messages were ignored
            await fake.send({"op": "task-finished", "stimulus_id": "s"})
            await asyncio.sleep(0)
            await asyncio.to_thread(assert_nothing_lost, client, baseline, real_workers)
            assert fake_address in client.scheduler_info()["workers"]
            _scheduler_call(cluster, scheduler.state.validate)
        finally:
            await fake.comm.close()
        await asyncio.to_thread(
            poll, lambda: fake_address not in client.scheduler_info()["workers"]
        )

    asyncio.run(asyncio.wait_for(main(), 45))
    _scheduler_call(cluster, scheduler.state.validate)
    assert_nothing_lost(client, baseline)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"run_id": None},
        {"nbytes": "lots"},
        {"nbytes": None},
        {"duration": "slow"},
        {"type": ["not", "a", "str"]},
        {"run_id": "1"},
    ],
    ids=[
        "missing-nbytes",
        "run-id-none",
        "nbytes-str",
        "nbytes-none",
        "duration-str",
        "type-list",
        "run-id-str",
    ],
)
def test_malformed_task_finished_for_a_task_it_runs_is_ignored(cluster, client, baseline, fields):
    """The scheduler sends the fake worker a task, which answers with a broken
    ``task-finished``: the task stays pending (the report is ignored), and when the fake
    worker goes away the task runs elsewhere and gives the right answer."""
    fake_address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = cluster.scheduler

    async def main() -> None:
        fake = await FakeWorker.register(cluster.scheduler_address, fake_address)
        try:
            await asyncio.to_thread(
                poll, lambda: fake_address in client.scheduler_info()["workers"]
            )
            future = client.submit(inc, 1000, workers=[fake_address], allow_other_workers=True)
            task = await fake.next_message("compute-task")
            assert task["key"] == future.key
            msg = {
                "op": "task-finished",
                "stimulus_id": "fake",
                "key": task["key"],
                "run_id": task["run_id"],
                "nbytes": 8,
                "type": "int",
            }
            msg.update(fields)
            if not fields:
                del msg["nbytes"]
            await fake.send([msg])
            # a round trip through the fake's own stream orders us after that message
            await fake.send([{"op": "no-such-op"}])
            await asyncio.to_thread(assert_nothing_lost, client, baseline, sorted(baseline.workers))
            assert future.status == "pending"
            assert fake_address in client.scheduler_info()["workers"]
            _scheduler_call(cluster, scheduler.state.validate)
        finally:
            await fake.comm.close()
        # the fake is gone: its task runs on a real worker
        assert await asyncio.to_thread(future.result, 20) == 1001

    asyncio.run(asyncio.wait_for(main(), 45))
    _scheduler_call(cluster, scheduler.state.validate)
    assert_nothing_lost(client, baseline)


# ---------------------------------------------------------------------- a misbehaving client


class FakeClient:
    """A 'client' that registers with the scheduler and then sends odd stream messages."""

    def __init__(self, comm):
        self.comm = comm

    @classmethod
    async def register(cls, scheduler: str, name: str) -> FakeClient:
        comm = await connect(scheduler, timeout=10)
        await comm.write({"op": "register-client", "client": name, "reply": False})
        reply = await asyncio.wait_for(comm.read(), 10)
        assert reply["status"] == "OK", reply
        return cls(comm)


def _task(key: object, **fields: object) -> dict:
    from distributary.protocol.tasks import dumps_task

    payload, _ = dumps_task(inc, (1,), {})
    return {"key": key, "payload": payload, **fields}


def _graph(*tasks: dict, wanted: object = None) -> dict:
    if wanted is None:
        wanted = [t["key"] for t in tasks]
    return {"op": "update-graph", "stimulus_id": "fake", "tasks": list(tasks), "wanted": wanted}


_MALFORMED_CLIENT_STREAM = [
    {"op": "update-graph", "stimulus_id": "s"},
    {"op": "update-graph", "stimulus_id": "s", "tasks": 5},
    _graph(_task({"a": 1}), wanted=[]),
    _graph(_task("bad-priority-str", priority="high")),
    _graph(_task("bad-priority-mixed", priority=[1, "a"])),
    _graph(_task("bad-dependencies", dependencies=[{"a": 1}])),
    _graph(_task("bad-workers", workers="abc")),
    _graph(_task("bad-resources", resources={"GPU": "x"})),
    _graph(_task("bad-retries", retries="many")),
    _graph(_task("ok"), wanted=[{"a": 1}]),
    {"op": "client-releases-keys", "stimulus_id": "s", "keys": [{"a": 1}]},
    {"op": "client-desires-keys", "stimulus_id": "s", "keys": 5},
    {"op": "cancel-keys", "stimulus_id": "s", "keys": 5},
    {"op": "retry-keys", "stimulus_id": "s", "keys": [[1, {}]]},
    {"op": "no-such-op"},
    "not a batch",
    7,
]


def test_malformed_stream_messages_from_a_client_are_ignored(cluster, client, baseline, caplog):
    scheduler = cluster.scheduler

    worker = sorted(baseline.workers)[0]
    scatters = [
        {"op": "scatter-data", "stimulus_id": "s", "who_has": "abc", "nbytes": {}},
        {
            "op": "scatter-data",
            "stimulus_id": "s",
            "who_has": {"sc": [worker]},
            "nbytes": {"sc": "big"},
        },
        {"op": "scatter-data", "stimulus_id": "s", "who_has": {"sc": [5]}, "nbytes": {"sc": 1}},
        {"op": "scatter-data", "stimulus_id": "s", "who_has": {"sc": worker}, "nbytes": {"sc": 1}},
    ]

    async def in_memory(fake: FakeClient, key: str) -> None:
        while True:
            batch = await fake.comm.read()
            for msg in (batch,) if isinstance(batch, dict) else batch:
                if msg.get("op") == "key-in-memory" and msg.get("key") == key:
                    return

    async def main() -> None:
        fake = await FakeClient.register(cluster.scheduler_address, "fake-client")
        try:
            for msg in _MALFORMED_CLIENT_STREAM + scatters:
                await fake.comm.write([msg])
            # a well-formed message after them still works on that same stream
            await fake.comm.write([_graph(_task("fine-after-all"))])
            await asyncio.wait_for(in_memory(fake, "fine-after-all"), 20)
            assert not fake.comm.closed()
        finally:
            await fake.comm.close()

    with caplog.at_level(logging.WARNING, logger="distributary"):
        asyncio.run(asyncio.wait_for(main(), 45))
    assert "Malformed 'update-graph'" in caplog.text
    assert "Malformed 'scatter-data'" in caplog.text
    for key in ("bad-priority-str", "bad-priority-mixed", "bad-dependencies", "bad-workers", "sc"):
        assert key not in _scheduler_call(cluster, lambda: set(scheduler.tasks))
    _scheduler_call(cluster, scheduler.state.validate)
    assert_nothing_lost(client, baseline)


HOLD = threading.Event()


def held(x):
    """Occupies a worker thread until the test lets go (or 20 s pass)."""
    HOLD.wait(20)
    return x


def test_bad_priority_from_one_client_does_not_hurt_another(cluster, client, baseline):
    """A task whose priority cannot be compared with the others' must not reach the
    scheduler's queue, where it would break the next client's submission."""
    HOLD.clear()
    try:
        busy = client.map(held, range(10))  # more than the workers take: some are queued
        poll(
            lambda: (
                "queued"
                in _scheduler_call(
                    cluster, lambda: {ts.state for ts in cluster.scheduler.tasks.values()}
                )
            ),
            what="tasks queued",
        )

        async def fake() -> None:
            fake = await FakeClient.register(cluster.scheduler_address, "fake-client")
            await fake.comm.write([_graph(_task("poison", priority=["high"]))])
            await fake.comm.write([_graph(_task("poison-2", priority=[None]))])
            await fake.comm.close()

        asyncio.run(asyncio.wait_for(fake(), 20))
        more = client.map(held, range(100, 105))
    finally:
        HOLD.set()
    assert client.gather(busy + more) == [*range(10), *range(100, 105)]
    assert client.status == "running"
    _scheduler_call(cluster, cluster.scheduler.state.validate)
    assert_nothing_lost(client, baseline)
