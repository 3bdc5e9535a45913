"""An in-memory cluster of pure state machines, for the key-lifecycle model test.

Two clients (``ClientState``), the scheduler (``SchedulerState``) and workers
(``WorkerState``) talk over FIFO links, one per direction and pair, as TCP streams
do; messages go through the same translators the servers use.  Nothing runs by
itself: every step is an :class:`Action` (a user's call on a client, flushing an
outbox, delivering the next message of one link, finishing a task, answering a
transfer, losing or adding a worker), and every choice an action makes comes from
its numbers, so that a list of actions replays exactly and can be shrunk.

Tasks are tiny: ``("inc", n, None)`` is ``n + 1``, ``("inc", None, dep)`` is
``dep + 1`` and ``("fail", n, None)`` raises ZeroDivisionError.  A key names its
computation, so :func:`expected` computes any key's result sequentially.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from distributary.client.state import ClientState, FutureState, PendingGraph
from distributary.protocol.client_messages import FROM_CLIENT, TO_CLIENT, TaskSpec
from distributary.protocol.worker_messages import FROM_WORKER, TO_WORKER
from distributary.scheduler import events as sev
from distributary.scheduler import instructions as sins
from distributary.scheduler.state import SchedulerState
from distributary.worker import events as wev
from distributary.worker import instructions as wins
from distributary.worker.state import WorkerState

CLIENTS = ("alice", "bob")
_REMOVED = "__worker-removed__"  # the end of a lost worker's stream


@dataclass(frozen=True)
class Action:
    """One step: what to do, and the numbers its choices are taken from."""

    kind: str
    x: int
    y: int
    z: int


class Handle:
    """A Future a user holds: its key, the record it was given, and what it may become."""

    def __init__(self, client: str, key: Any, record: FutureState, tainted: bool):
        self.client = client
        self.key = key
        self.record = record
        self.tainted = tainted  # made from a future already cancelled: any end is fair
        self.cancelled_here = False
        self.pins = 0  # graphs not built yet that hold this Future in their arguments

    def __repr__(self) -> str:
        return f"<{self.client}:{self.key} {self.record.status}>"


class ModelClient:
    """A user of one client: the futures held, and graphs whose parts are not built yet."""

    def __init__(self, name: str):
        self.name = name
        self.core = ClientState()
        self.handles: list[Handle] = []
        self.dropped: list[Handle] = []  # deleted by the user, still held by a graph
        # graph, the parts left to build, the Futures in its arguments
        self.building: list[tuple[PendingGraph, deque, list[Handle]]] = []


_PAYLOADS: dict = {}  # key -> the computation it names


def payload_of(key: Any) -> tuple:
    """The computation a key names."""
    return _PAYLOADS[key]


def expected(key: Any) -> Any:
    """A key's result, computed sequentially: an int, or the exception it raises."""
    op, n, dep = payload_of(key)
    if op == "fail":
        return ZeroDivisionError(f"fail-{n}")
    base = n if dep is None else expected(dep)
    return base if isinstance(base, BaseException) else base + 1


def lineage(key: Any) -> list:
    keys = [key]
    while payload_of(keys[-1])[2] is not None:
        keys.append(payload_of(keys[-1])[2])
    return keys


class ModelCluster:
    """The state machines, their links, and what is under way between them."""

    def __init__(self) -> None:
        self.scheduler = SchedulerState(allowed_failures=10**6, validate=True)
        self.clients = {name: ModelClient(name) for name in CLIENTS}
        self.workers: dict[str, WorkerState] = {}
        self.to_scheduler: dict[str, deque] = {}
        self.to_client: dict[str, deque] = {name: deque() for name in CLIENTS}
        self.to_worker: dict[str, deque] = {}
        self.executing: list[tuple[str, Any, int, Any]] = []  # worker, key, run_id, outcome
        self.gathers: list[tuple[str, wins.GatherDep]] = []
        self.forced: set = set()  # keys ever force-cancelled
        self.tainted: dict[int, FutureState] = {}  # records made from a cancelled future
        self.log: list[str] = []
        self._worker_names = itertools.count()
        self._unique = itertools.count()
        self._sids = itertools.count()
        for name in CLIENTS:
            self.to_scheduler[name] = deque()
            self._to_scheduler_state(sev.AddClient(self._sid(), name))
        for _ in range(2):
            self.add_worker()

    def _sid(self) -> str:
        return f"model-{next(self._sids)}"

    # ------------------------------------------------------------------ routing

    def _to_scheduler_state(self, event: sev.Event) -> None:
        for instruction in self.scheduler.handle(event):
            if isinstance(instruction, sins.ForServer):
                continue  # (the server's own business: no message)
            msg = instruction.to_message()
            if isinstance(instruction, sins.ToWorker):
                if instruction.worker in self.to_worker:
                    self.to_worker[instruction.worker].append(msg)
            elif instruction.client in self.to_client:
                self.to_client[instruction.client].append(msg)

    def _to_worker_state(self, address: str, event: wev.Event) -> None:
        worker = self.workers[address]
        for instruction in worker.handle(event):
            if isinstance(instruction, wins.Execute):
                outcome = self._run_task(worker, instruction.key)
                self.executing.append((address, instruction.key, instruction.run_id, outcome))
            elif isinstance(instruction, wins.GatherDep):
                self.gathers.append((address, instruction))
            else:
                self.to_scheduler[address].append(instruction.to_message())

    @staticmethod
    def _run_task(worker: WorkerState, key: Any) -> Any:
        # (read when the task starts, as a worker thread takes its arguments)
        op, n, dep = worker.tasks[key].payload
        if op == "fail":
            return ZeroDivisionError(f"fail-{n}")
        return (n if dep is None else worker.data[dep]) + 1

    # ------------------------------------------------------------------ the steps

    def user(self, action: Action) -> None:
        """A user's call on a client."""
        client = self.clients[CLIENTS[action.x % 2]]
        live = client.handles
        what = action.y % 10
        if what <= 4 or not live:
            self._submit(client, what, action.z)
        elif what == 5:
            handle = live.pop(action.z % len(live))
            if handle.pins:
                client.dropped.append(handle)
            else:
                client.core.release(handle.key)
            self.log.append(f"{client.name}: del {handle}")
        elif what == 6:
            handle = live[action.z % len(live)]
            force = action.z % 3 == 0
            for other in live:
                if other.key == handle.key and other.record.status != "cancelled":
                    other.cancelled_here = not force
            if force:
                self.forced.add(handle.key)
            client.core.cancel([handle.key], "cancel", force)
            self.log.append(f"{client.name}: cancel {handle} force={force}")
        elif what == 7:
            erred = [h for h in live if h.record.status == "error"]
            if erred:
                handle = erred[action.z % len(erred)]
                client.core.retry([handle.key])
                self.log.append(f"{client.name}: retry {handle}")
        else:
            self._submit_over_futures(client, what == 8, action.z)

    def _key(self, payload: tuple, pure: bool) -> str:
        op, n, dep = payload
        key = f"{op}({n if dep is None else dep})"
        if not pure:
            key += f"#{next(self._unique)}"
        _PAYLOADS[key] = payload
        return key

    def _submit(self, client: ModelClient, what: int, z: int) -> None:
        pure = what != 1
        n = z % 3
        if what == 2:
            keys = [self._key(("fail", n, None), pure)]
        elif what == 3:  # the same call twice in one map
            keys = [self._key(("inc", n, None), pure)] * 2
        elif what == 4:  # a chain built in parts, only its end wanted
            first = self._key(("inc", n, None), pure)
            keys = [self._key(("inc", None, first), pure)]
            held = client.core.futures.get(first)  # (not sent again: the graph names it)
            tainted = {keys[0]: held is not None and id(held) in self.tainted}
            self._graph(client, keys, [first, keys[0]], [], z % 2 == 0, tainted)
            return
        else:
            keys = [self._key(("inc", n, None), pure)]
        self._graph(client, keys, keys, [], background=z % 4 == 0)

    def _submit_over_futures(self, client: ModelClient, pure: bool, z: int) -> None:
        live = client.handles
        chosen = [live[z % len(live)], live[(z // 7) % len(live)]]
        keys = [self._key(("inc", None, h.key), pure) for h in chosen]
        tainted = {
            k: h.record.status == "cancelled" or id(h.record) in self.tainted
            for k, h in zip(keys, chosen)
        }
        self._graph(client, keys, keys, chosen, background=z % 5 == 0, tainted=tainted)

    def _graph(
        self,
        client: ModelClient,
        keys: list,
        tasks: list,
        holding: list[Handle],
        background: bool,
        tainted: dict | None = None,
    ) -> None:
        """Submit ``tasks`` (in dependency order, one part each) for the futures ``keys``.

        ``holding``: the Futures in the arguments, kept alive until the parts are built.
        """
        core = client.core
        records, graph = core.submit(keys)
        for key, record in zip(keys, records):
            if (tainted or {}).get(key):
                self.tainted[id(record)] = record  # (kept alive: its id stays its own)
            client.handles.append(Handle(client.name, key, record, id(record) in self.tainted))
        # each key once, and the rest of the graph unless held, as Client.compute sends it
        send = list(
            dict.fromkeys(
                k for k in tasks if k in graph.wanted or (k not in keys and not core.holds(k))
            )
        )
        parts = deque()
        for index, key in enumerate(send):
            later = {payload_of(k)[2] for k in send[index + 1 :]}
            want = [key] if key in graph.wanted or key in later else []
            parts.append(([self._task(key)], want))
        self.log.append(
            f"{client.name}: submit {keys} -> send {sorted(map(str, graph.wanted))}"
            f"{' (building)' if background else ''}"
        )
        if not graph.wanted:
            return
        for handle in holding:
            handle.pins += 1
        client.building.append((graph, parts, holding))
        if not background:
            while parts:
                self._build_part(client, 0)

    def _task(self, key: Any) -> TaskSpec:
        dep = payload_of(key)[2]
        return TaskSpec(
            key,
            payload_of(key),
            dependencies=() if dep is None else (dep,),
            priority=(0, next(self._sids)),
        )

    def _build_part(self, client: ModelClient, index: int) -> None:
        graph, parts, holding = client.building[index]
        tasks, want = parts.popleft()
        client.core.add_part(graph, tasks, want)
        if not parts:
            graph.done = True
            del client.building[index]
            for handle in holding:
                handle.pins -= 1
                if not handle.pins and handle in client.dropped:
                    client.dropped.remove(handle)
                    client.core.release(handle.key)

    def build(self, action: Action) -> bool:
        """Build the next part of a graph being built in the background."""
        building = [(c, i) for c in self.clients.values() for i in range(len(c.building))]
        if not building:
            return False
        client, index = building[action.x % len(building)]
        self._build_part(client, index)
        self.log.append(f"{client.name}: build a part")
        return True

    def flush(self, action: Action) -> bool:
        client = self.clients[CLIENTS[action.x % 2]]
        msgs, done = client.core.flush()
        msgs = [msg.to_message() for msg in msgs]  # (as they travel)
        self.to_scheduler[client.name].extend(msgs)
        if msgs:
            self.log.append(f"{client.name}: flush {[_brief(m) for m in msgs]}")
        return bool(msgs)

    def deliver(self, action: Action) -> bool:
        """The next message of one link arrives."""
        links = [
            *(("scheduler", sender, q) for sender, q in self.to_scheduler.items() if q),
            *(("client", name, q) for name, q in self.to_client.items() if q),
            *(("worker", address, q) for address, q in self.to_worker.items() if q),
        ]
        if not links:
            return False
        where, who, queue = links[action.x % len(links)]
        msg = queue.popleft()
        self.log.append(f"deliver to {where} from/for {who}: {_brief(msg)}")
        if where == "client":
            self.clients[who].core.handle(TO_CLIENT.decode(msg, who))
        elif where == "worker":
            self._to_worker_state(who, TO_WORKER.decode(msg, who))
        elif msg["op"] == _REMOVED:
            del self.to_scheduler[who]
            self._to_scheduler_state(sev.RemoveWorker(self._sid(), who))
        elif who in self.clients:
            self._to_scheduler_state(FROM_CLIENT.decode(msg, who))
        else:
            self._to_scheduler_state(FROM_WORKER.decode(msg, who))
        return True

    def execute(self, action: Action) -> bool:
        """A running task finishes."""
        if not self.executing:
            return False
        address, key, run_id, outcome = self.executing.pop(action.x % len(self.executing))
        if isinstance(outcome, BaseException):
            event: wev.WorkerEvent = wev.ExecuteFailure(
                self._sid(), key, run_id, outcome, None, repr(outcome), ""
            )
        else:
            event = wev.ExecuteSuccess(self._sid(), key, run_id, outcome, 8, "int", 0.01)
        self.log.append(f"{address}: {key} ran: {outcome!r}")
        self._to_worker_state(address, event)
        return True

    def gather(self, action: Action) -> bool:
        """A peer answers a transfer (or is found gone)."""
        if not self.gathers:
            return False
        address, request = self.gathers.pop(action.x % len(self.gathers))
        peer = self.workers.get(request.worker)
        if peer is None:
            event: wev.WorkerEvent = wev.GatherDepFailure(self._sid(), request.worker, request.keys)
        else:
            data = {
                k: peer.data[k]
                for k in request.keys
                if k in peer.tasks and peer.tasks[k].state == "memory"
            }
            event = wev.GatherDepSuccess(
                self._sid(), request.worker, request.keys, data, dict.fromkeys(data, 8)
            )
        self.log.append(f"{address}: gather {request.keys} from {request.worker}")
        self._to_worker_state(address, event)
        return True

    def kill(self, action: Action) -> bool:
        """A worker dies: what it had not written is lost, then the scheduler sees it go."""
        if not self.workers:
            return False
        address = sorted(self.workers)[action.x % len(self.workers)]
        del self.workers[address]
        del self.to_worker[address]
        queue = self.to_scheduler[address]
        for _ in range(action.y % (len(queue) + 1)):
            queue.pop()
        queue.append({"op": _REMOVED})
        self.executing = [e for e in self.executing if e[0] != address]
        self.gathers = [g for g in self.gathers if g[0] != address]
        self.log.append(f"kill {address}")
        return True

    def restart(self, action: Action) -> bool:
        """``Client.restart``: the scheduler forgets everything, its workers are replaced."""
        for client in self.clients.values():  # cancelled, unless asked for after the restart
            core = client.core
            for record in [*core.futures.values(), *(r.record for r in core.releasing.values())]:
                self.tainted[id(record)] = record
        self._to_scheduler_state(sev.Restart(self._sid()))
        for address in sorted(self.workers):
            self.kill(Action("kill", sorted(self.workers).index(address), 0, 0))
        self.add_worker()
        self.add_worker()
        self.log.append("restart")
        return True

    def add_worker(self, action: Action | None = None) -> bool:
        if len(self.workers) >= 3:
            return False
        address = f"tcp://w{next(self._worker_names)}:1"
        self.workers[address] = WorkerState(address, nthreads=1, validate=True)
        self.to_worker[address] = deque()
        self.to_scheduler[address] = deque()
        self._to_scheduler_state(sev.AddWorker(self._sid(), address, nthreads=1, host=address))
        self.log.append(f"add {address}")
        return True

    # ------------------------------------------------------------------ settling

    def settle(self, limit: int = 20_000) -> None:
        """Run everything under way to its end (a worker is added if none is left)."""
        nothing = Action("", 0, 0, 0)
        for _ in range(limit):
            if not self.workers:
                self.add_worker()
            if not (
                self.build(nothing)
                or self.flush(Action("", 0, 0, 0))
                or self.flush(Action("", 1, 0, 0))
                or self.deliver(nothing)
                or self.execute(nothing)
                or self.gather(nothing)
            ):
                return
        raise AssertionError("the cluster never settled: something is stuck in a loop")

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """What holds after every step, whatever is still in flight."""
        s = self.scheduler
        for ts in s.tasks.values():
            assert ts.who_wants or ts.dependents or ts.waiters, f"nobody needs {ts}"
            for client in ts.who_wants:
                assert client in s.clients, (ts, client)
        for client in self.clients.values():
            held = Counter(h.key for h in [*client.handles, *client.dropped])
            assert Counter(client.core.refcount) == held, (client.name, client.core.refcount)
            cs = s.clients[client.name]
            cancelling = {m.get("key") for m in self.to_client[client.name]}
            if any(m["op"] == "restart" for m in self.to_client[client.name]):
                continue  # everything is cancelled, on its way here
            for key, record in client.core.futures.items():
                if record.since is None or record.since > cs.last_seq:
                    continue  # the scheduler has not seen it asked for yet
                if key in cancelling:
                    continue  # a cancellation on its way here
                ts = s.tasks.get(key)
                assert ts is not None, f"{client.name} holds {key}, which the scheduler forgot"
                assert client.name in ts.who_wants, f"{client.name} wants {ts}, unknown to it"

    def check_settled(self) -> None:
        """Once nothing is in flight: the two sides agree, and every future is right."""
        s = self.scheduler
        for client in self.clients.values():
            wanted = {ts.key for ts in s.clients[client.name].wants_what}
            held = set(client.core.futures)
            assert wanted == held, (
                f"{client.name}: the scheduler keeps {sorted(wanted - held)} for it, "
                f"and it holds {sorted(held - wanted)} that the scheduler does not keep"
            )
            for handle in client.handles:
                self._check_result(handle)
        needed: set = set()
        for cs in s.clients.values():
            for ts in cs.wants_what:
                needed.update(lineage(ts.key))
        assert set(s.tasks) <= needed, f"held for nobody: {set(s.tasks) - needed}"
        for address, worker in self.workers.items():
            has = {ts.key for ts in s.workers[address].has_what}
            assert set(worker.data) == has, (address, set(worker.data), has)

    def _check_result(self, handle: Handle) -> None:
        record, key = handle.record, handle.key
        status = record.status
        want = expected(key)
        fair = (
            {"cancelled", "error", "finished"}
            if id(record) in self.tainted or (self.forced & set(lineage(key)))
            else set()
        )
        if handle.cancelled_here:
            assert status == "cancelled", (handle, status)
            return
        assert status != "pending", f"{handle} never finished"
        if status == "cancelled":
            assert fair, f"{handle} was cancelled, and nobody cancelled it"
            return
        if status == "error":
            exc = record.error.exception
            assert fair or isinstance(want, BaseException), f"{handle} erred: {exc!r}, not {want}"
            assert fair or isinstance(exc, ZeroDivisionError), (handle, exc)
            return
        assert not isinstance(want, BaseException), f"{handle} finished; it should raise"
        s = self.scheduler
        holders = [w for w in record.workers if w in self.workers and key in self.workers[w].data]
        if not holders and key in s.tasks:  # (the client asks who has it)
            holders = [ws.address for ws in s.tasks[key].who_has]
        assert holders, f"{handle} finished, but no worker has it"
        for address in holders:
            assert self.workers[address].data[key] == want, (handle, address)

    def release_everything(self) -> None:
        for client in self.clients.values():
            for handle in client.handles:
                client.core.release(handle.key)
            client.handles.clear()
        self.log.append("release every future")

    def check_empty(self) -> None:
        s = self.scheduler
        assert not s.tasks, f"left on the scheduler: {list(s.tasks.values())[:5]}"
        for worker in self.workers.values():
            assert not worker.data, (worker.address, list(worker.data))
            assert not worker.tasks, (worker.address, list(worker.tasks.values())[:5])
        for name in CLIENTS:
            assert not s.clients[name].wants_what
            assert not self.clients[name].core.futures
            assert not self.clients[name].core.refcount


STEPS = {
    "user": ModelCluster.user,
    "build": ModelCluster.build,
    "flush": ModelCluster.flush,
    "deliver": ModelCluster.deliver,
    "execute": ModelCluster.execute,
    "gather": ModelCluster.gather,
    "kill": ModelCluster.kill,
    "add": ModelCluster.add_worker,
    "restart": ModelCluster.restart,
}


def run(actions: list[Action]) -> ModelCluster:
    """Play the actions, checking invariants after each, then settle and check the end."""
    cluster = ModelCluster()
    for action in actions:
        STEPS[action.kind](cluster, action)
        cluster.check_invariants()
    cluster.settle()
    cluster.check_invariants()
    cluster.check_settled()
    cluster.release_everything()
    cluster.settle()
    cluster.check_empty()
    return cluster


def _brief(msg: dict) -> str:
    op = msg.get("op")
    keys = msg.get("keys") or msg.get("wanted") or ([msg["key"]] if "key" in msg else [])
    if op == "update-graph":
        keys = [t["key"] for t in msg["tasks"]]
    return (
        f"{op} {list(keys)}"
        + (f" seq={msg['seq']}" if "seq" in msg else "")
        + (f" ack={msg['ack']}" if "ack" in msg else "")
    )
