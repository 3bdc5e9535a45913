"""Running a user's function on the workers, their nannies or the scheduler itself.

``Client.run`` asks the scheduler (``run-on-workers``), which passes the pickled
function on to each worker (or nanny) as a ``run`` request, untouched, and gathers
what each gave: a result, or the error it raised (a worker that cannot be reached
gives its connection error), by worker address.  ``Client.run_on_scheduler`` sends
the ``run`` request to the scheduler, which runs the function itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributary.core.run import run_function
from distributary.protocol import requests as rq
from distributary.protocol.errors import RemoteError
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.introspection import nannies


class RemoteExecution(SchedulerExtension):
    """The scheduler's side of ``Client.run`` and ``Client.run_on_scheduler``."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.handlers.update({rq.RunOnWorkers: self.run_on_workers, rq.RunFunction: self.run_here})

    async def run_here(self, comm: Any, msg: rq.RunFunction) -> rq.Ran:
        """Run the function in the scheduler, as ``dask_scheduler`` if it asks."""
        return await run_function(msg, self.scheduler, "dask_scheduler")

    async def run_on_workers(self, comm: Any, msg: rq.RunOnWorkers) -> dict[str, rq.Ran]:
        """Run the function on each worker named (or on its nanny); by worker address."""
        addresses = self.scheduler.workers_list(msg.workers)
        targets = nannies(self.scheduler.state.workers, addresses) if msg.nanny else addresses
        run = rq.RunFunction(msg.function, msg.args, msg.kwargs, wait=msg.wait)
        ran = await asyncio.gather(*(self._run_on(target, run) for target in targets))
        return dict(zip(addresses, ran))

    async def _run_on(self, address: str, run: rq.RunFunction) -> rq.Ran:
        try:
            return await self.scheduler.pool.call(address, run)
        except Exception as exc:  # unreachable, or its reply could not be sent
            return rq.Ran(error=RemoteError.of(exc).reply())
