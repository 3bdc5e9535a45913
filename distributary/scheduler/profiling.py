"""Statistical profiles of the cluster: of the workers' tasks and event loops, gathered
from the workers when asked, and of the scheduler's own event loop.

Each worker samples its threads (:mod:`distributary.worker.profiler`); the scheduler
samples its event loop in the same way (while it is busy: an idle loop is not counted),
and answers :class:`~distributary.protocol.diagnostics.ClusterProfile` by asking the
workers named for theirs, merged or by worker.
"""

from __future__ import annotations

from typing import Any

from distributary.diagnostics import profile as pf
from distributary.protocol import diagnostics as dg
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.task_stream import ask_workers
from distributary.worker.profiler import LoopProfiler


class Profiling(SchedulerExtension):
    """The profiles of the workers, and of the scheduler's event loop."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.profiler = LoopProfiler()
        self.handlers[dg.ClusterProfile] = lambda comm, msg: self.profile(
            msg.key, msg.start, msg.stop, msg.workers, msg.merge_workers, msg.server, msg.scheduler
        )

    def start(self) -> None:
        self.profiler.start()

    def stop(self) -> None:
        self.profiler.stop()

    async def profile(
        self,
        key: str | None = None,
        start: float | None = None,
        stop: float | None = None,
        workers: Any = None,
        merge_workers: bool = True,
        server: bool = False,
        scheduler: bool = False,
    ) -> dict[str, Any]:
        """The profile between ``start`` and ``stop`` of the tasks of the workers named
        (addresses, names or hosts; all when None), of task prefix ``key`` only unless
        None; of their event loops with ``server``; of the scheduler's event loop with
        ``scheduler``.  The workers' profiles merged, or by address unless
        ``merge_workers``."""
        if scheduler:
            return self.profiler.loop.get(start, stop)
        addresses = self.scheduler.workers_list(workers)
        replies = await ask_workers(
            self.scheduler, dg.GetProfile(start, stop, key, server), addresses
        )
        if merge_workers:
            return pf.merge(*replies.values())
        return replies
