"""Copies of data on purpose: ``replicate`` and ``rebalance``.

Theory of operation
-------------------
The plans are pure (:mod:`distributary.scheduler.replicas`); this extension hands
them to the state, which asks workers to fetch from the holders or to drop their
copies, and waits for the copies to arrive.  A worker reports each copy it fetched
(``add-keys``) or could not get from a holder (``missing-data``): this extension takes
those messages, passes them on to the state and then wakes whoever waits for copies,
so nothing polls.  A round of copies is over when each copy is there (or can no longer
be: the key or the worker is gone), or when no copy has arrived for
``_PATIENCE`` seconds.

*replicate*: drop the copies beyond ``n`` (with ``delete``), then copy in rounds, each
holder giving at most ``branching_factor`` copies a round, until each key has ``n``
copies on the workers, or a round makes none.

*rebalance*: one round of moves from the workers holding more bytes than the mean to
those holding less; a key leaves its sender once its copy has arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from distributary.protocol.data import Placed, Rebalance, Replicate
from distributary.protocol.worker_messages import AddKeys, MissingData
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.lifecycle import stimulus
from distributary.scheduler.records import TaskRecord, WorkerRecord
from distributary.scheduler.replicas import (
    CopyReplicas,
    DropReplicas,
    Plan,
    plan_copies,
    plan_deletions,
    plan_moves,
)

_PATIENCE = 2.0  # seconds without a copy arriving after which a round is over

OK = Placed("OK")


class DataReplication(SchedulerExtension):
    """The scheduler's ``replicate`` and ``rebalance``."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self._arrivals = asyncio.Event()  # set when a worker reports copies
        self._copying = 0  # rounds waiting for copies
        self.handlers.update({Replicate: self._handle_replicate, Rebalance: self._handle_rebalance})
        self.message_handlers.update({AddKeys: self._reported, MissingData: self._reported})

    def _reported(self, msg: AddKeys | MissingData) -> None:
        self.scheduler.handle(msg)
        if self._copying:
            self._arrivals.set()

    # ------------------------------------------------------------------ replicate

    async def replicate(
        self,
        keys: Iterable,
        n: int | None = None,
        workers: Iterable | None = None,
        branching_factor: int = 2,
        delete: bool = True,
    ) -> Placed:
        """Have ``n`` copies of each key's data on ``workers`` (one on each when ``n`` is
        None); ``partial-fail`` names the keys without data, or short of copies after a
        round that made none."""
        if branching_factor < 1:
            raise ValueError(f"branching_factor must be at least 1, not {branching_factor}")
        if n is not None and n < 1:
            raise ValueError(f"replicate keeps at least one copy: n must be at least 1, not {n}")
        pool = self._running_workers(workers)
        if not pool:
            raise ValueError("No running worker to replicate data to")
        tasks, missing = self._tasks(keys)
        if missing:
            return Placed("partial-fail", tuple(missing))
        stimulus_id = stimulus("replicate")
        if delete:
            wanted = len(pool) if n is None else min(n, len(pool))
            self.scheduler.handle(DropReplicas(stimulus_id, plan_deletions(tasks, pool, wanted)))
        while True:
            pool = [ws for ws in pool if self._running(ws)]
            wanted = len(pool) if n is None else min(n, len(pool))
            tasks = [ts for ts in tasks if self._in_memory(ts)]
            copies = plan_copies(tasks, pool, wanted, branching_factor)
            if not copies:
                return OK
            self.scheduler.handle(CopyReplicas(stimulus_id, copies))
            asked = sum(map(len, copies.values()))
            if await self._until_copied(copies) == asked:  # (none arrived)
                short = dict.fromkeys(key for keys in copies.values() for key in keys)
                return Placed("partial-fail", tuple(short))

    # ------------------------------------------------------------------ rebalance

    async def rebalance(
        self, keys: Iterable | None = None, workers: Iterable | None = None
    ) -> Placed:
        """Even out the bytes held by ``workers`` by moving the data of ``keys`` (any
        when None); ``partial-fail`` names the keys without data."""
        pool = self._running_workers(workers)
        tasks = None
        if keys is not None:
            tasks, missing = self._tasks(keys)
            if missing:
                return Placed("partial-fail", tuple(missing))
        moves = plan_moves(tasks, pool)
        if not moves:
            return OK
        stimulus_id = stimulus("rebalance")
        copies: Plan = {}
        for key, _, recipient in moves:
            copies.setdefault(recipient, []).append(key)
        self.scheduler.handle(CopyReplicas(stimulus_id, copies))
        await self._until_copied(copies)
        state = self.scheduler.state
        drops: Plan = {}
        for key, sender, recipient in moves:
            ts = state.tasks.get(key)
            if ts is not None and state.workers.get(recipient) in ts.who_has:
                drops.setdefault(sender, []).append(key)
        self.scheduler.handle(DropReplicas(stimulus_id, drops))
        return OK

    # ------------------------------------------------------------------ helpers

    async def _until_copied(self, copies: Plan) -> int:
        """Until the copies asked for are made (or can no longer be), or none arrives
        for ``_PATIENCE`` seconds; how many are still missing."""
        self._copying += 1
        try:
            while self._missing(copies):
                self._arrivals.clear()
                try:
                    await asyncio.wait_for(self._arrivals.wait(), _PATIENCE)
                except asyncio.TimeoutError:
                    return self._missing(copies)
            return 0
        finally:
            self._copying -= 1

    def _missing(self, copies: Plan) -> int:
        state = self.scheduler.state
        missing = 0
        for address, keys in copies.items():
            ws = state.workers.get(address)
            if ws is None or ws.status != "running":
                continue
            for key in keys:
                ts = state.tasks.get(key)
                if ts is not None and ts.state == "memory" and ws not in ts.who_has:
                    missing += 1
        return missing

    def _running_workers(self, workers: Iterable | None) -> list[WorkerRecord]:
        """The running workers among ``workers`` (addresses or names; all when None);
        ValueError naming those that are not workers of this scheduler."""
        state = self.scheduler.state
        if workers is None:
            records = list(state.workers.values())
        else:
            addresses = [self.scheduler.coerce_address(w) for w in workers]
            unknown = [a for a in addresses if a not in state.workers]
            if unknown:
                raise ValueError(f"No such worker(s): {', '.join(map(str, unknown))}")
            records = [state.workers[a] for a in dict.fromkeys(addresses)]
        return [ws for ws in records if ws.status == "running"]

    def _running(self, ws: WorkerRecord) -> bool:
        return self.scheduler.state.workers.get(ws.address) is ws and ws.status == "running"

    def _in_memory(self, ts: TaskRecord) -> bool:
        return self.scheduler.state.tasks.get(ts.key) is ts and ts.state == "memory"

    def _tasks(self, keys: Iterable) -> tuple[list[TaskRecord], list]:
        """The records of the keys whose data is on the cluster, and the other keys."""
        tasks = self.scheduler.state.tasks
        found, missing = [], []
        for key in dict.fromkeys(keys):
            ts = tasks.get(key)
            if ts is not None and ts.state == "memory" and ts.who_has:
                found.append(ts)
            else:
                missing.append(key)
        return found, missing

    # ------------------------------------------------------------------ handlers

    async def _handle_replicate(self, comm: Any, msg: Replicate) -> Placed:
        await self.scheduler.after_flush(msg.client, msg.uid)
        return await self.replicate(msg.keys, msg.n, msg.workers, msg.branching_factor, msg.delete)

    async def _handle_rebalance(self, comm: Any, msg: Rebalance) -> Placed:
        await self.scheduler.after_flush(msg.client, msg.uid)
        return await self.rebalance(msg.keys, msg.workers)
