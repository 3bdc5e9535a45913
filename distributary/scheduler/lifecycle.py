"""Workers leaving the cluster: silent ones, retired ones, and restarts of them all.

Theory of operation
-------------------
*Silence.*  Workers send a heartbeat every second or so on their stream.  A watchdog
removes a worker not heard from for ``worker_ttl`` by closing its stream; the stream's
reader then removes it as for any lost worker (its tasks count as suspicious).  The
same watchdog closes the scheduler after ``idle_timeout`` without clients or work.

*Retirement.*  :meth:`WorkerLifecycle.retire_workers` marks the workers
``closing_gracefully`` (no new tasks), and asks other running workers to copy the
data only the retiring ones hold (``acquire-replicas``).  It polls the pure state
until each worker's data is held elsewhere and its running tasks finished, then
removes it (``safe``: nothing counts against its tasks) and, if asked, closes it.  A
worker whose data has nowhere to go stays (its retirement is cancelled).

*Restart.*  Every task and every client's wants are forgotten at once; clients cancel
their futures; the workers are marked ``closing`` (no new work) and each nanny restarts
its worker process while workers without a nanny are closed.  It returns when as many
workers as had nannies are registered again.

*Reasons.*  A nanny that kills its worker (too much memory) says why first
(``worker-killed``); the reason goes with the worker's removal into ``KilledWorker``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta

from distributary.scheduler import events as ev
from distributary.scheduler.records import WorkerRecord
from distributary.scheduler.retirement import retirement_done

if TYPE_CHECKING:
    from distributary.scheduler.server import Scheduler

logger = logging.getLogger("distributary.scheduler")

_RETIRE_POLL = 0.02  # seconds between checks of a retirement's progress
_REPLAN_EVERY = 2.0  # seconds after which copies asked for and not made are asked again
_CLOSE_TIMEOUT = 5.0  # seconds to wait for a worker (or nanny) to accept a close request


def _stimulus(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class WorkerLifecycle:
    """The scheduler's handling of workers that go silent, retire or restart."""

    def __init__(self, scheduler: Scheduler, worker_ttl: Any, idle_timeout: Any):
        self.scheduler = scheduler
        if worker_ttl is None:
            worker_ttl = dask.config.get("distributed.scheduler.worker-ttl", default=None)
        if idle_timeout is None:
            idle_timeout = dask.config.get("distributed.scheduler.idle-timeout", default=None)
        self.worker_ttl = parse_timedelta(worker_ttl) if worker_ttl else None
        self.idle_timeout = parse_timedelta(idle_timeout) if idle_timeout else None
        self.exit_reasons: dict[str, str] = {}
        self.idle_since = time.monotonic()
        self._watchdog: asyncio.Task | None = None
        self.handlers: dict[str, Callable] = {
            "worker-killed": self._handle_worker_killed,
            "retire_workers": self._handle_retire_workers,
            "workers_to_close": self._handle_workers_to_close,
            "restart": self._handle_restart,
        }

    # ------------------------------------------------------------------ watchdog

    def start(self) -> None:
        """Start watching for silent workers and idleness (if either is configured)."""
        periods = [t / 5 for t in (self.worker_ttl, self.idle_timeout) if t]
        if periods:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(max(min(min(periods), 5.0), 0.05))
            )

    def stop(self) -> None:
        """Stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _watch(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            if self.worker_ttl:
                self.remove_silent_workers(time.time())
            if self.idle_timeout and self._idle_for() > self.idle_timeout:
                logger.info("Closing the scheduler: idle for more than %s s", self.idle_timeout)
                await self.scheduler.close()
                return

    def remove_silent_workers(self, now: float) -> list[str]:
        """Close the streams of workers not heard from for ``worker_ttl``; their addresses."""
        scheduler = self.scheduler
        silent = [
            ws.address
            for ws in scheduler.state.workers.values()
            if now - ws.last_seen > self.worker_ttl
        ]
        for address in silent:
            silence = now - scheduler.state.workers[address].last_seen
            logger.warning(
                "Worker %s sent no heartbeat for %.1f s (worker-ttl %s s); removing it",
                address,
                silence,
                self.worker_ttl,
            )
            self.exit_reasons[address] = (
                f"sent no heartbeat for {silence:.0f} s (worker-ttl is {self.worker_ttl:g} s)"
            )
            stream = scheduler.worker_streams.get(address)
            if stream is not None:
                stream.abort()  # its reader removes the worker
            else:
                scheduler._handle(ev.RemoveWorker(_stimulus("worker-ttl"), address))
        return silent

    def _idle_for(self) -> float:
        state = self.scheduler.state
        busy = self.scheduler.client_streams or any(ws.processing for ws in state.workers.values())
        if busy or state.unrunnable:
            self.idle_since = time.monotonic()
        return time.monotonic() - self.idle_since

    # ------------------------------------------------------------------ retirement

    def workers_to_close(
        self,
        n: int | None = None,
        target: int | None = None,
        minimum: int = 0,
        memory_ratio: float | None = None,
        key: Callable[[WorkerRecord], Any] | None = None,
        attribute: str = "address",
    ) -> list:
        """Workers that can be closed at little cost: running nothing, holding little.

        ``n`` workers at most, keeping at least ``target`` and ``minimum`` workers, and
        enough memory for ``memory_ratio`` times the data held (2 when nothing is given).
        Workers grouped by ``key`` are closed together.  Returns the chosen workers'
        ``attribute`` values.
        """
        workers = list(self.scheduler.state.workers.values())
        groups: dict[Any, list[WorkerRecord]] = {}
        for ws in workers:
            groups.setdefault(key(ws) if key else ws.address, []).append(ws)
        idle_groups = [g for g in groups.values() if all(ws.occupied <= 0 for ws in g)]
        idle_groups.sort(key=lambda g: sum(ws.nbytes for ws in g))
        keep = max(minimum, target or 0)
        if n is None and target is None and memory_ratio is None:
            memory_ratio = 2
        total_data = sum(ws.nbytes for ws in workers)
        limit = sum(ws.memory_limit for ws in workers)
        remaining = len(workers)
        chosen: list[WorkerRecord] = []
        for group in idle_groups:
            if n is not None and len(chosen) + len(group) > n:
                break
            if remaining - len(group) < keep:
                break
            if memory_ratio is not None and limit and target is None and n is None:
                group_limit = sum(ws.memory_limit for ws in group)
                if limit - group_limit < memory_ratio * total_data:
                    break
                limit -= group_limit
            chosen.extend(group)
            remaining -= len(group)
        return [getattr(ws, attribute) for ws in chosen]

    async def retire_workers(
        self,
        workers: list[str] | None = None,
        *,
        names: list | None = None,
        close_workers: bool = False,
        remove: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, dict]:
        """Move the workers' data elsewhere, then remove (and maybe close) them.

        Returns ``{address: info}`` for the workers retired; a worker whose data could
        not be moved (no other running worker) is not retired and not in the result.
        """
        scheduler = self.scheduler
        state = scheduler.state
        if names is not None:
            wanted = {str(name) for name in names}
            addresses = [a for a, ws in state.workers.items() if str(ws.name) in wanted]
        elif workers is None:
            addresses = self.workers_to_close(**kwargs)
        else:
            addresses = [scheduler.coerce_address(w) for w in workers]
        addresses = [a for a in dict.fromkeys(addresses) if a in state.workers]
        if not addresses:
            return {}
        stimulus_id = _stimulus("retire-workers")
        info = {a: scheduler.worker_info(state.workers[a]) for a in addresses}
        logger.info("Retiring %d workers: %s", len(addresses), addresses)
        pending = set(addresses)
        scheduler._handle(ev.RetireWorkers(stimulus_id, tuple(pending)))
        deadline = None if timeout is None else time.monotonic() + timeout
        replan_at = time.monotonic() + _REPLAN_EVERY
        retired: dict[str, dict] = {}
        while pending:
            done = [a for a in pending if retirement_done(state, a)]
            for address in done:
                pending.discard(address)
                retired[address] = info[address]
            stuck = not any(ws.status == "running" for ws in state.workers.values())
            if pending and (stuck or (deadline is not None and time.monotonic() > deadline)):
                logger.warning(
                    "Could not retire %s: %s",
                    sorted(pending),
                    "no other running worker can take their data" if stuck else "timed out",
                )
                scheduler._handle(ev.CancelRetirement(stimulus_id, tuple(pending)))
                break
            if pending:
                await asyncio.sleep(_RETIRE_POLL)
                replan = time.monotonic() > replan_at
                if replan:
                    replan_at = time.monotonic() + _REPLAN_EVERY
                scheduler._handle(ev.RetireWorkers(stimulus_id, tuple(pending), replan))
        for address in retired:
            if remove:
                scheduler._handle(ev.RemoveWorker(stimulus_id, address, safe=True))
        if close_workers:
            await asyncio.gather(*(self.close_worker(a) for a in retired))
        return retired

    async def close_worker(self, address: str) -> None:
        """Ask a worker to close for good (its nanny too, so that it is not restarted)."""
        try:
            await self.scheduler.pool.call(
                address, {"op": "close", "nanny": True}, timeout=_CLOSE_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info("Could not ask worker %s to close: %r", address, exc)

    # ------------------------------------------------------------------ restart

    async def restart(self, timeout: float = 30, wait_for_workers: bool = True) -> None:
        """Forget all tasks, restart every worker process (via its nanny) and wait for them.

        Workers without a nanny are closed.  With ``wait_for_workers``, raise
        TimeoutError if fewer workers than had nannies are back after ``timeout``.
        """
        scheduler = self.scheduler
        old = dict(scheduler.state.workers)
        nannies = [ws.nanny for ws in old.values() if ws.nanny]
        logger.info("Restarting: %d workers, %d with a nanny", len(old), len(nannies))
        deadline = time.monotonic() + timeout
        scheduler.datasets.clear()
        scheduler._handle(ev.Restart(_stimulus("restart")))
        calls = [
            scheduler.pool.call(nanny, {"op": "restart", "timeout": timeout}, timeout=timeout)
            for nanny in nannies
        ]
        calls += [
            scheduler.pool.call(a, {"op": "close", "nanny": False}, timeout=_CLOSE_TIMEOUT)
            for a, ws in old.items()
            if not ws.nanny
        ]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.warning("A worker did not restart cleanly: %r", result)
        if not wait_for_workers:
            return
        while True:
            workers = scheduler.state.workers
            back = sum(1 for a, ws in workers.items() if a not in old and ws.status == "running")
            if back >= len(nannies) and not any(a in workers for a in old):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{back} of {len(nannies)} workers came back within {timeout} s of a restart"
                )
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ handlers

    def _handle_worker_killed(self, comm: Any, msg: dict) -> str:
        address, reason = str(msg["worker"]), str(msg.get("reason", ""))
        logger.warning("Worker %s is being killed by its nanny: %s", address, reason)
        self.exit_reasons[address] = reason
        return "OK"

    async def _handle_retire_workers(self, comm: Any, msg: dict) -> dict:
        options = {k: v for k, v in msg.items() if k not in ("op", "reply")}
        return await self.retire_workers(**options)

    def _handle_workers_to_close(self, comm: Any, msg: dict) -> list:
        options = {k: v for k, v in msg.items() if k not in ("op", "reply")}
        return self.workers_to_close(**options)

    async def _handle_restart(self, comm: Any, msg: dict) -> str:
        timeout = parse_timedelta(msg.get("timeout") or 30)
        await self.restart(timeout, bool(msg.get("wait_for_workers", True)))
        return "OK"
