"""What the scheduler knows of each task, worker and client."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal, get_args

# The states of a task on the scheduler (DESIGN.md, "Task states").
TaskState = Literal[
    "released", "waiting", "queued", "no-worker", "processing", "memory", "erred", "forgotten"
]
# The states of a task the scheduler holds (all but "forgotten").
HELD_STATES: tuple[str, ...] = get_args(TaskState)[:-1]


class _NoTasks(frozenset):
    """The empty set a record's task links start as, shared by all records.

    Most tasks of a map have no dependencies or dependents: four empty sets per task
    would cost about 860 bytes.  It reads like an empty set, and ``discard`` and
    ``clear`` do nothing; code that adds replaces it with a set first
    (:func:`linked`).
    """

    __slots__ = ()

    def discard(self, item: Any) -> None:
        pass

    def clear(self) -> None:
        pass


NO_TASKS = _NoTasks()


class TaskRecord:
    """A task as the scheduler tracks it.

    ``waiting_on`` holds the dependencies not yet in memory; ``waiters`` the dependents
    that still need this task's data.  A task's data is kept while ``who_wants`` (clients)
    or ``waiters`` is non-empty; its record is kept while ``who_wants`` or ``dependents``
    is, so that lost data can be computed again from lineage.
    """

    __slots__ = (
        "key",
        "prefix",
        "state",
        "payload",
        "priority",
        "dependencies",
        "dependents",
        "waiting_on",
        "waiters",
        "who_wants",
        "who_has",
        "processing_on",
        "run_id",
        "nbytes",
        "type",
        "exception",
        "traceback",
        "exception_text",
        "exception_blame",
        "suspicious",
        "retries",
        "worker_restrictions",
        "loose_restrictions",
        "resource_restrictions",
    )

    def __init__(self, key: Any, prefix: str):
        self.key = key
        self.prefix = sys.intern(prefix)  # one copy for all the tasks of a prefix
        self.state: TaskState = "released"
        self.payload: Any = None
        self.priority: tuple = (0,)
        # (NO_TASKS until a task is added: see ``linked``)
        self.dependencies: set[TaskRecord] = NO_TASKS
        self.dependents: set[TaskRecord] = NO_TASKS
        self.waiting_on: set[TaskRecord] = NO_TASKS
        self.waiters: set[TaskRecord] = NO_TASKS
        self.who_wants: tuple[str, ...] = ()  # (tuples: see SchedulerState._add_want)
        self.who_has: tuple[WorkerRecord, ...] = ()
        self.processing_on: WorkerRecord | None = None
        self.run_id = 0
        self.nbytes = -1
        self.type = ""
        self.exception: Any = None
        self.traceback: Any = None
        self.exception_text = ""
        self.exception_blame: TaskRecord | None = None
        self.suspicious = 0
        self.retries = 0
        self.worker_restrictions: set | None = None
        self.loose_restrictions = False
        self.resource_restrictions: dict | None = None

    @property
    def is_queueable(self) -> bool:
        """A root task without restrictions: it may wait on the scheduler for a free slot."""
        return (
            not self.dependencies
            and self.worker_restrictions is None
            and self.resource_restrictions is None
        )

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"


@dataclass(frozen=True, slots=True)
class MemoryState:
    """A worker's memory as it last reported it, in bytes.

    ``managed``: results held in memory; ``spilled``: results written to disk;
    ``process``: the worker process's resident memory; ``unmanaged``: the rest of it
    (interpreter, libraries, task temporaries, fragmentation).
    """

    process: int = 0
    managed: int = 0
    spilled: int = 0

    @property
    def unmanaged(self) -> int:
        """Process memory not taken by held results."""
        return max(self.process - self.managed, 0)


def linked(ts: TaskRecord, attribute: str) -> set[TaskRecord]:
    """``ts.<attribute>`` (one of the task-link sets) as a set that may be added to."""
    tasks = getattr(ts, attribute)
    if tasks is NO_TASKS:
        tasks = set()
        setattr(ts, attribute, tasks)
    return tasks


class WorkerRecord:
    """A worker as the scheduler tracks it: where it is (``address``, ``host``, its
    process's ``pid``, its ``nanny``'s address, its ``local_directory``), what it has
    (``nthreads``, ``memory_limit``, ``resources``) and its ``status``.

    ``status``: ``running``; ``paused`` (memory pressure); ``closing_gracefully`` (being
    retired: its data is copied elsewhere); ``closing`` (restarting or leaving).  Only a
    running worker is given tasks.
    """

    __slots__ = (
        "address",
        "name",
        "host",
        "nthreads",
        "memory_limit",
        "resources",
        "nanny",
        "status",
        "processing",
        "long_running",
        "has_what",
        "nbytes",
        "slots",
        "last_seen",
        "memory",
        "usage",
        "pid",
        "local_directory",
        "services",
    )

    def __init__(
        self,
        address: str,
        nthreads: int,
        name: Any,
        host: str,
        memory_limit: int,
        resources: dict,
        nanny: str | None,
        saturation: float,
    ):
        self.address = address
        self.name = name
        self.host = host
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = dict(resources)
        self.nanny = nanny
        self.status = "running"
        self.processing: set[TaskRecord] = set()
        self.long_running: set[TaskRecord] = set()
        self.has_what: dict[TaskRecord, None] = {}
        self.nbytes = 0
        self.slots = (
            max(1, math.ceil(nthreads * saturation)) if saturation != math.inf else math.inf
        )
        self.last_seen = 0.0
        self.memory = MemoryState()
        self.usage: dict[str, float] = {}  # CPU and network, as last reported (heartbeat)
        self.pid = 0
        self.local_directory = ""
        self.services: dict[str, int] = {}  # the ports of its services ("dashboard")

    @property
    def metrics(self) -> dict[str, Any]:
        """The worker's memory (bytes), CPU (percent of a core) and host network use
        (bytes per second) as it last reported them, named as dask.distributed names them."""
        memory, usage = self.memory, self.usage
        return {
            "memory": memory.process,
            "managed_bytes": memory.managed,
            "spilled_bytes": memory.spilled,
            "unmanaged_bytes": memory.unmanaged,
            "cpu": usage.get("cpu", 0.0),
            "host_net_io": {
                "read_bps": usage.get("read_bps", 0.0),
                "write_bps": usage.get("write_bps", 0.0),
            },
        }

    @property
    def occupied(self) -> int:
        """Tasks that take up one of this worker's threads."""
        return len(self.processing) - len(self.long_running)

    def has_room(self) -> bool:
        """Whether this worker may be sent another queued root task."""
        return self.status == "running" and self.occupied < self.slots

    def __repr__(self) -> str:
        return f"<Worker {self.address!r} {self.status}, processing: {len(self.processing)}>"


class Retirement:
    """A worker being retired: the keys asked of other workers (and of which one),
    when that plan was made, and when to give up (``None``: never)."""

    __slots__ = ("asked", "planned_at", "deadline")

    def __init__(self, planned_at: float, deadline: float | None):
        self.asked: dict[TaskRecord, str] = {}
        self.planned_at = planned_at
        self.deadline = deadline


FIRE_AND_FORGET = "fire-and-forget"  # the pseudo-client that wants keys until they finish


class ClientRecord:
    """A client as the scheduler tracks it: the keys it holds futures for."""

    __slots__ = ("client_id", "wants_what", "last_seq")

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.wants_what: set[TaskRecord] = set()
        self.last_seq = 0  # of the client's last message handled: the ``ack`` of reports

    def __repr__(self) -> str:
        return f"<Client {self.client_id!r}, wants {len(self.wants_what)} keys>"
