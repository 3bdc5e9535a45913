"""How an extension plugs into the scheduler: what it declares, and what it may use.

An extension (published datasets, workers leaving; the coordination objects, plugins
and diagnostics to come) is made with the scheduler, seen through the narrow
:class:`SchedulerContext`, and declares what it takes:

* ``handlers``: request/reply operations by request class (:mod:`distributary.
  protocol.requests`), ``(comm, request) -> reply``;
* ``message_handlers``: messages of the clients' and workers' streams by class, taken
  here instead of by the state machine (``False`` ends the stream);
* ``instruction_handlers``: the state machine's :class:`~distributary.scheduler.
  instructions.ForServer` instructions by class (every extension that takes one is
  given it).

It changes the state only by handing it events (:meth:`SchedulerContext.handle`), and
is started and stopped with the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distributary.core import ConnectionPool
    from distributary.scheduler.events import AnyEvent
    from distributary.scheduler.records import WorkerRecord
    from distributary.scheduler.state import SchedulerState


class SchedulerContext(Protocol):
    """What an extension may use of the scheduler."""

    state: SchedulerState  # to read; changed only through handle()
    pool: ConnectionPool  # to call workers and nannies
    id: str
    address: str  # where workers and clients connect
    service_ports: dict[str, int]  # the ports of its services ("dashboard"), by name

    def handle(self, *events: AnyEvent) -> None:
        """Hand events to the state machine and carry out what it answers."""

    def is_connected(self, peer: str) -> bool:
        """Whether the stream of this worker or client is open."""

    async def after_flush(self, client: str | None, uid: str | None) -> None:
        """Until ``client``'s stream delivered its flush marker ``uid`` (see
        :mod:`distributary.scheduler.flushes`): a request carrying it is then handled
        after everything the client sent before it."""

    def disconnect(self, peer: str) -> bool:
        """Close the stream of this worker or client (its reader then removes it);
        False if there is none."""

    def coerce_address(self, addr: Any, resolve: bool = True) -> str:
        """A worker's address from its address, name or host:port (a host name resolved
        to its IP address with ``resolve``)."""

    def workers_list(self, workers: Any) -> list[str]:
        """The addresses of the workers named by address, name or host (all when None);
        ValueError naming those not found."""

    def worker_info(self, ws: WorkerRecord) -> dict:
        """What the scheduler knows of a worker, as plain values."""

    def identity(self, comm: Any = None) -> dict:
        """The scheduler's type, id, address, start time and workers (by address)."""

    async def close(self) -> None:
        """Close the scheduler."""


class SchedulerExtension:
    """Base of the scheduler's extensions: fill in the handlers in ``__init__``."""

    def __init__(self, scheduler: SchedulerContext):
        self.scheduler = scheduler
        self.handlers: dict[type, Callable[[Any, Any], Any]] = {}
        self.message_handlers: dict[type, Callable[[Any], bool | None]] = {}
        self.instruction_handlers: dict[type, Callable[[Any], None]] = {}

    def start(self) -> None:
        """The scheduler started (its event loop runs)."""

    def stop(self) -> None:
        """The scheduler is closing."""
