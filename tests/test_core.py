"""Tests for distributary.core: Server, ConnectionPool and BatchedSend over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgpack
import msgspec
import pytest
from conftest import apoll, run

from distributary.comm import (
    PROTOCOL_VERSION,
    Comm,
    CommClosedError,
    connect,
    get_address_host_port,
    listen,
)
from distributary.core import BatchedSend, ConnectionPool, Server, read_messages
from distributary.protocol import ProtocolError, RemoteException, rebuild_exception
from distributary.protocol.message import Catalogue, StreamMessage
from distributary.protocol.requests import Request


def _divide(a: int, b: int) -> float:
    return a / b


def request(op: str, reply_type: Any = Any, **fields: type) -> type:
    """A request class for a test operation, with these fields and this reply."""
    namespace = {"op": op, "reply_type": reply_type}
    name = op.title().replace("-", "")
    return msgspec.defstruct(name, list(fields.items()), bases=(Request,), namespace=namespace)


PING, PEER = request("ping"), request("peer")
ADD, DIVIDE = request("add", a=int, b=int), request("divide", a=int, b=int)


async def _add(comm: Comm, msg: Any) -> int:
    await asyncio.sleep(0)
    return msg.a + msg.b


def default_handlers() -> dict:
    return {
        PING: lambda comm, msg: "pong",
        ADD: _add,
        DIVIDE: lambda comm, msg: _divide(msg.a, msg.b),
        PEER: lambda comm, msg: comm.peer_address,
    }


@contextlib.asynccontextmanager
async def serving(handlers: dict | None = None, address: str = "tcp") -> AsyncIterator[Server]:
    server = Server(handlers if handlers is not None else default_handlers())
    await server.listen("tcp://127.0.0.1:0" if address == "tcp" else address)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def pool_for(**kwargs) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(**kwargs)
    try:
        yield pool
    finally:
        await pool.close()


def frame_message(msg: object) -> bytes:
    data = msgpack.packb(msg, use_bin_type=True)
    return struct.pack("<QQ", 1, len(data)) + data


# --- Server ---------------------------------------------------------------------


def test_server_answers_sync_and_async_handlers():
    async def main():
        async with serving() as server, pool_for() as pool:
            assert server.address.startswith("tcp://127.0.0.1:")
            assert not server.closed
            assert await pool.call(server.address, {"op": "ping"}) == "pong"
            assert await pool.call(server.address, ADD(a=1, b=2)) == 3
            assert await pool.call(server.address, PING()) == "pong"

    run(main())


def test_a_reply_of_the_wrong_type_is_a_protocol_error_for_the_caller():
    count = request("count", reply_type=int)
    answers = iter(["many", 3])

    async def main():
        async with serving({count: lambda comm, msg: next(answers)}) as server, pool_for() as pool:
            with pytest.raises(
                ProtocolError, match="Malformed 'count reply' message: Expected `int`"
            ):
                await pool.call(server.address, count())
            assert await pool.call(server.address, count()) == 3  # the same comm, reused
            assert pool.open == 1

    run(main())


def test_handler_error_reaches_caller_with_remote_traceback():
    async def main():
        async with serving() as server, pool_for() as pool:
            with pytest.raises(ZeroDivisionError) as info:
                await pool.call(server.address, DIVIDE(a=1, b=0))
            names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
            assert "_divide" in names
            # the comm that carried the error is healthy and reused
            assert await pool.call(server.address, DIVIDE(a=1, b=2)) == 0.5
            assert pool.open == 1

    run(main())


def test_unknown_operation_and_bad_messages_get_error_replies():
    async def main():
        async with serving() as server, pool_for() as pool:
            with pytest.raises(ValueError, match="Unknown operation 'nope'"):
                await pool.call(server.address, {"op": "nope"})
            with pytest.raises(ValueError, match="Unknown operation None"):
                await pool.call(server.address, {"no-op": 1})
            comm = await connect(server.address)
            try:
                await comm.write(["not", "a", "dict"])
                reply = await comm.read()
                assert reply["status"] == "error"
                with pytest.raises(ValueError, match="not"):
                    raise rebuild_exception(reply)
                await comm.write({"op": "ping"})
                assert await comm.read() == "pong"
            finally:
                await comm.close()

    run(main())


def test_no_reply_when_not_wanted():
    async def main():
        seen: list = []
        handlers = {
            **default_handlers(),
            request("note", x=int): lambda comm, msg: seen.append(msg.x),
        }
        async with serving(handlers) as server, pool_for() as pool:
            assert await pool.call(server.address, {"op": "note", "x": 1, "reply": False}) is None
            await apoll(lambda: seen == [1])
            # no stray reply is waiting on the reused comm
            assert await pool.call(server.address, {"op": "ping"}) == "pong"
            assert pool.open == 1

    run(main())


def test_unencodable_result_becomes_error_reply():
    async def main():
        handlers = {**default_handlers(), request("bad"): lambda comm, msg: {1, 2, 3}}
        async with serving(handlers) as server, pool_for() as pool:
            with pytest.raises(TypeError, match="set"):
                await pool.call(server.address, {"op": "bad"})
            assert await pool.call(server.address, {"op": "ping"}) == "pong"

    run(main())


async def _send_raw(address: str, data: bytes) -> bytes:
    """Send raw bytes to a server and return what it sends back before closing."""
    host, port = get_address_host_port(address)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "after_handshake",
    [
        struct.pack("<QQ", 1, 4) + b"\xc1\xc1\xc1\xc1",  # framing fine, msgpack garbage
        struct.pack("<QQ", 1, 2**60),  # a frame no one could allocate
        b"\xff" * 64,  # garbage framing
    ],
)
def test_malformed_input_drops_connection_and_server_survives(after_handshake, caplog):
    async def main():
        async with serving() as server, pool_for() as pool:
            handshake = frame_message({"distributary": PROTOCOL_VERSION})
            await _send_raw(server.address, handshake + after_handshake)  # returns at EOF
            await _send_raw(server.address, b"GET / HTTP/1.1\r\n\r\n" * 10)
            assert await pool.call(server.address, {"op": "ping"}) == "pong"

    with caplog.at_level(logging.WARNING, logger="distributary.comm"):
        run(main())
    assert "Closing the connection" in caplog.text or "Malformed" in caplog.text


class Record(StreamMessage, kw_only=True):
    """A test message."""

    op: ClassVar[str] = "record"
    peer_fields: ClassVar[tuple[str, ...]] = ("sender",)

    i: int
    sender: str = ""


class Stop(StreamMessage):
    """A test message after which the reader stops."""

    op: ClassVar[str] = "stop"


def test_read_messages_decodes_batches_in_order(caplog):
    async def main():
        batches: list = []
        done = asyncio.Event()

        async def handle(messages: list) -> bool:
            await asyncio.sleep(0)
            batches.append(messages)
            return not any(isinstance(m, Stop) for m in messages)

        async def stream(comm: Comm, msg: Any) -> None:
            await read_messages(comm, Catalogue(Record, Stop), "the-peer", handle)
            done.set()

        async with serving({request("stream"): stream}) as server:
            comm = await connect(server.address)
            await comm.write({"op": "stream", "reply": False})
            await comm.write({"op": "record", "stimulus_id": "s", "i": 0})
            await comm.write(
                [
                    {"op": "record", "stimulus_id": "s", "i": 1},
                    {"op": "record", "stimulus_id": "s", "i": "one"},
                    {"op": "unknown-op"},
                    "not a dict",
                    {"op": "record", "stimulus_id": "s", "i": 2, "sender": "someone else"},
                ]
            )
            await comm.write("not a batch")
            await apoll(lambda: len(batches) == 2)
            assert batches == [
                [Record("s", i=0, sender="the-peer")],
                [Record("s", i=1, sender="the-peer"), Record("s", i=2, sender="the-peer")],
            ]
            assert not done.is_set()
            await comm.write([{"op": "stop", "stimulus_id": "s"}, {"op": "record", "i": 3}])
            await asyncio.wait_for(done.wait(), 5)  # (handle said stop)
            assert len(batches) == 3
            await comm.close()

    with caplog.at_level(logging.WARNING, logger="distributary.core"):
        run(main())
    assert "Malformed 'record' message, field 'i': Expected `int`, got `str`" in caplog.text
    assert "unknown op 'unknown-op'" in caplog.text
    assert "a message is a map, not str" in caplog.text
    assert "Malformed batch from the-peer: 'not a batch'" in caplog.text


def test_read_messages_returns_when_the_comm_closes():
    async def main():
        done = asyncio.Event()

        async def stream(comm: Comm, msg: Any) -> None:
            await read_messages(comm, Catalogue(Record), "peer", lambda messages: None)
            done.set()

        async with serving({request("stream"): stream}) as server:
            comm = await connect(server.address)
            await comm.write({"op": "stream", "reply": False})
            await comm.write({"op": "record", "stimulus_id": "s", "i": 0})
            await comm.close()
            await asyncio.wait_for(done.wait(), 5)

    run(main())


def test_server_close_aborts_comms_and_is_idempotent():
    async def main():
        never = asyncio.Event()
        started = asyncio.Event()

        async def hang(comm: Comm, msg: Any) -> None:
            started.set()
            await never.wait()

        server = Server({request("hang"): hang, **default_handlers()})
        await server.listen("tcp://127.0.0.1:0")
        address = server.address
        async with pool_for() as pool:
            call = asyncio.ensure_future(pool.call(address, {"op": "hang"}))
            await asyncio.wait_for(started.wait(), 5)
            await server.close()
            assert server.closed
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(call, 5)
            await server.close()
            with pytest.raises(OSError):
                await connect(address, timeout=0.3)
            assert pool.open == 0

    run(main())


def test_server_close_from_a_handler():
    async def main():
        async def shutdown(comm: Comm, msg: Any) -> str:
            await server.close()
            return "bye"

        server = Server({request("shutdown"): shutdown})
        await server.listen("tcp://127.0.0.1:0")
        async with pool_for() as pool:
            with pytest.raises(CommClosedError):
                await pool.call(server.address, {"op": "shutdown"})
        assert server.closed

    run(main())


def test_server_listens_on_several_addresses():
    async def main():
        async with serving() as server, pool_for() as pool:
            await server.listen("inproc://")
            assert len(server.listeners) == 2
            for listener in server.listeners:
                assert await pool.call(listener.address, {"op": "ping"}) == "pong"

    run(main())


# --- ConnectionPool -----------------------------------------------------------------


def test_pool_reuses_comms():
    async def main():
        async with serving() as server, pool_for() as pool:
            peers = {await pool.call(server.address, PEER()) for _ in range(20)}
            assert len(peers) == 1
            assert pool.open == 1 and pool.active == 0
            # "host:port" and "tcp://host:port" share comms
            host, port = get_address_host_port(server.address)
            assert await pool.call(f"{host}:{port}", PEER()) in peers

    run(main())


def test_pool_opens_comms_for_concurrent_calls_within_limit():
    async def main():
        release = asyncio.Event()
        inside: list = []

        async def wait(comm: Comm, msg: Any) -> int:
            inside.append(msg.i)
            await release.wait()
            return msg.i

        wait_request = request("wait", i=int)
        async with serving({wait_request: wait}) as server, pool_for(limit=3) as pool:
            calls = [
                asyncio.ensure_future(pool.call(server.address, wait_request(i=i)))
                for i in range(10)
            ]
            await apoll(lambda: len(inside) == 3)
            assert pool.open == 3 and pool.active == 3
            release.set()
            assert sorted(await asyncio.gather(*calls)) == list(range(10))
            assert pool.open <= 3

    run(main())


def test_pool_limit_evicts_idle_comms_to_other_addresses():
    async def main():
        async with serving() as a, serving() as b, pool_for(limit=1) as pool:
            for _ in range(3):
                assert await pool.call(a.address, {"op": "ping"}) == "pong"
                assert await pool.call(b.address, {"op": "ping"}) == "pong"
                assert pool.open == 1

    run(main())


def test_pool_cancelled_call_does_not_return_comm():
    async def main():
        started = asyncio.Event()

        async def slow(comm: Comm, msg: Any) -> str:
            started.set()
            await asyncio.sleep(60)
            return "late"

        handlers = {request("slow"): slow, PING: lambda c, m: "pong"}
        async with serving(handlers) as server, pool_for() as pool:
            call = asyncio.ensure_future(pool.call(server.address, {"op": "slow"}))
            await asyncio.wait_for(started.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert pool.open == 0 and pool.active == 0
            with pytest.raises(asyncio.TimeoutError):
                await pool.call(server.address, {"op": "slow"}, timeout=0.1)
            assert pool.open == 0
            assert await pool.call(server.address, {"op": "ping"}) == "pong"
            assert pool.open == 1

    run(main())


def test_pool_connect_failure_and_timeout():
    async def main():
        async with pool_for(timeout=0.3) as pool:
            start = time.monotonic()
            with pytest.raises(OSError):
                await pool.call("tcp://127.0.0.1:1", {"op": "ping"})
            assert time.monotonic() - start < 1.3
            assert pool.open == 0

    run(main())


def test_pool_remove_and_close():
    async def main():
        async with serving() as server:
            pool = ConnectionPool()
            await pool.call(server.address, {"op": "ping"})
            assert pool.open == 1
            pool.remove(server.address)
            assert pool.open == 0
            comm = await pool.connect(server.address)
            pool.reuse(server.address, comm)
            await pool.close()
            assert comm.closed() and pool.open == 0
            with pytest.raises(CommClosedError):
                await pool.call(server.address, {"op": "ping"})

    run(main())


def test_rebuilt_error_for_untransferable_exception():
    class Weird(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")

    def weird(comm: Comm, msg: Any) -> None:
        raise Weird(1, 2)

    async def main():
        async with serving({request("weird"): weird}) as server, pool_for() as pool:
            with pytest.raises(RemoteException, match="1-2") as info:
                await pool.call(server.address, {"op": "weird"})
            assert type(info.value).__name__ == "Weird"

    run(main())


# --- BatchedSend --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def batched_pair(interval: float = 0.0) -> AsyncIterator[tuple[BatchedSend, list]]:
    """A BatchedSend to a listener that records every message it receives."""
    received: list = []
    accepted: list[Comm] = []

    async def handle(comm: Comm) -> None:
        accepted.append(comm)
        try:
            while True:
                received.append(await comm.read())
        except CommClosedError:
            pass

    listener = await listen("tcp://127.0.0.1:0", handle)
    comm = await connect(listener.address)
    stream = BatchedSend(comm, interval=interval)
    try:
        yield stream, received
    finally:
        stream.abort()
        await listener.close()
        for c in accepted:
            c.abort()


def test_batched_send_coalesces_one_loop_turn_into_one_message():
    async def main():
        async with batched_pair() as (stream, received):
            tasks_before = len(asyncio.all_tasks())
            for i in range(100):
                stream.send({"op": "x", "i": i})
            assert len(asyncio.all_tasks()) <= tasks_before + 1  # one flusher, not one per send
            await apoll(lambda: received)
            assert len(received) == 1
            assert [m["i"] for m in received[0]] == list(range(100))

    run(main())


def test_batched_send_preserves_order_across_batches():
    async def main():
        async with batched_pair() as (stream, received):
            n = 0
            for burst in range(50):
                stream.send(*({"i": n + j} for j in range(burst % 7 + 1)))
                n += burst % 7 + 1
                if burst % 3 == 0:
                    await asyncio.sleep(0)
            await apoll(lambda: sum(len(batch) for batch in received) == n)
            flat = [m["i"] for batch in received for m in batch]
            assert flat == list(range(n))
            assert len(received) < 50

    run(main())


def test_batched_send_interval_groups_sends():
    async def main():
        async with batched_pair(interval=0.05) as (stream, received):
            for i in range(10):
                stream.send({"i": i})
                await asyncio.sleep(0.002)
            await apoll(lambda: sum(len(batch) for batch in received) == 10)
            assert len(received) < 10
            assert [m["i"] for batch in received for m in batch] == list(range(10))

    run(main())


def test_batched_send_close_flushes_then_refuses():
    async def main():
        async with batched_pair() as (stream, received):
            stream.send({"i": 0}, {"i": 1})
            await stream.close()
            assert stream.closed() and stream.comm.closed()
            with pytest.raises(CommClosedError):
                stream.send({"i": 2})
            await apoll(lambda: received)
            assert [m["i"] for m in received[0]] == [0, 1]

    run(main())


def test_batched_send_detects_closed_comm():
    async def main():
        async with batched_pair() as (stream, received):
            stream.send({"i": 0})
            await apoll(lambda: received)
            stream.comm.abort()
            assert stream.closed()
            with pytest.raises(CommClosedError):
                stream.send({"i": 1})

    run(main())


def test_batched_send_drops_only_unencodable_messages(caplog):
    async def main():
        async with batched_pair() as (stream, received):
            stream.send({"i": 0}, {"i": {1, 2}}, {"i": 2})
            await apoll(lambda: sum(len(batch) for batch in received) == 2)
            assert [m["i"] for batch in received for m in batch] == [0, 2]
            assert not stream.closed()

    with caplog.at_level(logging.ERROR, logger="distributary.core"):
        run(main())
    assert "Dropping a message" in caplog.text
