"""Tests for distributary.comm: addresses, TCP and inproc comms, handshakes, framing limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator

import dask.config
import msgpack
import numpy as np
import pytest
from conftest import apoll, run

from distributary.comm import (
    PROTOCOL_VERSION,
    Comm,
    CommClosedError,
    HandshakeError,
    Listener,
    connect,
    get_address_host,
    get_address_host_port,
    listen,
    normalize_address,
    parse_address,
    unparse_address,
)
from distributary.protocol import Serialize, deserialize


@contextlib.asynccontextmanager
async def echo_listener(
    addr: str = "tcp://127.0.0.1:0", **info
) -> AsyncIterator[tuple[Listener, list[Comm]]]:
    """A listener that echoes every message; yields it and the comms it accepted."""
    accepted: list[Comm] = []

    async def handle(comm: Comm) -> None:
        accepted.append(comm)
        while True:
            try:
                msg = await comm.read()
                await comm.write(msg)
            except CommClosedError:
                return

    listener = await listen(addr, handle, **info)
    try:
        yield listener, accepted
    finally:
        await listener.close()
        for comm in accepted:
            comm.abort()


def free_port() -> int:
    """A port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frame_message(msg: object) -> bytes:
    """The bytes of a one-frame message, as the TCP transport writes them."""
    data = msgpack.packb(msg, use_bin_type=True)
    return struct.pack("<QQ", 1, len(data)) + data


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


# --- addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr, expected",
    [
        ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("TCP://myhost:1", "tcp://myhost:1"),
        (("10.0.0.1", 0), "tcp://10.0.0.1:0"),
        ("tcp://[::1]:8786", "tcp://[::1]:8786"),
        (("::1", 80), "tcp://[::1]:80"),
        ("inproc://127.0.0.1/12/3", "inproc://127.0.0.1/12/3"),
        ("inproc", "inproc://"),
        ("inproc://", "inproc://"),
    ],
)
def test_normalize_address(addr, expected):
    assert normalize_address(addr) == expected


@pytest.mark.parametrize(
    "addr",
    [
        "tcp://127.0.0.1",
        "127.0.0.1",
        "tcp://127.0.0.1:http",
        "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:-1",
        "tcp://:8786",
        "tcp://::1:8786",
        "tcp://[::1]8786",
        "udp://127.0.0.1:8786",
        ("127.0.0.1",),
        ("127.0.0.1", True),
        8786,
        None,
    ],
)
def test_normalize_address_rejects_malformed(addr):
    with pytest.raises(ValueError) as info:
        normalize_address(addr)
    assert repr(addr) in str(info.value)


def test_tls_addresses_are_host_and_port_like_tcp():
    # (TLS itself is tested in tests/test_tls.py)
    assert normalize_address("TLS://127.0.0.1:8786") == "tls://127.0.0.1:8786"
    assert normalize_address("tls://[::1]:8786") == "tls://[::1]:8786"
    assert get_address_host_port("tls://10.0.0.1:5") == ("10.0.0.1", 5)
    with pytest.raises(ValueError, match="tls://127.0.0.1"):
        normalize_address("tls://127.0.0.1")


def test_address_helpers():
    assert parse_address("tcp://1.2.3.4:5") == ("tcp", "1.2.3.4:5")
    assert parse_address("1.2.3.4:5") == ("tcp", "1.2.3.4:5")
    assert parse_address("inproc://a/1/2") == ("inproc", "a/1/2")
    assert unparse_address("tcp", "1.2.3.4:5") == "tcp://1.2.3.4:5"
    assert get_address_host("tcp://1.2.3.4:5") == "1.2.3.4"
    assert get_address_host("tcp://[::1]:5") == "::1"
    assert get_address_host("inproc://10.1.1.1/1/2") == "10.1.1.1"
    assert get_address_host_port("tcp://1.2.3.4:5") == ("1.2.3.4", 5)
    assert get_address_host_port(("1.2.3.4", 5)) == ("1.2.3.4", 5)
    with pytest.raises(ValueError):
        get_address_host_port("inproc://a/1/2")


# --- TCP --------------------------------------------------------------------------


def test_tcp_roundtrip_addresses_and_handshake():
    async def main():
        async with echo_listener(role="server") as (listener, accepted):
            host, port = get_address_host_port(listener.address)
            assert host == "127.0.0.1" and port != 0
            comm = await connect(listener.address, role="client")
            try:
                assert comm.peer_address == listener.address
                assert comm.peer_info == {"role": "server", "distributary": PROTOCOL_VERSION}
                assert await comm.write({"op": "ping", "key": ("x", 1)}) > 0
                assert await comm.read() == {"op": "ping", "key": ("x", 1)}
                assert accepted[0].peer_info["role"] == "client"
                assert accepted[0].peer_address == comm.local_address
                assert accepted[0].local_address == listener.address
            finally:
                await comm.close()
            assert comm.closed()

    run(main())


def test_tcp_many_small_messages_in_order():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                n = 5000
                for i in range(n):
                    await comm.write({"i": i, "pad": "x" * (i % 300)})
                for i in range(n):
                    assert (await comm.read())["i"] == i
            finally:
                await comm.close()

    run(main())


def test_tcp_frames_of_many_sizes():
    sizes = [0, 1, 65_535, 65_536, 65_537, 200_001, 3_000_001]

    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                arrays = [np.arange(n, dtype="u1") for n in sizes]
                await comm.write({"arrays": [Serialize(a) for a in arrays]})
                for size in sizes:  # and one message per size, back to back
                    await comm.write({"one": Serialize(np.full(size, 7, dtype="u1"))})
                got = [deserialize(a) for a in (await comm.read())["arrays"]]
                for a, b in zip(arrays, got):
                    assert (a == b).all() and a.dtype == b.dtype
                for size in sizes:
                    one = deserialize((await comm.read())["one"])
                    assert one.shape == (size,) and (one == 7).all()
            finally:
                await comm.close()

    run(main())


def test_tcp_64mib_numpy_roundtrip():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                x = np.arange(8 * 1024 * 1024, dtype="f8")  # 64 MiB
                x[::4097] = np.random.random(len(x[::4097]))
                nbytes = await comm.write({"x": Serialize(x), "tag": "big"})
                assert nbytes > x.nbytes
                msg = await comm.read()
                y = deserialize(msg["x"])
                assert msg["tag"] == "big"
                assert y.dtype == x.dtype and y.shape == x.shape
                assert np.array_equal(x, y)
                assert y.flags.writeable
            finally:
                await comm.close()

    run(main())


def test_tcp_concurrent_writers_do_not_interleave():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                big = np.arange(2 * 1024 * 1024, dtype="f8")

                async def writer(tag: str, payload: object, n: int) -> None:
                    for i in range(n):
                        await comm.write({"tag": tag, "i": i, "x": Serialize(payload)})

                await asyncio.gather(writer("big", big, 5), writer("small", [1, 2], 200))
                seen = {"big": [], "small": []}
                for _ in range(205):
                    msg = await comm.read()
                    seen[msg["tag"]].append(msg["i"])
                    if msg["tag"] == "big":
                        assert np.array_equal(deserialize(msg["x"]), big)
                assert seen == {"big": list(range(5)), "small": list(range(200))}
            finally:
                await comm.close()

    run(main())


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "inproc://"])
def test_peer_close_delivers_pending_messages_then_raises(address):
    async def main():
        received: list = []
        done = asyncio.Event()

        async def handle(comm: Comm) -> None:
            try:
                while True:
                    received.append(await comm.read())
            except CommClosedError:
                done.set()

        listener = await listen(address, handle)
        try:
            comm = await connect(listener.address)
            for i in range(3):
                await comm.write(i)
            await comm.close()
            await asyncio.wait_for(done.wait(), 5)
            assert received == [0, 1, 2]
            with pytest.raises(CommClosedError):
                await comm.write("more")
            with pytest.raises(CommClosedError):
                await comm.read()
        finally:
            await listener.close()

    run(main())


def test_tcp_abort_wakes_pending_read():
    async def main():
        async with echo_listener() as (listener, accepted):
            comm = await connect(listener.address)
            reader = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0)
            comm.abort()
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(reader, 5)
            await apoll(lambda: accepted and accepted[0].closed())

    run(main())


def test_tcp_cancelled_read_loses_nothing():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(comm.read(), 0.05)
                await comm.write("hello")
                assert await comm.read() == "hello"
            finally:
                await comm.close()

    run(main())


def test_tcp_unencodable_message_leaves_comm_usable():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                with pytest.raises(TypeError):
                    await comm.write({"x": {1, 2}})
                await comm.write({"x": [1, 2]})
                assert await comm.read() == {"x": (1, 2)}
            finally:
                await comm.close()

    run(main())


def test_connect_to_closed_port_times_out_promptly():
    async def main():
        addr = f"tcp://127.0.0.1:{free_port()}"
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await connect(addr, timeout=0.5)
        assert time.monotonic() - start < 1.5
        assert isinstance(info.value, OSError)
        assert addr in str(info.value)

    run(main())


def test_connect_timeout_defaults_to_config():
    async def main():
        with dask.config.set({"distributed.comm.timeouts.connect": "300ms"}):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await connect(f"127.0.0.1:{free_port()}")
            assert time.monotonic() - start < 1.3

    run(main())


@contextlib.asynccontextmanager
async def raw_server(reply: bytes | None) -> AsyncIterator[str]:
    """A plain TCP server that sends ``reply`` (if any) to each client and then idles."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if reply is not None:
            writer.write(reply)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()


def test_connect_handshake_timeout():
    async def main():
        async with raw_server(reply=None) as addr:
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="Timed out trying to connect"):
                await connect(addr, timeout=0.5)
            assert time.monotonic() - start < 1.5

    run(main())


def test_connect_handshake_version_mismatch():
    async def main():
        async with raw_server(reply=frame_message({"distributary": 999})) as addr:
            with pytest.raises(HandshakeError, match="version"):
                await connect(addr, timeout=5)
        assert issubclass(HandshakeError, CommClosedError)

    run(main())


def test_tcp_write_interrupted_mid_message_aborts_comm():
    async def main():
        # a peer that completes the handshake and then never reads
        async with raw_server(reply=frame_message({"distributary": PROTOCOL_VERSION})) as addr:
            comm = await connect(addr, timeout=5)
            x = np.zeros(64 * 1024 * 1024, dtype="u1")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(comm.write({"x": Serialize(x)}), 0.2)
            assert comm.closed()  # half a message went out: the stream is unusable
            with pytest.raises(CommClosedError):
                await comm.write("more")

    run(main())


async def raw_client(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = get_address_host_port(addr)
    return await asyncio.open_connection(host, port)


def test_listener_rejects_handshake_version_mismatch(caplog):
    async def main():
        async with echo_listener() as (listener, accepted):
            reader, writer = await raw_client(listener.address)
            try:
                writer.write(frame_message({"distributary": PROTOCOL_VERSION + 1}))
                await read_to_eof(reader)  # the listener's handshake, then EOF
                assert accepted == []
            finally:
                writer.close()

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert "version mismatch" in caplog.text


@pytest.mark.parametrize(
    "garbage, log",
    [
        (struct.pack("<QQ", 1, 3) + b"\xc1\xc1\xc1", "Malformed message"),
        (struct.pack("<Q", 0), "0 frames"),
        (struct.pack("<Q", 100_001), "100001 frames"),
        (struct.pack("<QQ", 1, 2**60), "max-message-size"),
        (struct.pack("<QQQ", 2, 2**62, 2**62), "max-message-size"),
    ],
)
def test_bad_frames_close_the_connection(garbage, log, caplog):
    async def main():
        async with echo_listener() as (listener, accepted):
            reader, writer = await raw_client(listener.address)
            try:
                writer.write(frame_message({"distributary": PROTOCOL_VERSION}))
                writer.write(garbage)
                await read_to_eof(reader)
                await apoll(lambda: accepted and accepted[0].closed())
            finally:
                writer.close()
            # the listener is unharmed
            comm = await connect(listener.address)
            await comm.write("still there")
            assert await comm.read() == "still there"
            await comm.close()

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert log in caplog.text


def test_max_message_size_is_configurable():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                await comm.write({"x": Serialize(np.zeros(2**19, dtype="u1"))})  # fits
                assert deserialize((await comm.read())["x"]).nbytes == 2**19
                await comm.write({"x": Serialize(np.zeros(2**21, dtype="u1"))})  # too big
                with pytest.raises(CommClosedError):
                    await comm.read()
            finally:
                comm.abort()

    with dask.config.set({"distributed.comm.max-message-size": "1 MiB"}):
        run(main())


def test_handle_comm_errors_are_logged_and_listener_survives(caplog):
    async def main():
        calls = []

        async def handle(comm: Comm) -> None:
            calls.append(comm)
            raise RuntimeError("handler exploded")

        listener = await listen("tcp://127.0.0.1:0", handle)
        try:
            for _ in range(2):
                comm = await connect(listener.address)
                comm.abort()
            await apoll(lambda: len(calls) == 2)
        finally:
            await listener.close()

    with caplog.at_level(logging.ERROR, logger="distributary.comm"):
        run(main())
    failures = [r for r in caplog.records if r.exc_info and "exploded" in str(r.exc_info[1])]
    assert len(failures) == 2


def test_listener_stop_refuses_new_connections():
    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            listener.stop()
            listener.stop()
            with pytest.raises(OSError):
                await connect(listener.address, timeout=0.3)
            await comm.write("open comms keep working")
            assert await comm.read() == "open comms keep working"
            await comm.close()

    run(main())


def test_listen_on_all_interfaces():
    async def main():
        async with echo_listener("tcp://0.0.0.0:0") as (listener, _):
            host, port = get_address_host_port(listener.address)
            assert host != "0.0.0.0" and port != 0
            comm = await connect(f"tcp://127.0.0.1:{port}")
            await comm.write(1)
            assert await comm.read() == 1
            await comm.close()

    run(main())


def test_tcp_under_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        async with echo_listener() as (listener, _):
            comm = await connect(listener.address)
            try:
                x = np.arange(1_000_000, dtype="i8")
                await comm.write({"x": Serialize(x), "k": ("a", 1)})
                msg = await comm.read()
                assert msg["k"] == ("a", 1)
                assert np.array_equal(deserialize(msg["x"]), x)
            finally:
                await comm.close()

    uvloop.run(asyncio.wait_for(main(), 30))


# --- inproc -----------------------------------------------------------------------


def test_inproc_passes_messages_by_reference():
    async def main():
        async with echo_listener("inproc://", role="server") as (listener, accepted):
            assert listener.address.startswith("inproc://")
            comm = await connect(listener.address, role="client")
            try:
                msg = {"data": [1, 2, 3], "obj": object()}
                assert await comm.write(msg) == 0
                assert await comm.read() is msg
                assert comm.peer_info["role"] == "server"
                assert accepted[0].peer_info["role"] == "client"
                assert accepted[0].peer_address == comm.local_address
            finally:
                await comm.close()
            await apoll(lambda: accepted[0].closed())
            with pytest.raises(CommClosedError):
                await comm.write("x")

    run(main())


def test_inproc_between_two_event_loops_on_two_threads():
    ready = threading.Event()
    stop = threading.Event()
    address: list[str] = []
    errors: list[BaseException] = []

    def server_thread() -> None:
        async def serve() -> None:
            async with echo_listener("inproc") as (listener, _):
                address.append(listener.address)
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.01)

        try:
            run(serve())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=server_thread, daemon=True)
    thread.start()
    try:
        assert ready.wait(10) and not errors

        async def client() -> None:
            comm = await connect(address[0])
            try:
                for i in range(100):
                    await comm.write({"i": i})
                for i in range(100):
                    assert await comm.read() == {"i": i}
                x = np.arange(10)
                await comm.write(x)
                assert await comm.read() is x
            finally:
                await comm.close()

        run(client())
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not errors


def test_inproc_missing_address_times_out():
    async def main():
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await connect("inproc://127.0.0.1/0/does-not-exist", timeout=0.3)
        assert time.monotonic() - start < 1.3

    run(main())


def test_inproc_named_address_in_use():
    async def main():
        async with echo_listener("inproc://my-name") as (listener, _):
            assert listener.address == "inproc://my-name"
            with pytest.raises(OSError):
                await listen("inproc://my-name", lambda comm: None)
            comm = await connect("inproc://my-name")
            await comm.write("hi")
            assert await comm.read() == "hi"
            comm.abort()
        with pytest.raises(TimeoutError):
            await connect("inproc://my-name", timeout=0.1)

    run(main())
