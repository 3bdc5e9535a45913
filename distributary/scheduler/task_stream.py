"""The task stream of the cluster, gathered from the workers when asked.

Each worker records the tasks it ran (:mod:`distributary.worker.task_stream`); the
scheduler records nothing per task.  :meth:`TaskStream.collect` asks every worker for
its records at once and merges them, sorted by the start of their compute phase;
:meth:`TaskStream.transfers` does the same with the data the workers fetched from each
other.  A worker that does not answer (it is leaving, say) is left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from distributary.protocol import diagnostics as dg
from distributary.protocol.requests import Request
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension

logger = logging.getLogger("distributary.scheduler")

# Seconds a worker has to answer before it is left out of the answer.
_TIMEOUT = 10.0


class TaskStream(SchedulerExtension):
    """The records of the tasks the workers ran, and of their transfers."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.handlers.update(
            {
                dg.TaskStream: lambda comm, msg: self.collect(msg.start, msg.stop, msg.count),
                dg.ClusterTransfers: lambda comm, msg: self.transfers(msg.start, msg.stop),
            }
        )

    async def collect(
        self, start: float | None = None, stop: float | None = None, count: int | None = None
    ) -> list[dict]:
        """The records of the tasks that finished between ``start`` and ``stop``
        (``time.time()`` values; None: no bound), sorted by the start of their compute
        phase.  ``count``: the last ``count`` of them, or the first ``count`` after
        ``start`` when only ``start`` is given (ignored when both bounds are), as in
        dask.distributed."""
        replies = await ask_workers(self.scheduler, dg.GetTaskStream(start, stop, count))
        records = [record for reply in replies.values() for record in reply]
        records.sort(key=compute_start)
        if count is not None and not (start is not None and stop is not None):
            count = max(int(count), 0)
            if start is not None:
                return records[:count]
            return records[len(records) - count :] if count else []
        return records

    async def transfers(self, start: float | None = None, stop: float | None = None) -> list[dict]:
        """The data the workers fetched from each other between ``start`` and ``stop``,
        sorted by start: ``source``, ``destination``, ``start``, ``stop``, ``keys`` (how
        many) and ``nbytes``, one per request."""
        replies = await ask_workers(self.scheduler, dg.GetTransfers(start, stop))
        transfers = [transfer for reply in replies.values() for transfer in reply]
        transfers.sort(key=lambda t: t["start"])
        return transfers


def compute_start(record: dict) -> float:
    """When the task of ``record`` started computing."""
    for phase in record["startstops"]:
        if phase["action"] == "compute":
            return phase["start"]
    return min((phase["start"] for phase in record["startstops"]), default=0.0)


async def ask_workers(
    scheduler: SchedulerContext, msg: Request, workers: Iterable[str] | None = None
) -> dict[str, Any]:
    """The replies of the workers at ``workers`` (all when None) to ``msg``, asked in
    parallel, by address; those that fail or do not answer in time are left out (and
    logged)."""
    addresses = list(scheduler.state.workers if workers is None else workers)

    async def ask(address: str) -> Any:
        try:
            return await scheduler.pool.call(address, msg, timeout=_TIMEOUT)
        except Exception as exc:
            logger.info("Worker %s did not answer %r: %r", address, msg.op, exc)
            return None

    replies = await asyncio.gather(*(ask(address) for address in addresses))
    return {a: reply for a, reply in zip(addresses, replies) if reply is not None}
