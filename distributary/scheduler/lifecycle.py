"""Workers leaving the cluster: silent ones, retired ones, and restarts of them all.

Theory of operation
-------------------
*Time.*  The pure state knows no clock: a ticker sends it ``Tick(now)`` (every fifth
of ``worker_ttl`` or ``idle_timeout``, and every 20 ms while workers retire), and the
state answers with instructions that this module carries out.

*Silence.*  Workers send a heartbeat every second or so on their stream.  A worker not
heard from for ``worker_ttl`` is removed (``WorkerSilent``) by closing its stream; the
stream's reader then removes it as for any lost worker (its tasks count as
suspicious).  After ``idle_timeout`` without clients or work the scheduler closes
(``SchedulerIdle``).

*Retirement.*  :meth:`WorkerLifecycle.retire_workers` tells the state, which marks the
workers ``closing_gracefully`` (no new tasks) and asks other running workers to copy
the data only the retiring ones hold (``acquire-replicas``).  The state says when each
worker's data is held elsewhere and its tasks finished (``WorkerRetired``), or that a
retirement is given up (``RetirementFailed``: timed out, or no running worker left to
take the data; the worker then runs tasks again).  A retired worker is removed
(``safe``: nothing counts against its tasks) and, if asked, closed.

*Restart.*  Every task and every client's wants are forgotten at once; clients cancel
their futures; the workers are marked ``closing`` (no new work) and each nanny restarts
its worker process while workers without a nanny are closed.  It returns when as many
workers as had nannies are registered again (the server tells of each arrival).

*Reasons.*  A nanny that kills its worker (too much memory) says why first
(``worker-killed``); the reason goes with the worker's removal into ``KilledWorker``.

*Cluster managers.*  Each arrival or departure of a worker counts one more version of
the worker table; a cluster manager's ``watch_workers`` request waits for the next
one (a long poll), and ``adaptive_target`` says how many workers the work asks for.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from dask.utils import parse_timedelta

from distributary.protocol import deploy as rq_d
from distributary.protocol import requests as rq
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler import placement
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.records import WorkerRecord

logger = logging.getLogger("distributary.scheduler")

_RETIRE_TICK = 0.02  # seconds between ticks while workers retire
_CLOSE_TIMEOUT = 5.0  # seconds to wait for a worker (or nanny) to accept a close request
_WATCH_TIMEOUT = 30.0  # seconds a watch_workers request waits for a change at most
_DURATION_SAMPLE = 100  # tasks whose expected durations adaptive_target adds up, at most


def stimulus(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class WorkerLifecycle(SchedulerExtension):
    """The scheduler's handling of time, and of workers that go silent, retire or restart."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.exit_reasons: dict[str, str] = {}
        self._retirements: dict[str, asyncio.Future] = {}  # address -> retired?
        self._workers_changed = asyncio.Event()
        self.workers_version = 0  # arrivals and departures of workers so far
        self._watchers: set[asyncio.Future] = set()
        self._stopped = False
        self._tickers: set[asyncio.Task] = set()
        self._retirement_ticker: asyncio.Task | None = None
        self._closing = False
        self.handlers.update(
            {
                rq.WorkerKilled: self._handle_worker_killed,
                rq.RetireWorkers: self._handle_retire_workers,
                rq.WorkersToClose: self._handle_workers_to_close,
                rq.Restart: self._handle_restart,
                rq.WaitForWorkers: self._handle_wait_for_workers,
                rq_d.AdaptiveTarget: self._handle_adaptive_target,
                rq_d.WatchWorkers: self._handle_watch_workers,
            }
        )
        self.instruction_handlers.update(
            {
                ins.WorkerRetired: self._worker_retired,
                ins.RetirementFailed: self._retirement_failed,
                ins.WorkerSilent: self._worker_silent,
                ins.SchedulerIdle: self._scheduler_idle,
            }
        )

    # ------------------------------------------------------------------ time

    def start(self) -> None:
        """Start the ticker that tells the state of silent workers and idleness."""
        state = self.scheduler.state
        periods = [t / 5 for t in (state.worker_ttl, state.idle_timeout) if t]
        if periods:
            self._start_ticker(max(min(min(periods), 5.0), 0.05), lambda: True)

    def stop(self) -> None:
        """Stop the tickers; retirements under way are not done, and whoever waits for
        workers is told."""
        self._stopped = True
        self._workers_changed.set()
        self._wake_watchers()
        for ticker in list(self._tickers):
            ticker.cancel()
        for outcome in self._retirements.values():
            if not outcome.done():
                outcome.set_result(False)
        self._retirements.clear()

    def _start_ticker(self, period: float, running: Callable[[], bool]) -> asyncio.Task:
        ticker = asyncio.get_running_loop().create_task(self._tick(period, running))
        self._tickers.add(ticker)
        ticker.add_done_callback(self._tickers.discard)
        return ticker

    def _retiring(self) -> bool:
        if self._retirements:
            return True
        self._retirement_ticker = None
        return False

    async def _tick(self, period: float, running: Callable[[], bool]) -> None:
        while running():
            await asyncio.sleep(period)
            self.tick()

    def tick(self) -> None:
        """Tell the state that time passed."""
        self.scheduler.handle(ev.Tick(stimulus("tick"), time.time()))

    def workers_changed(self) -> None:
        """A worker came or went (the server tells): wake whoever waits for workers."""
        self.workers_version += 1
        self._workers_changed.set()
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        for watcher in self._watchers:
            if not watcher.done():
                watcher.set_result(None)
        self._watchers.clear()

    def _worker_silent(self, instruction: ins.WorkerSilent) -> None:
        address, silence = instruction.address, instruction.silence
        if address in self.exit_reasons:  # (already being removed)
            return
        ttl = self.scheduler.state.worker_ttl
        logger.warning(
            "Worker %s sent no heartbeat for %.1f s (worker-ttl %s s); removing it",
            address,
            silence,
            ttl,
        )
        self.exit_reasons[address] = (
            f"sent no heartbeat for {silence:.0f} s (worker-ttl is {ttl:g} s)"
        )
        if not self.scheduler.disconnect(address):  # (its stream's reader removes it)
            # No stream: removed once the instructions of this step are carried out.
            asyncio.get_running_loop().call_soon(
                self.scheduler.handle, ev.RemoveWorker(stimulus("worker-ttl"), address)
            )

    def _scheduler_idle(self, instruction: ins.SchedulerIdle) -> None:
        if self._closing:
            return
        self._closing = True
        logger.info("Closing the scheduler: idle for %.1f s", instruction.idle_for)
        asyncio.get_running_loop().create_task(self.scheduler.close())

    # ------------------------------------------------------------------ adaptive scaling

    def adaptive_target(self, target_duration: float = 5.0) -> int:
        """How many workers the current work asks for: enough to run the tasks queued,
        waiting for a worker or running in about ``target_duration`` seconds (at most
        one per such task), twice the workers there are when they hold more than 60%
        of their memory, and no fewer than those there is no reason to close."""
        state = self.scheduler.state
        workers = state.workers.values()
        waiting = [*state.unrunnable, *state.queued_tasks()]
        processing = [ts for ws in workers for ts in ws.processing]
        n_tasks = len(waiting) + len(processing)
        sample = list(itertools.islice(itertools.chain(waiting, processing), _DURATION_SAMPLE))
        work = sum(placement.task_duration(state, ts) for ts in sample)
        if sample:
            work *= n_tasks / len(sample)
        cpu = min(n_tasks, math.ceil(work / target_duration)) if target_duration > 0 else n_tasks
        if state.unrunnable and not state.workers:
            cpu = max(1, cpu)
        limit = sum(ws.memory_limit for ws in workers)
        held = sum(ws.nbytes for ws in workers)
        memory = 2 * len(state.workers) if limit and held > 0.6 * limit else 0
        target = max(memory, cpu)
        if target >= len(state.workers):
            return target
        return len(state.workers) - len(self.workers_to_close(target=target))

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
        stimulus_id = stimulus("retire-workers")
        info = {a: scheduler.worker_info(state.workers[a]) for a in addresses}
        logger.info("Retiring %d workers: %s", len(addresses), addresses)
        loop = asyncio.get_running_loop()
        outcomes = {a: self._retirements.get(a) or loop.create_future() for a in addresses}
        self._retirements.update(outcomes)
        now = time.time()
        deadline = None if timeout is None else now + timeout
        scheduler.handle(
            ev.RetireWorkers(stimulus_id, tuple(addresses), time=now, deadline=deadline),
            ev.Tick(stimulus_id, now),
        )
        if self._retirements and self._retirement_ticker is None:
            self._retirement_ticker = self._start_ticker(_RETIRE_TICK, self._retiring)
        await asyncio.wait(outcomes.values())
        retired = {a: info[a] for a, outcome in outcomes.items() if outcome.result()}
        for address in retired:
            if remove:
                scheduler.handle(ev.RemoveWorker(stimulus_id, address, safe=True))
        if close_workers:
            await asyncio.gather(*(self.close_worker(a) for a in retired))
        return retired

    def _worker_retired(self, instruction: ins.WorkerRetired) -> None:
        outcome = self._retirements.pop(instruction.address, None)
        if outcome is not None and not outcome.done():
            outcome.set_result(True)

    def _retirement_failed(self, instruction: ins.RetirementFailed) -> None:
        logger.warning("Could not retire %s: %s", sorted(instruction.addresses), instruction.reason)
        for address in instruction.addresses:
            outcome = self._retirements.pop(address, None)
            if outcome is not None and not outcome.done():
                outcome.set_result(False)

    async def close_worker(self, address: str) -> None:
        """Ask a worker to close for good (its nanny too, so that it is not restarted)."""
        try:
            await self.scheduler.pool.call(
                address, rq.CloseWorker(nanny=True), timeout=_CLOSE_TIMEOUT
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
        scheduler.handle(ev.Restart(stimulus("restart")))
        calls = [
            scheduler.pool.call(nanny, rq.RestartWorker(timeout), timeout=timeout)
            for nanny in nannies
        ]
        calls += [
            scheduler.pool.call(a, rq.CloseWorker(nanny=False), timeout=_CLOSE_TIMEOUT)
            for a, ws in old.items()
            if not ws.nanny
        ]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.warning("A worker did not restart cleanly: %r", result)
        if not wait_for_workers:
            return
        workers = scheduler.state.workers

        def back() -> int:
            return sum(1 for a, ws in workers.items() if a not in old and ws.status == "running")

        if not await self._until(
            lambda: back() >= len(nannies) and not any(a in workers for a in old), deadline
        ):
            raise TimeoutError(
                f"{back()} of {len(nannies)} workers came back within {timeout} s of a restart"
            )

    async def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Until at least ``n_workers`` workers are registered; TimeoutError after
        ``timeout`` seconds."""
        workers = self.scheduler.state.workers
        deadline = None if timeout is None else time.monotonic() + timeout
        if not await self._until(lambda: len(workers) >= n_workers, deadline):
            raise TimeoutError(f"Only {len(workers)}/{n_workers} workers arrived after {timeout} s")

    async def _until(self, condition: Callable[[], bool], deadline: float | None) -> bool:
        """Until ``condition()`` holds, checked each time a worker comes or goes; False
        if it does not by ``deadline`` (``time.monotonic()``)."""
        while not condition():
            if self._stopped:
                raise RuntimeError("The scheduler closed while waiting for workers")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._workers_changed.clear()
            try:
                await asyncio.wait_for(self._workers_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return condition()
        return True

    # ------------------------------------------------------------------ handlers

    def _handle_worker_killed(self, comm: Any, msg: rq.WorkerKilled) -> str:
        logger.warning("Worker %s is being killed by its nanny: %s", msg.worker, msg.reason)
        self.exit_reasons[msg.worker] = msg.reason
        return "OK"

    async def _handle_retire_workers(self, comm: Any, msg: rq.RetireWorkers) -> dict:
        choose = _workers_to_close_options(msg) if msg.workers is None else {}
        return await self.retire_workers(
            None if msg.workers is None else list(msg.workers),
            names=None if msg.names is None else list(msg.names),
            close_workers=msg.close_workers,
            remove=msg.remove,
            timeout=msg.timeout,
            **choose,
        )

    def _handle_workers_to_close(self, comm: Any, msg: rq.WorkersToClose) -> list:
        return self.workers_to_close(**_workers_to_close_options(msg))

    async def _handle_wait_for_workers(self, comm: Any, msg: rq.WaitForWorkers) -> str:
        await self.wait_for_workers(msg.n_workers, _seconds(msg.timeout))
        return "OK"

    def _handle_adaptive_target(self, comm: Any, msg: rq_d.AdaptiveTarget) -> int:
        return self.adaptive_target(parse_timedelta(msg.target_duration))

    async def _handle_watch_workers(self, comm: Any, msg: rq_d.WatchWorkers) -> rq_d.WorkerTable:
        if msg.since == self.workers_version and not self._stopped:
            watcher = asyncio.get_running_loop().create_future()
            self._watchers.add(watcher)
            timeout = _WATCH_TIMEOUT if msg.timeout is None else min(msg.timeout, _WATCH_TIMEOUT)
            try:
                await asyncio.wait_for(watcher, timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                self._watchers.discard(watcher)
        return rq_d.WorkerTable(self.workers_version, self.scheduler.identity())

    async def _handle_restart(self, comm: Any, msg: rq.Restart) -> str:
        await self.restart(_seconds(msg.timeout) or 30, msg.wait_for_workers)
        return "OK"


def _seconds(value: Any) -> float | None:
    return None if value is None else parse_timedelta(value)


def _workers_to_close_options(msg: rq.WorkersToClose | rq.RetireWorkers) -> dict:
    return {
        "n": msg.n,
        "target": msg.target,
        "minimum": msg.minimum,
        "memory_ratio": msg.memory_ratio,
        "attribute": msg.attribute,
    }
