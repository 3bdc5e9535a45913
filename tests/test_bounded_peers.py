"""Bounded peers: what a peer announces is capped before anything is allocated, a peer
that connects and says nothing is dropped after the handshake timeout, a peer that does
not read cannot make the scheduler buffer without bound, and a message of every
operation with fields of the wrong types is refused while the server goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import dask.config
import msgspec
import psutil
import pytest
from conftest import apoll, run

from distributary import Client, Nanny, Scheduler, Security, Worker
from distributary.comm import PROTOCOL_VERSION, CommClosedError, connect, listen
from distributary.comm.tcp import frame_message
from distributary.core.batched import SPILL_MESSAGES, BatchedSend
from distributary.protocol.message import Catalogue
from distributary.protocol.wire import ProtocolError

pytestmark = pytest.mark.timeout(90)

MiB = 2**20


def inc(x: int) -> int:
    return x + 1


def payload_size(data: bytes) -> int:
    return len(data)


def rss() -> int:
    return psutil.Process().memory_info().rss


class RawPeer:
    """A peer on asyncio streams that speaks only as much of the protocol as it is told
    to, and reads only when asked (a reader of at most a few kilobytes, so that a peer
    that does not read soon stops the sender)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str, rcvbuf: int | None = None) -> RawPeer:
        host, port = address.split("://")[1].rsplit(":", 1)
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        return cls(reader, writer)

    async def read_frames(self) -> list[bytes]:
        (n,) = struct.unpack("<Q", await self.reader.readexactly(8))
        lengths = struct.unpack(f"<{n}Q", await self.reader.readexactly(8 * n))
        return [await self.reader.readexactly(length) for length in lengths]

    async def handshake(self) -> None:
        await self.read_frames()
        self.writer.write(frame_message({"distributary": PROTOCOL_VERSION}))

    async def closed_by_server(self, timeout: float = 10) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------- announced sizes


@pytest.mark.parametrize(
    "handshake, header, logged",
    [
        (True, struct.pack("<QQ", 1, 2**62), "max-message-size"),
        (True, struct.pack("<QQQ", 2, 2**61, 2**61), "max-message-size"),
        (True, struct.pack("<QQ", 1, 3 * MiB), "max-message-size (2097152)"),
        (True, struct.pack("<Q", 2**40), "frames"),
        (False, struct.pack("<QQ", 1, 2**62), "a handshake may have"),
        (False, struct.pack("<QQ", 1, 64 * 1024), "a handshake may have"),
        (False, struct.pack("<QQQ", 2, 1, 1), "a handshake is one frame"),
    ],
    ids=[
        "2**62",
        "two-2**61",
        "over-the-cap",
        "2**40-frames",
        "huge-handshake",
        "big-handshake",
        "two-frame-handshake",
    ],
)
def test_forged_lengths_are_refused_before_anything_is_allocated(handshake, header, logged, caplog):
    async def main():
        with dask.config.set({"distributed.comm.max-message-size": "2 MiB"}):
            async with (
                Scheduler() as s,
                Worker(s.address, nthreads=1),
                Client(s.address, asynchronous=True) as c,
            ):
                before = rss()
                for _ in range(20):
                    peer = await RawPeer.open(s.address)
                    if handshake:
                        await peer.handshake()
                    peer.writer.write(header + b"\0" * 100)
                    assert await peer.closed_by_server()
                    peer.close()
                assert rss() - before < 8 * MiB
                assert await c.submit(inc, 1) == 2

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert logged in caplog.text


# ---------------------------------------------------------------------- peers that say nothing


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_a_thousand_half_open_connections_cost_little_and_are_dropped(protocol):
    security = Security.temporary() if protocol == "tls" else None

    async def main():
        async with (
            Scheduler(protocol=protocol, security=security) as s,
            Worker(s.address, nthreads=1, security=security),
            Client(s.address, asynchronous=True, security=security) as c,
        ):
            (listener, *_) = s.server.listeners
            await c.submit(inc, 0)

            def pending() -> int:  # (connections not yet past their handshake, and others)
                return len(listener._pending) if protocol == "tls" else len(listener._tasks)

            served = pending()  # (the worker's and the client's)
            before = rss()
            peers = await asyncio.gather(*(RawPeer.open(s.address) for _ in range(1000)))
            await apoll(lambda: pending() >= served + 1000)
            grown = rss() - before
            assert grown < 40 * MiB, f"{grown / MiB:.1f} MiB for 1000 silent peers"
            assert await c.submit(inc, 1) == 2  # (served meanwhile)
            closed = await asyncio.gather(*(peer.closed_by_server(15) for peer in peers))
            assert all(closed)
            for peer in peers:
                peer.close()
            await apoll(lambda: pending() == served)
            assert await c.submit(inc, 2) == 3

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        run(main(), timeout=80)


# ---------------------------------------------------------------------- peers that do not read


def test_a_batched_stream_to_a_peer_that_does_not_read_is_dropped_at_its_limit(caplog):
    limit = 2 * MiB

    async def main():
        stalled = asyncio.Event()

        async def never_reads(comm):
            await stalled.wait()

        listener = await listen("tcp://127.0.0.1:0", never_reads)
        try:
            comm = await connect(listener.address, timeout=5)
            stream = BatchedSend(comm, send_limit=limit)
            message = {"op": "x", "data": b"y" * 1000}
            held = 0
            for _ in range(200_000):
                if stream.closed():
                    break
                stream.send(message)
                held = max(held, stream._spilled_bytes)
                await asyncio.sleep(0)
            assert stream.closed() and comm.closed()
            assert held <= limit + SPILL_MESSAGES * 1100  # (the limit, and one spill)
            with pytest.raises(CommClosedError):
                stream.send(message)
        finally:
            stalled.set()
            await listener.close()

    with caplog.at_level(logging.WARNING, logger="distributary.core"):
        run(main())
    assert "reads too slowly" in caplog.text and "send-buffer-limit" in caplog.text


def test_the_scheduler_drops_a_worker_that_does_not_read_and_goes_on(caplog):
    """A 'worker' that registers and then never reads: the tasks the scheduler goes on
    sending it pile up until the send limit, then it is treated as gone and its tasks
    run on the real worker."""
    data = [bytes([i % 256]) * 60_000 for i in range(600)]

    async def main():
        async with (
            Scheduler() as s,
            Worker(s.address, nthreads=1) as w,
            Client(s.address, asynchronous=True) as c,
        ):
            fake = await RawPeer.open(s.address, rcvbuf=4096)
            await fake.handshake()
            fake.writer.write(
                frame_message(
                    {
                        "op": "register-worker",
                        "address": "tcp://127.0.0.1:1",
                        "nthreads": 1000,
                        "name": "slow-reader",
                        "memory_limit": 0,
                        "resources": {},
                        "nanny": None,
                    }
                )
            )
            await fake.read_frames()  # registered; from now on it reads nothing
            await apoll(lambda: len(s.workers) == 2)
            futures = []
            for i in range(0, len(data), 20):  # (in waves: the scheduler goes on sending)
                futures += c.map(payload_size, data[i : i + 20])
                if "tcp://127.0.0.1:1" not in s.workers:
                    break
                await asyncio.sleep(0.05)
            await apoll(lambda: "tcp://127.0.0.1:1" not in s.workers, timeout=30)
            assert await c.gather(futures) == [60_000] * len(futures)
            assert set(s.workers) == {w.address}
            fake.close()

    with (
        caplog.at_level(logging.WARNING, logger="distributary.core"),
        dask.config.set({"distributed.comm.send-buffer-limit": "1 MiB"}),
    ):
        run(main(), timeout=80)
    assert "reads too slowly" in caplog.text


# ---------------------------------------------------------------------- wrong field types


_CANDIDATES = [{"not": "this"}, 1.5, "text", b"bytes", [1, [2]], -1, True, None]


def _wrong_messages(handlers) -> list[dict]:
    """For every operation and each of its typed fields, a message whose field has a
    value of the wrong type (as decoding it here shows)."""
    messages = []
    for cls in handlers:
        catalogue = Catalogue(cls)
        for field in msgspec.structs.fields(cls):
            if field.name in (*cls.peer_fields, *cls.arrival_fields):
                continue
            for value in _CANDIDATES:
                msg = {"op": cls.op, field.name: value}
                try:
                    catalogue.decode(dict(msg))
                except ProtocolError as err:
                    if err.field == field.name:
                        messages.append(msg)
                        break
                except Exception:
                    continue
    return messages


async def _send_all(address: str, messages: list[dict], security: Security | None) -> int:
    """Send each message; return how many got an error reply (the others: dropped)."""
    args = (security or Security()).get_connection_args("client")
    errors = 0
    comm = await connect(address, timeout=5, **args)
    for msg in messages:
        try:
            await comm.write(msg)
            reply = await asyncio.wait_for(comm.read(), 10)
        except CommClosedError:
            comm = await connect(address, timeout=5, **args)
            continue
        assert isinstance(reply, dict) and reply.get("status") == "error", (msg, reply)
        assert repr(next(iter(set(msg) - {"op"}))) in reply["exception_text"], (msg, reply)
        errors += 1
    with contextlib.suppress(CommClosedError):
        await comm.write({"op": "identity"})
        assert (await comm.read())["address"] == address
    await comm.close()
    return errors


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_every_operation_with_fields_of_the_wrong_types_is_refused(protocol):
    security = Security.temporary() if protocol == "tls" else None

    async def main():
        async with (
            Scheduler(protocol=protocol, security=security) as s,
            Nanny(s.address, nthreads=1, security=security) as n,
            Client(s.address, asynchronous=True, security=security) as c,
        ):
            w = Worker(s.address, nthreads=1, security=security)
            async with w:
                for server in (s, w, n):
                    messages = _wrong_messages(server.server.handlers)
                    assert len(messages) >= 5, server
                    ops = {msg["op"] for msg in messages}
                    assert await _send_all(server.address, messages, security) > 0
                    assert server.status == "running", (server, ops)
                assert await c.submit(inc, 1, workers=[w.address]) == 2
                assert await c.submit(inc, 2, workers=[n.worker_address]) == 3
                assert len(s.workers) == 2

    run(main(), timeout=80)
