"""WaitQueue: requests waiting in turn on the scheduler, with timeouts, dropped with
their client (in an event loop, no network)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import run

from distributary.scheduler.waiters import TIMED_OUT, WaitQueue


@pytest.mark.timeout(10)
def test_served_first_come_first_served():
    async def main():
        queue = WaitQueue()
        first = asyncio.ensure_future(queue.wait("a", None))
        second = asyncio.ensure_future(queue.wait("b", None))
        await asyncio.sleep(0)
        assert len(queue) == 2 and queue.first().client == "a"
        assert queue.serve("x").client == "a"
        assert await first == "x" and not second.done()
        queue.serve_all("y")
        assert await second == "y"
        assert queue.serve() is None and not queue

    run(main())


@pytest.mark.timeout(10)
def test_a_timeout_leaves_the_queue_and_is_not_served():
    async def main():
        queue = WaitQueue()
        assert await queue.wait("a", 0.01) is TIMED_OUT
        assert not queue and queue.serve() is None

    run(main())


@pytest.mark.timeout(10)
def test_the_requests_of_a_client_that_left_fail_and_leave():
    async def main():
        queue = WaitQueue()
        gone = asyncio.ensure_future(queue.wait("gone", None))
        stays = asyncio.ensure_future(queue.wait("stays", None, detail=3))
        await asyncio.sleep(0)
        queue.drop_client("gone")
        with pytest.raises(RuntimeError, match="'gone' left the scheduler"):
            await gone
        assert [w.detail for w in queue] == [3]
        queue.serve()
        assert await stays is True

    run(main())


@pytest.mark.timeout(10)
def test_a_cancelled_request_is_not_served():
    async def main():
        queue = WaitQueue()
        cancelled = asyncio.ensure_future(queue.wait("a", None))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert not queue and queue.serve() is None

    run(main())
