"""Adaptive: resize a cluster with the load on its scheduler.

Every ``interval`` it asks the scheduler how many workers the work asks for
(``adaptive_target``), bounds that (see :mod:`~distributary.deploy.adaptive_core`),
and scales the cluster up at once, or down once the same workers were found
superfluous ``wait_count`` times in a row.  Scaling down retires workers: their data
moves to the workers that stay, and a worker whose data has nowhere to go stays.
It runs as a task on the cluster's event loop, holding the cluster only weakly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from distributary.deploy.adaptive_core import AdaptiveCore
from distributary.protocol import deploy as rq_d
from distributary.protocol import requests as rq
from distributary.scheduler.server import Scheduler

logger = logging.getLogger("distributary.deploy")

_WORKERS_TO_CLOSE_OPTIONS = frozenset({"n", "minimum", "memory_ratio"})


class Adaptive(AdaptiveCore):
    """Adaptively scale ``cluster`` (a SpecCluster) between ``minimum`` and ``maximum``
    workers, checking every ``interval``.

    ``target_duration`` is how long the work queued should take with the workers asked
    for; ``wait_count`` how many checks in a row a worker must be found superfluous
    before it is retired; ``worker_key`` groups workers closed together (see
    ``Scheduler.workers_to_close``, which also takes the other keywords).  Usually made
    with ``cluster.adapt(...)``.  Subclasses may override :meth:`target` and
    :meth:`workers_to_close`.
    """

    def __init__(
        self,
        cluster: Any = None,
        interval: Any = None,
        minimum: int | None = None,
        maximum: int | float | None = None,
        wait_count: int | None = None,
        target_duration: Any = None,
        worker_key: Any = None,
        **kwargs: Any,
    ):
        unknown = sorted(set(kwargs) - _WORKERS_TO_CLOSE_OPTIONS)
        if unknown:
            raise TypeError(f"Adaptive() got unexpected keyword arguments {unknown}")

        def config(key: str, value: Any) -> Any:
            return dask.config.get(f"distributed.adaptive.{key}") if value is None else value

        super().__init__(
            minimum=config("minimum", minimum),
            maximum=config("maximum", maximum),
            wait_count=config("wait-count", wait_count),
        )
        self.cluster = cluster
        self.worker_key = worker_key
        self.interval = parse_timedelta(config("interval", interval), "seconds")
        self.target_duration = parse_timedelta(config("target-duration", target_duration))
        self._workers_to_close_kwargs = kwargs
        self.log: deque[tuple[float, dict]] = deque(
            maxlen=dask.config.get("distributed.admin.low-level-log-length", default=1000)
        )
        self._adapting = False
        self._task: asyncio.Task | None = None
        if self.interval and cluster is not None:
            self.state = "starting"
            cluster.loop.call_soon_threadsafe(self._start)
        else:
            self.state = "inactive"

    def _start(self) -> None:
        if self.state != "starting":
            return
        self._task = asyncio.get_running_loop().create_task(_run(weakref.ref(self), self.interval))
        self.state = "running"
        logger.info("Adaptive scaling started: minimum=%s maximum=%s", self.minimum, self.maximum)

    def stop(self, reason: str = "unknown") -> None:
        """Stop adapting (the cluster keeps the workers it has)."""
        if self.state in ("inactive", "stopped"):
            return
        if self._task is not None:
            self.cluster.loop.call_soon_threadsafe(self._task.cancel)
            self._task = None
        self.state = "stopped"
        logger.info(
            "Adaptive scaling stopped: minimum=%s maximum=%s. Reason: %s",
            self.minimum,
            self.maximum,
            reason,
        )

    # ------------------------------------------------------------------ the cluster

    @property
    def plan(self) -> set:
        """The names of the workers the cluster asks for."""
        return self.cluster.plan

    @property
    def requested(self) -> set:
        """The names of the workers the cluster started."""
        return self.cluster.requested

    @property
    def observed(self) -> set:
        """The names of the workers the scheduler has."""
        return self.cluster.observed

    # ------------------------------------------------------------------ decisions

    async def target(self) -> int:
        """How many workers the scheduler's work asks for (``Scheduler.adaptive_target``)."""
        return await self.cluster._call(rq_d.AdaptiveTarget(self.target_duration))

    async def safe_target(self) -> int:
        """:meth:`target` within ``minimum`` and ``maximum``."""
        return self.safe(await self.target())

    async def workers_to_close(self, target: int) -> list:
        """The names of the workers to close to come down to ``target`` workers, as
        ``Scheduler.workers_to_close`` chooses them."""
        kwargs = self._workers_to_close_kwargs
        if self.worker_key is not None:
            scheduler = self.cluster.scheduler
            if not isinstance(scheduler, Scheduler):
                raise NotImplementedError(
                    "Adaptive(worker_key=...) needs the scheduler in this process"
                )
            return scheduler.workers_to_close(
                target=target, key=self.worker_key, attribute="name", **kwargs
            )
        return list(
            await self.cluster._call(rq.WorkersToClose(target=target, attribute="name", **kwargs))
        )

    async def recommendations(self, target: int) -> dict:
        """What to do to come to ``target`` workers: ``{"status": "same"}``, ``{"status":
        "up", "n": ...}`` or ``{"status": "down", "workers": [names]}``."""
        if len(self.plan) != len(self.requested):
            await self.cluster._correct_state_now()  # (a change is under way)
        plan, requested, observed = self.plan, self.requested, self.observed
        candidates: list = []
        if self.wants_candidates(target, plan, requested, observed):
            candidates = await self.workers_to_close(target)
        return self.recommend(target, plan, requested, observed, candidates)

    async def adapt(self) -> None:
        """Look once, and scale the cluster as recommended."""
        if self._adapting:  # (one at a time)
            return
        self._adapting = True
        try:
            target = await self.safe_target()
            recommendation = await self.recommendations(target)
            status = recommendation["status"]
            if status == "same":
                return
            self.log.append((time.time(), dict(recommendation)))
            if status == "up":
                await self.scale_up(recommendation["n"])
            else:
                await self.scale_down(recommendation["workers"])
        finally:
            self._adapting = False

    async def scale_up(self, n: int) -> None:
        """Ask the cluster for ``n`` workers."""
        await self.cluster._scale(n)

    async def scale_down(self, workers: list) -> None:
        """Retire these workers (names) and take them out of the cluster; those whose
        data cannot move elsewhere stay."""
        if workers:
            logger.info("Retiring workers %s", workers)
            await self.cluster._scale_down(workers, only_retired=True)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: minimum={self.minimum}, maximum={self.maximum}, "
            f"state={self.state}>"
        )


async def _run(ref: weakref.ref, interval: float) -> None:
    """Adapt every ``interval`` seconds while the Adaptive (held weakly) runs."""
    while True:
        adaptive = ref()
        if adaptive is None or adaptive.state != "running":
            return
        if adaptive.cluster.status != "running":
            if adaptive.cluster.status in ("closing", "closed"):
                adaptive.stop(reason="cluster-not-running")
                return
        else:
            try:
                await adaptive.adapt()
            except Exception:
                logger.warning("Adaptive encountered an error while adapting", exc_info=True)
        del adaptive
        await asyncio.sleep(interval)
