"""The worker's decisions, as a pure state machine.

Theory of operation
-------------------
``WorkerState.handle(*events)`` is the only way in.  One handler per event type
updates the records and returns recommendations ``key -> state``; they run through
the transitions table ``(start, finish) -> method`` to a fixed point.  Then the
machine fills free threads with the highest-priority ready tasks (``Execute``) and
asks peers for missing dependencies and for the replicas the scheduler wants here
(``GatherDep``, several keys per request, a bounded number of peers at once).
Messages for the scheduler come out as instructions too.  Data lives in
``self.data``, any MutableMapping (a dict, or a spilling buffer).  Nothing here
does network I/O or reads a clock.

Task states: ``released -> waiting -> ready | constrained -> executing -> memory``,
``fetch -> flight -> memory`` for dependencies held by peers, ``long-running`` for
tasks that seceded, and ``cancelled`` for work the scheduler released while it
was executing or in flight (its result is dropped when it arrives).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, get_args

from distributary.transitions import TransitionEngine
from distributary.worker import events as ev
from distributary.worker import instructions as ins

Recs = dict

# The states of a task on a worker (see the theory of operation above).
WorkerTaskState = Literal[
    "released",
    "waiting",
    "ready",
    "executing",
    "long-running",
    "memory",
    "fetch",
    "flight",
    "cancelled",
    "forgotten",
]
# The states of a task the worker holds (all but "forgotten").
HELD_STATES: tuple[str, ...] = get_args(WorkerTaskState)[:-1]

# Replicas wait behind every dependency of a task to run here.
_REPLICA_PRIORITY = (float("inf"),)

# States of a dependency that a waiting task may wait for: on its way, or computed here.
_PRODUCING = frozenset(
    {"fetch", "flight", "released", "waiting", "ready", "executing", "long-running", "cancelled"}
)


class WorkerTask:
    """A task, or a dependency fetched from a peer, as the worker tracks it."""

    __slots__ = (
        "key",
        "state",
        "run_id",
        "payload",
        "priority",
        "dependencies",
        "dependents",
        "waiting_for_data",
        "who_has",
        "nbytes",
        "type",
        "resources",
        "coming_from",
        "replica",
    )

    def __init__(self, key: Any):
        self.key = key
        self.state: WorkerTaskState = "released"
        self.run_id = 0  # > 0 once the scheduler asked this worker to compute it
        self.payload: Any = None
        self.priority: tuple = ()
        self.dependencies: set[WorkerTask] = set()
        self.dependents: set[WorkerTask] = set()
        self.waiting_for_data: set[WorkerTask] = set()
        self.who_has: set[str] = set()
        self.nbytes = 0
        self.type = ""
        self.resources: dict | None = None
        self.coming_from: str | None = None
        self.replica = False  # the scheduler wants a copy here (acquire-replicas)

    def __repr__(self) -> str:
        return f"<WorkerTask {self.key!r} {self.state}>"


class WorkerState(TransitionEngine):
    """The tasks of one worker and the rules that move them."""

    def __init__(
        self,
        address: str,
        nthreads: int,
        data: MutableMapping | None = None,
        resources: dict | None = None,
        transfer_batch_bytes: int = 50_000_000,
        max_peers_in_flight: int = 50,
        transition_log_length: int = 100_000,
        validate: bool = False,
    ):
        super().__init__(transition_log_length)
        self.address = address
        self.nthreads = nthreads
        self.data: MutableMapping = {} if data is None else data
        self.total_resources = dict(resources or {})
        self.available_resources = dict(self.total_resources)
        self.transfer_batch_bytes = transfer_batch_bytes
        self.max_peers_in_flight = max_peers_in_flight
        self.validate_each_step = validate
        self.paused = False
        self.nbytes = 0  # total size of the results held (the tasks in memory)
        self.executed_count = 0  # tasks run to their end here (whatever the outcome)
        self.suspicious: dict[Any, int] = {}  # by key: peers that did not have it
        self.tasks: dict[Any, WorkerTask] = {}
        self.executing: set[WorkerTask] = set()
        self.long_running: set[WorkerTask] = set()
        self.in_flight_peers: dict[str, set[WorkerTask]] = {}
        self._ready: list = []
        self._constrained: deque[WorkerTask] = deque()
        self._rejoining: deque[WorkerTask] = deque()  # seceded tasks waiting for a slot
        self._fetch: list = []
        self._counter = itertools.count()
        self._out: list[ins.Instruction] = []
        self._handlers: dict[type, Callable[[Any], Recs]] = {
            ev.ComputeTask: self._handle_compute_task,
            ev.FreeKeys: self._handle_free_keys,
            ev.StealRequest: self._handle_steal_request,
            ev.ExecuteSuccess: self._handle_execute_success,
            ev.ExecuteFailure: self._handle_execute_failure,
            ev.RescheduleTask: self._handle_reschedule,
            ev.Secede: self._handle_secede,
            ev.Rejoin: self._handle_rejoin,
            ev.GatherDepSuccess: self._handle_gather_success,
            ev.GatherDepFailure: self._handle_gather_failure,
            ev.GatherDepError: self._handle_gather_error,
            ev.UpdateData: self._handle_update_data,
            ev.AcquireReplicas: self._handle_acquire_replicas,
            ev.PauseChange: self._handle_pause_change,
        }
        self._table: dict[
            tuple[WorkerTaskState, WorkerTaskState], Callable[[WorkerTask, str], Recs]
        ] = {
            ("released", "waiting"): self._released_to_waiting,
            ("released", "fetch"): self._released_to_fetch,
            ("released", "forgotten"): self._to_forgotten,
            ("released", "memory"): self._arrived_to_memory,
            ("fetch", "memory"): self._arrived_to_memory,
            ("waiting", "memory"): self._arrived_to_memory,
            ("ready", "memory"): self._arrived_to_memory,
            ("waiting", "ready"): self._waiting_to_ready,
            ("waiting", "released"): self._waiting_to_released,
            ("ready", "executing"): self._ready_to_executing,
            ("ready", "released"): self._ready_to_released,
            ("executing", "memory"): self._executing_to_memory,
            ("executing", "released"): self._executing_to_released,
            ("executing", "long-running"): self._executing_to_long_running,
            ("long-running", "memory"): self._executing_to_memory,
            ("long-running", "executing"): self._long_running_to_executing,
            ("long-running", "released"): self._executing_to_released,
            ("cancelled", "released"): self._cancelled_to_released,
            ("cancelled", "executing"): self._cancelled_to_resumed,
            ("cancelled", "long-running"): self._cancelled_to_resumed,
            ("cancelled", "flight"): self._cancelled_to_resumed,
            ("fetch", "flight"): self._fetch_to_flight,
            ("fetch", "released"): self._fetch_to_released,
            ("flight", "memory"): self._arrived_to_memory,
            ("flight", "fetch"): self._flight_to_fetch,
            ("flight", "released"): self._flight_to_released,
            ("memory", "released"): self._memory_to_released,
        }

    # ------------------------------------------------------------------ entry point

    def handle(self, *events: ev.AnyEvent) -> list[ins.Instruction]:
        """Apply events in order; return the instructions they produce."""
        stimulus_id = ""
        for event in events:
            stimulus_id = event.stimulus_id
            recs = self._handlers[type(event)](event)
            if recs:
                self._run(recs, stimulus_id)
        if events:
            self._ensure_computing(stimulus_id)
            self._ensure_communicating(stimulus_id)
            if self.validate_each_step:
                self.validate()
        out, self._out = self._out, []
        return out

    @property
    def busy_threads(self) -> int:
        """Threads running tasks (seceded tasks do not count)."""
        return len(self.executing)

    def _task(self, key: Any) -> WorkerTask:
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = WorkerTask(key)
        return ts

    # ------------------------------------------------------------------ handlers

    def _handle_compute_task(self, event: ev.ComputeTask) -> Recs:
        ts = self._task(event.key)
        ts.run_id = event.run_id
        ts.payload = event.payload
        ts.priority = event.priority
        if ts.state == "memory":
            self._out.append(
                ins.TaskFinished(event.stimulus_id, ts.key, ts.run_id, ts.nbytes, ts.type, 0.0)
            )
            return {}
        if ts.state == "cancelled":
            return {ts.key: "executing" if ts.coming_from is None else "flight"}
        if ts.state not in ("released", "fetch"):
            return {}
        ts.resources = event.resources  # not before: a running task gives back what it took
        recs: Recs = {}
        if ts.state == "fetch":
            recs[ts.key] = "released"
        for dep_key, holders in event.who_has.items():
            dep = self._task(dep_key)
            dep.who_has.update(h for h in holders if h != self.address)
            if dep.state != "memory":  # else our own measure stands
                dep.nbytes = event.nbytes.get(dep_key, dep.nbytes)
            dep.dependents.add(ts)
            ts.dependencies.add(dep)
            if dep.state != "memory":
                ts.waiting_for_data.add(dep)
                if dep.state == "released":
                    recs[dep_key] = "fetch"
                elif dep.state == "cancelled" and dep.coming_from is not None:
                    recs[dep_key] = "flight"  # the transfer under way will do
                if not dep.priority or ts.priority < dep.priority:
                    dep.priority = ts.priority
        recs[ts.key] = "waiting"
        return recs

    def _handle_free_keys(self, event: ev.FreeKeys) -> Recs:
        recs: Recs = {}
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state != "cancelled":
                self._forget(ts, recs)
        return recs

    def _forget(self, ts: WorkerTask, recs: Recs) -> None:
        ts.run_id = 0
        ts.payload = None
        ts.replica = False
        recs[ts.key] = "forgotten"

    def _handle_steal_request(self, event: ev.StealRequest) -> Recs:
        """Give the task back if it has not started here (and is still that run)."""
        ts = self.tasks.get(event.key)
        accepted = ts is not None and ts.run_id == event.run_id and ts.state in ("waiting", "ready")
        self._out.append(ins.StealResponse(event.stimulus_id, event.key, event.run_id, accepted))
        recs: Recs = {}
        if accepted:
            self._forget(ts, recs)
        return recs

    def _ran(self, key: Any) -> WorkerTask | None:
        """The task whose run just ended (counted in ``executed_count``); None if it is
        not running here."""
        ts = self.tasks.get(key)
        if ts is None or ts.state not in ("executing", "long-running", "cancelled"):
            return None
        self.executed_count += 1
        return ts

    def _handle_execute_success(self, event: ev.ExecuteSuccess) -> Recs:
        ts = self._ran(event.key)
        if ts is None:
            return {}
        if ts.state == "cancelled":
            return {ts.key: "released"}
        ts.nbytes = event.nbytes
        ts.type = event.type
        self.data[ts.key] = event.value
        self._out.append(
            ins.TaskFinished(
                event.stimulus_id, ts.key, ts.run_id, ts.nbytes, ts.type, event.duration
            )
        )
        return {ts.key: "memory"}

    def _handle_execute_failure(self, event: ev.ExecuteFailure) -> Recs:
        ts = self._ran(event.key)
        if ts is None:
            return {}
        if ts.state != "cancelled":
            self._out.append(
                ins.TaskErred(
                    event.stimulus_id,
                    ts.key,
                    ts.run_id,
                    event.exception,
                    event.traceback,
                    event.exception_text,
                    event.traceback_text,
                )
            )
        return {ts.key: "released"}

    def _handle_reschedule(self, event: ev.RescheduleTask) -> Recs:
        ts = self._ran(event.key)
        if ts is None:
            return {}
        if ts.state != "cancelled":
            self._out.append(ins.TaskRescheduled(event.stimulus_id, ts.key, ts.run_id))
        return {ts.key: "released"}

    def _handle_secede(self, event: ev.Secede) -> Recs:
        ts = self.tasks.get(event.key)
        if ts is not None and ts.state == "cancelled" and ts in self.executing:
            self._release_thread(ts)  # it stays cancelled, but no longer takes a thread
            self.long_running.add(ts)
            return {}
        if ts is None or ts.state != "executing":
            return {}
        return {ts.key: "long-running"}

    def _handle_rejoin(self, event: ev.Rejoin) -> Recs:
        ts = self.tasks.get(event.key)
        if ts is None or ts not in self.long_running:  # it holds its thread still
            self._out.append(ins.Rejoined(event.stimulus_id, event.key))
        else:
            self._rejoining.append(ts)  # served first when a slot frees
        return {}

    def _handle_gather_success(self, event: ev.GatherDepSuccess) -> Recs:
        recs: Recs = {}
        arrived = []
        peers_tasks = self.in_flight_peers.pop(event.worker, set())
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in peers_tasks:
                continue
            if key in event.data:
                ts.nbytes = event.nbytes.get(key, ts.nbytes)
                ts.coming_from = None
                if ts.state == "cancelled":
                    recs[key] = "released"
                    continue
                self.data[key] = event.data[key]
                arrived.append(key)
            else:
                recs.update(self._lost_holder(ts, event.worker, event.stimulus_id))
        # Added last, these run first (the engine takes the newest recommendation first):
        # a dependent given back for a missing key must not release them on its way out.
        for key in arrived:
            recs[key] = "memory"
        if arrived:
            self._out.append(ins.AddKeys(event.stimulus_id, tuple(arrived)))
        return recs

    def _handle_gather_failure(self, event: ev.GatherDepFailure) -> Recs:
        recs: Recs = {}
        peers_tasks = self.in_flight_peers.pop(event.worker, set())
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts in peers_tasks:
                recs.update(self._lost_holder(ts, event.worker, event.stimulus_id))
        return recs

    def _handle_gather_error(self, event: ev.GatherDepError) -> Recs:
        recs: Recs = {}
        peers_tasks = self.in_flight_peers.pop(event.worker, set())
        error = event.error
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in peers_tasks:
                continue
            ts.coming_from = None
            ts.replica = False
            recs[key] = "released"
            if ts.state == "cancelled":
                continue
            # the dependents fail, and so does ``ts`` if the scheduler asked us to compute it
            failed = [ts] if ts.run_id else []
            failed += [dep for dep in ts.dependents if dep.state == "waiting" and dep.run_id]
            for dependent in failed:
                self._out.append(
                    ins.TaskErred(
                        event.stimulus_id,
                        dependent.key,
                        dependent.run_id,
                        error.exception,
                        error.traceback,
                        error.exception_text,
                        error.traceback_text,
                    )
                )
                dependent.run_id = 0
                if dependent is not ts:
                    recs[dependent.key] = "forgotten"
        return recs

    def _lost_holder(self, ts: WorkerTask, worker: str, stimulus_id: str) -> Recs:
        """``worker`` did not give us ``ts``: try another holder, or give the dependents back."""
        ts.coming_from = None
        ts.who_has.discard(worker)
        self.suspicious[ts.key] = self.suspicious.get(ts.key, 0) + 1
        if ts.state == "cancelled":
            return {ts.key: "released"}
        self._out.append(ins.MissingData(stimulus_id, ts.key, worker))
        if ts.who_has:
            return {ts.key: "fetch"}
        recs: Recs = {ts.key: "released"}
        ts.replica = False
        if ts.run_id:  # the scheduler asked us to compute it meanwhile: give it back too
            self._out.append(ins.TaskRescheduled(stimulus_id, ts.key, ts.run_id))
            ts.run_id = 0
            ts.payload = None
        for dependent in list(ts.dependents):
            if dependent.state == "waiting" and dependent.run_id:  # not given back already
                self._out.append(ins.TaskRescheduled(stimulus_id, dependent.key, dependent.run_id))
                dependent.run_id = 0
                recs[dependent.key] = "forgotten"
        return recs

    def _handle_update_data(self, event: ev.UpdateData) -> Recs:
        recs: Recs = {}
        for key, value in event.data.items():
            ts = self._task(key)
            if ts.state in ("executing", "long-running") or (
                ts.state == "cancelled" and ts.coming_from is None
            ):
                continue  # running here: its own result will do
            if ts.coming_from is not None:  # in flight: the reply will be ignored
                self.in_flight_peers[ts.coming_from].discard(ts)
                ts.coming_from = None
            nbytes = event.nbytes.get(key, 0)
            if ts.state == "memory":  # a new value: no transition counts its size
                self.nbytes += nbytes - ts.nbytes
            self.data[key] = value
            ts.nbytes = nbytes
            ts.type = event.types.get(key, "")
            recs[key] = "memory"  # a fetch or ready heap entry is skipped when popped
        return recs

    def _handle_acquire_replicas(self, event: ev.AcquireReplicas) -> Recs:
        recs: Recs = {}
        here = []
        for key, holders in event.who_has.items():
            ts = self._task(key)
            if ts.state == "memory":
                here.append(key)
                continue
            peers = [h for h in holders if h != self.address]
            if not peers:
                self._forget_if_unneeded(ts, recs)
                continue
            ts.who_has.update(peers)
            ts.nbytes = event.nbytes.get(key, ts.nbytes)
            ts.replica = True
            if not ts.priority:
                ts.priority = _REPLICA_PRIORITY
            if ts.state == "released":
                recs[key] = "fetch"
            elif ts.state == "cancelled" and ts.coming_from is not None:
                recs[key] = "flight"  # the transfer under way will do
            # fetch, flight: on its way; waiting .. executing: computed here
        if here:
            self._out.append(ins.AddKeys(event.stimulus_id, tuple(here)))
        return recs

    def _handle_pause_change(self, event: ev.PauseChange) -> Recs:
        self.paused = event.paused
        status = "paused" if event.paused else "running"
        self._out.append(ins.WorkerStatusChange(event.stimulus_id, status))
        return {}

    # ------------------------------------------------------------------ scheduling

    def _ensure_computing(self, stimulus_id: str) -> None:
        while self._rejoining and len(self.executing) < self.nthreads:
            self._rejoin(self._rejoining.popleft(), stimulus_id)
        if self.paused or self._rejoining:
            return
        while self._constrained and len(self.executing) < self.nthreads:
            ts = self._constrained[0]
            if ts.state != "ready":
                self._constrained.popleft()
            elif self._resources_available(ts):
                self._constrained.popleft()
                self._start(ts, stimulus_id)
            else:
                break
        while self._ready and len(self.executing) < self.nthreads:
            _, _, ts = heapq.heappop(self._ready)
            if ts.state != "ready":
                continue
            if ts.resources and not self._resources_available(ts):
                self._constrained.append(ts)
                continue
            self._start(ts, stimulus_id)

    def _rejoin(self, ts: WorkerTask, stimulus_id: str) -> None:
        """A seceded task takes a slot again."""
        if ts.state == "long-running":
            self._run({ts.key: "executing"}, stimulus_id)
        elif ts in self.long_running:  # cancelled meanwhile: it still runs, in a slot
            self.long_running.discard(ts)
            self._take_thread(ts)
        self._out.append(ins.Rejoined(stimulus_id, ts.key))

    def _start(self, ts: WorkerTask, stimulus_id: str) -> None:
        self._run({ts.key: "executing"}, stimulus_id)

    def _resources_available(self, ts: WorkerTask) -> bool:
        return all(self.available_resources.get(r, 0) >= n for r, n in (ts.resources or {}).items())

    def _ensure_communicating(self, stimulus_id: str) -> None:
        if self.paused:
            return
        skipped = []
        while self._fetch and len(self.in_flight_peers) < self.max_peers_in_flight:
            item = heapq.heappop(self._fetch)
            ts = item[2]
            if ts.state != "fetch":
                continue
            peers = [w for w in ts.who_has if w not in self.in_flight_peers]
            if not peers:
                skipped.append(item)
                continue
            peer = min(peers)
            batch = [ts]
            chosen = {ts}  # a task may have several entries in the heap
            total = max(ts.nbytes, 0)
            for other_item in itertools.islice(self._fetch, 1000):
                other = other_item[2]
                if total >= self.transfer_batch_bytes:
                    break
                nbytes = max(other.nbytes, 0)
                if (
                    other.state == "fetch"
                    and peer in other.who_has
                    and other not in chosen
                    and total + nbytes <= self.transfer_batch_bytes
                ):
                    batch.append(other)
                    chosen.add(other)
                    total += nbytes
            self.in_flight_peers[peer] = set(batch)
            for member in batch:
                member.coming_from = peer
                self._run({member.key: "flight"}, stimulus_id)
            self._out.append(ins.GatherDep(stimulus_id, peer, tuple(m.key for m in batch), total))
        for item in skipped:
            heapq.heappush(self._fetch, item)

    def _take_thread(self, ts: WorkerTask) -> None:
        self.executing.add(ts)
        for resource, amount in (ts.resources or {}).items():
            self.available_resources[resource] -= amount

    def _release_thread(self, ts: WorkerTask) -> None:
        if ts in self.executing:
            self.executing.discard(ts)
            for resource, amount in (ts.resources or {}).items():
                self.available_resources[resource] += amount
        self.long_running.discard(ts)

    def _release_dependencies(self, ts: WorkerTask, recs: Recs) -> None:
        for dep in ts.dependencies:
            dep.dependents.discard(ts)
            if dep.dependents or dep.run_id or dep.replica:
                continue
            if dep.state in ("fetch", "flight"):
                recs[dep.key] = "released"
            elif dep.state == "released":  # freed while ``ts`` still needed it
                recs[dep.key] = "forgotten"
        ts.dependencies.clear()
        ts.waiting_for_data.clear()

    def _forget_if_unneeded(self, ts: WorkerTask, recs: Recs) -> None:
        if ts.run_id == 0 and not ts.dependents and not ts.replica and ts.state == "released":
            recs[ts.key] = "forgotten"

    # ------------------------------------------------------------------ transitions

    def _released_to_waiting(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        ts.state = "waiting"
        return {} if ts.waiting_for_data else {ts.key: "ready"}

    def _released_to_fetch(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        if not ts.who_has:
            return {}
        ts.state = "fetch"
        heapq.heappush(self._fetch, (ts.priority, next(self._counter), ts))
        return {}

    def _waiting_to_ready(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        ts.state = "ready"
        heapq.heappush(self._ready, (ts.priority, next(self._counter), ts))
        return {}

    def _waiting_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "released"
        self._release_dependencies(ts, recs)
        self._forget_if_unneeded(ts, recs)
        return recs

    def _ready_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        return self._waiting_to_released(ts, stimulus_id)  # its heap entry is skipped later

    def _ready_to_executing(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        ts.state = "executing"
        self._take_thread(ts)
        self._out.append(ins.Execute(stimulus_id, ts.key, ts.run_id))
        return {}

    def _long_running_to_executing(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        self.long_running.discard(ts)
        ts.state = "executing"
        self._take_thread(ts)
        return {}

    def _executing_to_long_running(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        self._release_thread(ts)
        ts.state = "long-running"
        self.long_running.add(ts)
        self._out.append(ins.LongRunning(stimulus_id, ts.key, ts.run_id))
        return {}

    def _executing_to_memory(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        self._release_thread(ts)
        return self._to_memory(ts)

    def _arrived_to_memory(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        """The data came from elsewhere (a peer, or put here directly)."""
        recs = self._to_memory(ts)
        if ts.run_id:
            self._out.append(
                ins.TaskFinished(stimulus_id, ts.key, ts.run_id, ts.nbytes, ts.type, 0.0)
            )
        return recs

    def _to_memory(self, ts: WorkerTask) -> Recs:
        recs: Recs = {}
        ts.state = "memory"
        self.nbytes += ts.nbytes
        for dependent in ts.dependents:
            dependent.waiting_for_data.discard(ts)
            if not dependent.waiting_for_data and dependent.state == "waiting":
                recs[dependent.key] = "ready"
        self._release_dependencies(ts, recs)
        return recs

    def _executing_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        if ts.run_id == 0:  # freed by the scheduler while running: drop the result later
            ts.state = "cancelled"
            return {}
        self._release_thread(ts)
        recs: Recs = {}
        ts.state = "released"
        ts.run_id = 0
        ts.payload = None
        self._release_dependencies(ts, recs)
        self._forget_if_unneeded(ts, recs)
        return recs

    def _cancelled_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        self._release_thread(ts)
        recs: Recs = {}
        ts.state = "released"
        self._release_dependencies(ts, recs)
        self._forget_if_unneeded(ts, recs)
        if ts.dependents or ts.replica:  # needed here meanwhile: its result was dropped
            recs[ts.key] = "fetch"
        return recs

    def _cancelled_to_resumed(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        if ts.coming_from is not None:
            ts.state = "flight"
        elif ts in self.long_running:
            ts.state = "long-running"  # the scheduler counts it in a thread until told
            self._out.append(ins.LongRunning(stimulus_id, ts.key, ts.run_id))
        else:
            ts.state = "executing"
        return {}

    def _fetch_to_flight(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        ts.state = "flight"
        return {}

    def _fetch_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        recs: Recs = {}
        ts.state = "released"
        self._forget_if_unneeded(ts, recs)
        return recs

    def _flight_to_fetch(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        ts.state = "released"
        return self._released_to_fetch(ts, stimulus_id) or {}

    def _flight_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        if ts.coming_from is not None:  # the transfer is still under way
            ts.state = "cancelled"
            return {}
        return self._fetch_to_released(ts, stimulus_id)

    def _memory_to_released(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        recs: Recs = {}
        del self.data[ts.key]  # (pop would read a spilled value back from disk)
        self.nbytes -= ts.nbytes
        ts.state = "released"
        self._forget_if_unneeded(ts, recs)
        return recs

    def _to_forgotten(self, ts: WorkerTask, stimulus_id: str) -> Recs:
        if ts.dependents or ts.run_id or ts.replica:
            return {}
        ts.state = "forgotten"
        del self.tasks[ts.key]
        if self.suspicious:
            self.suspicious.pop(ts.key, None)
        return {}

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Check the invariants that tie the records together; raise AssertionError."""
        for key, ts in self.tasks.items():
            assert ts.key == key
            assert (ts.state == "memory") == (key in self.data), ts
            if ts.state == "waiting":
                assert ts.waiting_for_data, ts
                for dep in ts.waiting_for_data:
                    assert dep.state in _PRODUCING, (ts, dep)
            if ts.state in ("executing",):
                assert ts in self.executing, ts
            if ts.state == "flight":
                assert ts.coming_from in self.in_flight_peers, ts
            for dep in ts.dependencies:
                assert ts in dep.dependents, (ts, dep)
        for ts in self.executing:
            assert ts.state in ("executing", "cancelled"), ts
        for ts in self._rejoining:
            assert ts in self.long_running, ts
        held = sum(ts.nbytes for ts in self.tasks.values() if ts.state == "memory")
        assert self.nbytes == held, (self.nbytes, held)
        assert len(self.executing) <= self.nthreads or self.paused
