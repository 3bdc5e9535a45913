"""The scheduler's decisions, as a pure state machine.

Theory of operation
-------------------
``SchedulerState.handle(*events)`` is the only way in.  Each event type has one
handler (those of workers joining, leaving and retiring, and of time passing, are in
:mod:`~distributary.scheduler.membership`) that updates the records it concerns and
returns *recommendations*: a
mapping ``key -> state`` for tasks that should move.  Recommendations run through
the transitions table ``(start, finish) -> method`` until none are left (a fixed
point); a pair missing from the table goes through ``released``.  Transitions emit
instructions (``ComputeTask`` to a worker, ``KeyInMemory`` to a client, ...) that
``handle`` returns for the server to send.  Nothing here does I/O, reads a clock
or imports asyncio, so tests drive it directly and check :meth:`validate` after
every step.

Reference counting: a task's data is kept while a client wants it (``who_wants``)
or a dependent still needs it (``waiters``); its record is kept while a client
wants it or a dependent record exists (``dependents``), so lost data can be
computed again.  Root tasks without restrictions wait in ``queued`` until a
worker has room (``distributed.scheduler.worker-saturation`` tasks per thread),
so a reduction over many chunks never floods the workers' memory.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from dask.utils import key_split

from distributary.exceptions import FutureLostError
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler import membership, replicas
from distributary.scheduler.graph import forget_lost, read_graph
from distributary.scheduler.placement import decide_worker, urgent_last
from distributary.scheduler.records import (
    FIRE_AND_FORGET,
    ClientRecord,
    Retirement,
    TaskRecord,
    TaskState,
    WorkerRecord,
    linked,
)
from distributary.scheduler.stealing import WorkStealing
from distributary.scheduler.validation import validate_state
from distributary.transitions import TransitionEngine

Recs = dict  # key -> recommended state

NO_KEYS: frozenset = frozenset()
_UNKNOWN_DURATION = 0.5


class SchedulerState(TransitionEngine):
    """Tasks, workers and clients, and the rules that move tasks between states."""

    def __init__(
        self,
        allowed_failures: int = 3,
        worker_saturation: float = 1.1,
        unknown_duration: float = _UNKNOWN_DURATION,
        transition_log_length: int = 100_000,
        validate: bool = False,
        worker_ttl: float | None = None,
        idle_timeout: float | None = None,
        work_stealing: bool = True,
    ):
        super().__init__(transition_log_length)
        self.allowed_failures = allowed_failures
        self.worker_ttl = worker_ttl  # seconds of silence after which a worker is removed
        self.idle_timeout = idle_timeout  # seconds without clients or work: close
        self.idle_since: float | None = None  # (set by the first Tick)
        self.worker_saturation = worker_saturation
        self.unknown_duration = unknown_duration
        self.validate_each_step = validate
        self.tasks: dict[Any, TaskRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.clients: dict[str, ClientRecord] = {}
        self.idle: dict[str, WorkerRecord] = {}
        self.unrunnable: dict[TaskRecord, None] = {}
        self.workers_by_name: dict[Any, str] = {}
        self.workers_by_host: dict[str, set[str]] = {}
        self.durations: dict[str, float] = {}
        self.retiring: dict[str, Retirement] = {}  # by worker address
        self.stealing = WorkStealing(work_stealing)
        self._queue: list = []
        self._queue_counter = itertools.count()
        self._run_ids = itertools.count(1)  # unique across records: a key may come back
        self._out: list[ins.SchedulerInstruction] = []
        # Each called with a GraphUpdated as a graph's tasks are taken in, before any of
        # them moves (the plugins' update_graph hooks); must not raise nor change the state.
        self.graph_observers: list[Callable[[ins.GraphUpdated], None]] = []
        self._handlers: dict[type, Callable[[Any], Recs]] = {
            ev.AddClient: self._handle_add_client,
            ev.RemoveClient: self._handle_remove_client,
            ev.UpdateGraph: self._handle_update_graph,
            ev.ClientDesiresKeys: self._handle_client_desires_keys,
            ev.FireAndForget: self._handle_fire_and_forget,
            ev.ClientReleasesKeys: self._handle_client_releases_keys,
            ev.CancelKeys: self._handle_cancel_keys,
            ev.RetryKeys: self._handle_retry_keys,
            ev.ScatterData: self._handle_scatter_data,
            ev.AddWorker: partial(membership.add_worker, self),
            ev.RemoveWorker: partial(membership.remove_worker, self),
            ev.WorkerStatusChange: partial(membership.worker_status_change, self),
            ev.WorkerHeartbeat: partial(membership.worker_heartbeat, self),
            ev.RetireWorkers: partial(membership.retire_workers, self),
            ev.CancelRetirement: partial(membership.cancel_retirement, self),
            ev.Tick: partial(membership.tick, self),
            ev.Restart: self._handle_restart,
            ev.TaskFinished: self._handle_task_finished,
            ev.TaskErred: self._handle_task_erred,
            ev.TaskRescheduled: self._handle_task_rescheduled,
            ev.LongRunning: self._handle_long_running,
            ev.AddKeys: self._handle_add_keys,
            ev.MissingData: self._handle_missing_data,
            ev.Transitions: lambda event: dict(event.recommendations),
            ev.StealResponse: partial(self.stealing.answered, self),
            replicas.CopyReplicas: partial(replicas.copy_replicas, self),
            replicas.DropReplicas: partial(replicas.drop_replicas, self),
        }
        self._table: dict[tuple[TaskState, TaskState], Callable[[TaskRecord, str], Recs]] = {
            ("released", "waiting"): self._released_to_waiting,
            ("released", "forgotten"): self._released_to_forgotten,
            ("waiting", "processing"): self._waiting_to_processing,
            ("waiting", "queued"): self._waiting_to_queued,
            ("waiting", "no-worker"): self._waiting_to_no_worker,
            ("waiting", "erred"): self._waiting_to_erred,
            ("waiting", "released"): self._waiting_to_released,
            ("queued", "processing"): self._queued_to_processing,
            ("queued", "released"): self._queued_to_released,
            ("queued", "erred"): self._waiting_to_erred,
            ("no-worker", "erred"): self._no_worker_to_erred,
            ("no-worker", "processing"): self._no_worker_to_processing,
            ("no-worker", "released"): self._no_worker_to_released,
            ("processing", "memory"): self._processing_to_memory,
            ("processing", "erred"): self._processing_to_erred,
            ("processing", "released"): self._processing_to_released,
            ("memory", "released"): self._memory_to_released,
            ("erred", "released"): self._erred_to_released,
        }

    # ------------------------------------------------------------------ entry point

    def handle(self, *events: ev.AnyEvent) -> list[ins.SchedulerInstruction]:
        """Apply events in order; return the instructions they produce."""
        for event in events:
            if isinstance(event, ev.FromClient) and event.seq:
                self._client(event.client).last_seq = event.seq
            recs = self._handlers[type(event)](event)
            if recs or (self._queue and self.idle):
                self._run(recs, event.stimulus_id)
            if self.stealing.pending:
                self.stealing.balance(self, event.stimulus_id)
            if self.validate_each_step:
                self.validate()
        out, self._out = self._out, []
        return out

    def emit(self, instruction: ins.SchedulerInstruction) -> None:
        """Add an instruction to those the event being handled produces."""
        self._out.append(instruction)

    def _run(self, recs: Recs, stimulus_id: str) -> None:
        while True:
            super()._run(recs, stimulus_id)
            # A slot counted for a queued task that did not start there (it was released,
            # or placed on another worker) is filled now: queued tasks never wait while a
            # worker has room.  Usually one of the two is empty.
            if not (self._queue and self.idle):
                return
            for ws in list(self.idle.values()):
                recs.update(self.fill_slots(ws))
            if not recs:
                return

    # ------------------------------------------------------------------ clients

    def _handle_add_client(self, event: ev.AddClient) -> Recs:
        self.clients.setdefault(event.client, ClientRecord(event.client))
        self.emit(ins.ClientAdded(event.stimulus_id, event.client))
        return {}

    def _handle_remove_client(self, event: ev.RemoveClient) -> Recs:
        cs = self.clients.get(event.client)
        if cs is None:
            return {}
        recs = self._release_wants(cs, list(cs.wants_what))
        del self.clients[event.client]
        self.emit(ins.ClientRemoved(event.stimulus_id, event.client))
        return recs

    def _client(self, client_id: str) -> ClientRecord:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = self.clients[client_id] = ClientRecord(client_id)
        return cs

    def _handle_update_graph(self, event: ev.UpdateGraph) -> Recs:
        cs = self._client(event.client)
        fresh, created = read_graph(self.tasks, event.tasks)
        if self.graph_observers:
            updated = ins.GraphUpdated(event.stimulus_id, cs.client_id, event.tasks, event.wanted)
            for observer in self.graph_observers:
                observer(updated)
        recs: Recs = {}
        lost = self._forget_lost(created, recs, event.stimulus_id) if created else NO_KEYS
        new = [ts for ts in fresh if ts.key not in lost]
        for ts in urgent_last(new):
            recs[ts.key] = "waiting"
        for ts in self._want(cs, event.wanted, event.stimulus_id, "unknown key", lost):
            self._report_existing(ts, cs.client_id, event.stimulus_id)
            if ts.state == "released" and ts.key not in recs:
                recs[ts.key] = "waiting"
        return recs

    def _want(
        self, cs: ClientRecord, keys: Iterable, stimulus_id: str, unknown: str, lost: set = NO_KEYS
    ) -> list[TaskRecord]:
        """Make the client want these keys; return their records.  A key this scheduler
        does not know is answered as cancelled (``unknown``, or "lost dependencies" for
        the keys in ``lost``), so that the client does not wait for it."""
        found = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                reason = "lost dependencies" if key in lost else unknown
                self.emit(
                    ins.KeyCancelled(stimulus_id, key, reason, client=cs.client_id, ack=cs.last_seq)
                )
                continue
            self._add_want(ts, cs)
            found.append(ts)
        return found

    def _forget_lost(self, created: set[TaskRecord], recs: Recs, stimulus_id: str) -> set:
        """Forget the new tasks on a key this scheduler does not know (a client's future
        of it was cancelled meanwhile); return their keys, to cancel for their clients."""
        lost, unlinked = forget_lost(self.tasks, created)
        for ts in lost:
            self.log(ts.key, "released", "forgotten", stimulus_id)
        for dep in unlinked:
            if dep.state == "released" and not dep.dependents and not self._is_needed(dep):
                recs[dep.key] = "forgotten"
        return {ts.key for ts in lost}

    def _report_existing(self, ts: TaskRecord, client: str, stimulus_id: str) -> None:
        if ts.state == "memory":
            workers = tuple(ws.address for ws in ts.who_has)
            self.emit(
                ins.KeyInMemory(
                    stimulus_id, ts.key, ts.type, workers, client=client, ack=self.ack(client)
                )
            )
        elif ts.state == "erred":
            self.emit(self._erred_instruction(ts, client, stimulus_id))

    def _handle_client_desires_keys(self, event: ev.ClientDesiresKeys) -> Recs:
        return self._desire(self._client(event.client), event.keys, event.stimulus_id)

    def _handle_fire_and_forget(self, event: ev.FireAndForget) -> Recs:
        tasks = self.tasks
        unfinished = [
            key
            for key in event.keys
            if key not in tasks or tasks[key].state not in ("memory", "erred")
        ]  # (a finished task ran to its end: nothing to keep it for)
        if not unfinished:
            return {}
        return self._desire(self._client(FIRE_AND_FORGET), unfinished, event.stimulus_id)

    def _desire(self, cs: ClientRecord, keys: Iterable[Any], stimulus_id: str) -> Recs:
        recs: Recs = {}
        for ts in self._want(cs, keys, stimulus_id, "lost"):
            self._report_existing(ts, cs.client_id, stimulus_id)
            if ts.state == "released":
                recs[ts.key] = "waiting"
        return recs

    def _handle_client_releases_keys(self, event: ev.ClientReleasesKeys) -> Recs:
        cs = self.clients.get(event.client)
        if cs is None:
            return {}
        return self._release_wants(cs, (self.tasks.get(k) for k in event.keys))

    def _release_wants(self, cs: ClientRecord, tasks: Iterable[TaskRecord | None]) -> Recs:
        recs: Recs = {}
        for ts in tasks:
            if ts is None or cs.client_id not in ts.who_wants:
                continue
            self._drop_want(ts, cs)
            if not ts.who_wants and not ts.waiters:
                if not ts.dependents:
                    recs[ts.key] = "forgotten"
                elif ts.state != "erred":  # releasing it would rerun its erred dependents
                    recs[ts.key] = "released"
        return recs

    def _handle_cancel_keys(self, event: ev.CancelKeys) -> Recs:
        recs: Recs = {}
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            clients = list(ts.who_wants) if event.force else [event.client]
            for client in clients:
                cs = self.clients.get(client)
                if cs is not None and client in ts.who_wants:
                    self.emit(
                        ins.KeyCancelled(
                            event.stimulus_id, key, "cancel", client=client, ack=cs.last_seq
                        )
                    )
                    recs.update(self._release_wants(cs, [ts]))
        return recs

    def _handle_retry_keys(self, event: ev.RetryKeys) -> Recs:
        # The client waits for these keys again: each is answered, and wanted.
        cs = self._client(event.client)
        recs: Recs = {}
        stack = self._want(cs, event.keys, event.stimulus_id, "lost")
        for ts in stack:
            if ts.state != "erred":
                self._report_existing(ts, cs.client_id, event.stimulus_id)
        seen: set[TaskRecord] = set()
        while stack:
            ts = stack.pop()
            if ts in seen or ts.state != "erred":
                continue
            seen.add(ts)
            erred_deps = [dep for dep in ts.dependencies if dep.state == "erred"]
            if erred_deps:
                stack.extend(erred_deps)
            else:  # a root cause: its erred dependents follow it from erred -> released
                recs[ts.key] = "waiting"
        return recs

    def _handle_scatter_data(self, event: ev.ScatterData) -> Recs:
        cs = self._client(event.client) if event.client else None
        recs: Recs = {}
        for key, addresses in event.who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskRecord(key, key_split(key))
            elif ts.state == "erred":  # scattered again after its data was lost
                recs.update(self._transition(ts, "released", event.stimulus_id))
                recs.pop(key, None)
            ts.nbytes = event.nbytes.get(key, 0)
            ts.type = event.types.get(key, "")
            for address in addresses:
                ws = self.workers.get(address)
                if ws is not None:
                    self._add_replica(ts, ws)
            if ts.who_has and ts.state == "released":
                ts.state = "memory"
                self.log(key, "released", "memory", event.stimulus_id)
            if cs is not None:
                self._add_want(ts, cs)
            if ts.state == "released" and self._is_needed(ts):  # its workers are gone
                recs[key] = "waiting"
        return recs

    # ------------------------------------------------------------------ workers

    def _handle_restart(self, event: ev.Restart) -> Recs:
        for client in self.clients:
            self.emit(ins.Restarted(event.stimulus_id, client=client, ack=self.ack(client)))
            self.clients[client].wants_what.clear()
        for ts in self.tasks.values():
            ts.state = "forgotten"  # (a record still referenced elsewhere must not look alive)
        self.tasks.clear()
        self.unrunnable.clear()
        self._queue.clear()
        self.idle.clear()
        self.emit(ins.ClusterRestarted(event.stimulus_id))
        for address in self.retiring:  # (nothing is left to move)
            self.emit(ins.WorkerRetired(event.stimulus_id, address))
        self.retiring.clear()
        for ws in self.workers.values():
            ws.status = "closing"
            ws.processing.clear()
            ws.long_running.clear()
            ws.has_what.clear()
            ws.nbytes = 0
        return {}

    def recommend_unrunnable(self) -> Recs:
        return {ts.key: "processing" for ts in urgent_last(self.unrunnable)}

    def _current_task(self, worker: str, key: Any, run_id: int) -> tuple:
        """The task and worker of a report, or ``(None, ws)`` if the report is stale."""
        ws = self.workers.get(worker)
        ts = self.tasks.get(key)
        if (
            ws is None
            or ts is None
            or ts.state != "processing"
            or ts.processing_on is not ws
            or ts.run_id != run_id
        ):
            return None, ws
        return ts, ws

    def _handle_task_finished(self, event: ev.TaskFinished) -> Recs:
        ts, ws = self._current_task(event.worker, event.key, event.run_id)
        if ws is None:
            return {}
        if ts is None:
            # A run this scheduler ended already: the worker was told to drop its result
            # (or is told now), so it is no replica, even if the key is in memory elsewhere.
            stale = self.tasks.get(event.key)
            if stale is None or (stale.processing_on is not ws and ws not in stale.who_has):
                self.emit(ins.FreeKeys(event.stimulus_id, (event.key,), worker=ws.address))
            return {}
        ts.nbytes = event.nbytes
        ts.type = sys.intern(event.type)  # (each message brings its own copy of "int")
        if event.duration > 0:
            old = self.durations.get(ts.prefix)
            self.durations[ts.prefix] = (
                event.duration if old is None else 0.5 * old + 0.5 * event.duration
            )
        self._add_replica(ts, ws)
        return {ts.key: "memory"}

    def _handle_task_erred(self, event: ev.TaskErred) -> Recs:
        ts, _ = self._current_task(event.worker, event.key, event.run_id)
        if ts is None:
            return {}
        if ts.retries > 0:
            ts.retries -= 1
            return {ts.key: "waiting"}
        self.set_exception(ts, event.exception, event.traceback, event.exception_text)
        return {ts.key: "erred"}

    def _handle_task_rescheduled(self, event: ev.TaskRescheduled) -> Recs:
        ts, _ = self._current_task(event.worker, event.key, event.run_id)
        if ts is None:
            return {}
        return {ts.key: "waiting"}

    def _handle_long_running(self, event: ev.LongRunning) -> Recs:
        ts, ws = self._current_task(event.worker, event.key, event.run_id)
        if ts is None:
            return {}
        ws.long_running.add(ts)
        self.update_idle(ws)
        return self.fill_slots(ws)

    def _handle_add_keys(self, event: ev.AddKeys) -> Recs:
        ws = self.workers.get(event.worker)
        if ws is None:
            return {}
        unwanted = []
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                self._add_replica(ts, ws)
            elif ts is None or ts.processing_on is not ws:  # (a stale copy of its own task)
                unwanted.append(key)
        if unwanted:
            self.emit(ins.FreeKeys(event.stimulus_id, tuple(unwanted), worker=ws.address))
        return {}

    def _handle_missing_data(self, event: ev.MissingData) -> Recs:
        ts = self.tasks.get(event.key)
        ws = self.workers.get(event.errant_worker)
        if ts is None or ws is None or ws not in ts.who_has:
            return {}
        self.remove_replica(ts, ws)
        return {} if ts.who_has or ts.state != "memory" else {ts.key: "released"}

    # ------------------------------------------------------------------ bookkeeping

    # (who_wants and who_has are tuples, replaced when they change: most tasks have one
    # holder and one client, and a tuple of one is a fifth of the size of a set.)

    def _add_want(self, ts: TaskRecord, cs: ClientRecord) -> None:
        if cs.client_id not in ts.who_wants:
            ts.who_wants += (cs.client_id,)
        cs.wants_what.add(ts)

    def _drop_want(self, ts: TaskRecord, cs: ClientRecord) -> None:
        ts.who_wants = tuple(client for client in ts.who_wants if client != cs.client_id)
        cs.wants_what.discard(ts)

    def _add_replica(self, ts: TaskRecord, ws: WorkerRecord) -> None:
        if ws not in ts.who_has:
            ts.who_has += (ws,)
            ws.has_what[ts] = None
            ws.nbytes += max(ts.nbytes, 0)

    def remove_replica(self, ts: TaskRecord, ws: WorkerRecord) -> None:
        if ws in ts.who_has:
            ts.who_has = tuple(holder for holder in ts.who_has if holder is not ws)
        if ws.has_what.pop(ts, False) is None:
            ws.nbytes -= max(ts.nbytes, 0)

    def set_exception(self, ts: TaskRecord, exc: Any, tb: Any, text: str) -> None:
        ts.exception = exc
        ts.traceback = tb
        ts.exception_text = text
        ts.exception_blame = ts

    def _erred_instruction(self, ts: TaskRecord, client: str, stimulus_id: str) -> ins.KeyErred:
        blame = ts.exception_blame or ts
        return ins.KeyErred(
            stimulus_id,
            ts.key,
            blame.exception,
            blame.traceback,
            blame.exception_text,
            client=client,
            ack=self.ack(client),
        )

    def ack(self, client: str) -> int:
        cs = self.clients.get(client)
        return 0 if cs is None else cs.last_seq

    def update_idle(self, ws: WorkerRecord) -> None:
        # Re-inserting moves the worker to the end: the idle workers take turns.
        self.idle.pop(ws.address, None)
        present = ws.address in self.workers
        if present and ws.has_room():
            self.idle[ws.address] = ws
        self.stealing.note(ws, present)

    def queued_tasks(self) -> list[TaskRecord]:
        """The tasks queued until a worker has room for them (in no particular order)."""
        return [ts for _, _, ts in self._queue if ts.state == "queued"]

    def fill_slots(self, ws: WorkerRecord) -> Recs:
        """Recommend queued tasks for the room this worker has."""
        recs: Recs = {}
        if not ws.has_room():
            return recs
        free = ws.slots - ws.occupied
        queue = self._queue
        while queue and free > 0:
            _, _, ts = heapq.heappop(queue)
            if ts.state != "queued" or ts.key in recs:
                continue
            if self._is_needed(ts):
                recs[ts.key] = "processing"
                free -= 1
            else:  # nobody wants it any more (its release may be pending): do not start it
                recs[ts.key] = "released"
        return recs

    def _is_needed(self, ts: TaskRecord) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _release_dependencies(self, ts: TaskRecord, recs: Recs) -> None:
        """``ts`` no longer needs its dependencies' data: release what nobody needs."""
        for dep in ts.dependencies:
            dep.waiters.discard(ts)
            if not dep.waiters and not dep.who_wants and dep.state not in ("released", "erred"):
                recs[dep.key] = "released"

    def _after_release(self, ts: TaskRecord, recs: Recs) -> None:
        if self._is_needed(ts):
            recs[ts.key] = "waiting"
        elif not ts.dependents:
            recs[ts.key] = "forgotten"

    # ------------------------------------------------------------------ transitions

    def _released_to_waiting(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "waiting"
        for dep in ts.dependencies:
            if self.tasks.get(dep.key) is not dep:  # unknown when the graph arrived
                ts.exception = KeyError(f"Dependency {dep.key!r} of {ts.key!r} is unknown")
                ts.exception_text = repr(ts.exception)
                ts.exception_blame = ts
                recs[ts.key] = "erred"
                return recs
        if ts.payload is None and not ts.dependencies:
            ts.exception = FutureLostError(ts.key)
            ts.exception_text = repr(ts.exception)
            ts.exception_blame = ts
            recs[ts.key] = "erred"
            return recs
        again = []  # dependencies to compute again (their data was lost)
        for dep in ts.dependencies:
            linked(dep, "waiters").add(ts)
            if dep.state == "erred":
                ts.exception_blame = dep.exception_blame or dep
                recs[ts.key] = "erred"
            elif dep.state != "memory" or not dep.who_has:  # (lost: its release is pending)
                linked(ts, "waiting_on").add(dep)
                if dep.state == "released":
                    again.append(dep)
        for dep in urgent_last(again):
            recs[dep.key] = "waiting"
        if not ts.waiting_on and ts.key not in recs:
            recs[ts.key] = "processing"
        return recs

    def _waiting_to_processing(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ws = decide_worker(self, ts)
        if ws is None:
            return {ts.key: "queued" if ts.is_queueable and self.workers else "no-worker"}
        self.assign(ts, ws, stimulus_id)
        return {}

    def assign(self, ts: TaskRecord, ws: WorkerRecord, stimulus_id: str) -> None:
        """Send the task to ``ws`` to run: a new run of it."""
        ts.state = "processing"
        ts.processing_on = ws
        ts.run_id = next(self._run_ids)
        ws.processing.add(ts)
        self.update_idle(ws)
        self.emit(ins.compute_task(ts, stimulus_id))

    def _waiting_to_queued(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ts.state = "queued"
        heapq.heappush(self._queue, (ts.priority, next(self._queue_counter), ts))
        return {}

    def _waiting_to_no_worker(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ts.state = "no-worker"
        self.unrunnable[ts] = None
        return {}

    def _queued_to_processing(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ws = decide_worker(self, ts)
        if ws is None:
            heapq.heappush(self._queue, (ts.priority, next(self._queue_counter), ts))
            return {}
        self.assign(ts, ws, stimulus_id)
        return {}

    def _no_worker_to_processing(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ws = decide_worker(self, ts)
        if ws is None:
            if ts.is_queueable and self.workers:
                del self.unrunnable[ts]
                return self._waiting_to_queued(ts, stimulus_id)
            return {}
        del self.unrunnable[ts]
        self.assign(ts, ws, stimulus_id)
        return {}

    def _waiting_to_erred(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        return self._to_erred(ts, stimulus_id)

    def _no_worker_to_erred(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        del self.unrunnable[ts]
        return self._to_erred(ts, stimulus_id)

    def _processing_to_erred(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs = self.unassign(ts)
        recs.update(self._to_erred(ts, stimulus_id))
        return recs

    def _to_erred(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "erred"
        ts.waiting_on.clear()
        self._release_dependencies(ts, recs)
        blame = ts.exception_blame or ts
        for dependent in ts.dependents:
            if dependent.state in ("waiting", "queued", "no-worker", "processing"):
                dependent.exception_blame = blame
                recs[dependent.key] = "erred"
        for client in ts.who_wants:
            self.emit(self._erred_instruction(ts, client, stimulus_id))
        self._drop_fire_and_forget(ts)
        if not self._is_needed(ts) and not ts.dependents:  # nobody will ask for the error
            recs[ts.key] = "forgotten"
        return recs

    def _drop_fire_and_forget(self, ts: TaskRecord) -> bool:
        """A finished task no longer needs the fire-and-forget client's want."""
        if FIRE_AND_FORGET not in ts.who_wants:
            return False
        cs = self.clients[FIRE_AND_FORGET]
        self._drop_want(ts, cs)
        if not cs.wants_what:  # (no record of a pseudo-client that wants nothing)
            del self.clients[FIRE_AND_FORGET]
        return True

    def unassign(self, ts: TaskRecord) -> Recs:
        """Take the task off its worker; recommend queued tasks for the room made."""
        ws = ts.processing_on
        ts.processing_on = None
        if ws is None:
            return {}
        ws.processing.discard(ts)
        ws.long_running.discard(ts)
        if ws.address not in self.workers:
            return {}
        self.update_idle(ws)
        return self.fill_slots(ws)

    def _processing_to_memory(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs = self.unassign(ts)
        ts.state = "memory"
        ready = []
        for dependent in ts.dependents:
            dependent.waiting_on.discard(ts)
            if not dependent.waiting_on and dependent.state == "waiting":
                ready.append(dependent)
        for dependent in urgent_last(ready):
            recs[dependent.key] = "processing"
        self._release_dependencies(ts, recs)
        self._drop_fire_and_forget(ts)
        if ts.who_wants:
            workers = tuple(ws.address for ws in ts.who_has)
            for client in ts.who_wants:
                self.emit(
                    ins.KeyInMemory(
                        stimulus_id, ts.key, ts.type, workers, client=client, ack=self.ack(client)
                    )
                )
        elif not ts.waiters:
            recs[ts.key] = "released"
        return recs

    def _processing_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ws = ts.processing_on
        recs = self.unassign(ts)
        if ws is not None and ws.address in self.workers:
            self.emit(ins.FreeKeys(stimulus_id, (ts.key,), worker=ws.address))
        ts.state = "released"
        self._release_dependencies(ts, recs)
        self._after_release(ts, recs)
        return recs

    def _memory_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        if ts.who_has and self._is_needed(ts):
            # A recommendation made before a dependent came back to wait for this data
            # (a retry, a reschedule, a lost worker): keep it.
            return recs
        for ws in list(ts.who_has):
            self.remove_replica(ts, ws)
            self.emit(ins.FreeKeys(stimulus_id, (ts.key,), worker=ws.address))
        ts.state = "released"
        for client in ts.who_wants:
            self.emit(ins.KeyLost(stimulus_id, ts.key, client=client, ack=self.ack(client)))
        for dependent in ts.dependents:
            if dependent.state == "waiting":
                linked(dependent, "waiting_on").add(ts)
            elif dependent.state in ("processing", "no-worker"):
                recs[dependent.key] = "released"
        self._after_release(ts, recs)
        return recs

    def _waiting_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "released"
        ts.waiting_on.clear()
        self._release_dependencies(ts, recs)
        self._after_release(ts, recs)
        return recs

    def _queued_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        ts.state = "released"  # its heap entry is skipped when popped
        recs: Recs = {}
        self._after_release(ts, recs)
        return recs

    def _no_worker_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        del self.unrunnable[ts]
        return self._waiting_to_released(ts, stimulus_id)

    def _erred_to_released(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "released"
        # The exception stays: dependents still erred may blame this task.
        ts.exception_blame = None
        for dependent in ts.dependents:
            if dependent.state == "erred" and not any(
                dep.state == "erred" for dep in dependent.dependencies
            ):
                recs[dependent.key] = "released"
        self._after_release(ts, recs)
        return recs

    def _released_to_forgotten(self, ts: TaskRecord, stimulus_id: str) -> Recs:
        recs: Recs = {}
        if ts.who_wants or ts.dependents:
            return recs  # still wanted: the record stays for lineage
        ts.state = "forgotten"
        for dep in ts.dependencies:
            dep.dependents.discard(ts)
            dep.waiters.discard(ts)
            if not dep.dependents and not dep.who_wants:
                recs[dep.key] = "forgotten"
            elif dep.state == "memory" and not dep.waiters and not dep.who_wants:
                recs[dep.key] = "released"
        del self.tasks[ts.key]
        return recs

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Check the invariants that tie the records together; raise AssertionError."""
        validate_state(self)
