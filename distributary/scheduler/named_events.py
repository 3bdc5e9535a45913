"""Events: named flags shared by every client and task (``distributary.Event``).

An event's flag starts cleared.  A wait on a cleared event is one request, answered
True when the event is set or False when its ``timeout`` passes; setting the event
answers every waiting one.  An event is kept only while it is set or waited on: a
cleared event nobody waits on is the same as one never made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import shared as sh
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.waiters import TIMED_OUT, WaitQueue, check_connected


@dataclass(slots=True)
class SharedEvent:
    """One event: its flag, and the waits on it."""

    is_set: bool = False
    waiters: WaitQueue = field(default_factory=WaitQueue)


class EventExtension(SchedulerExtension):
    """The scheduler's events, by name."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.events: dict[Any, SharedEvent] = {}
        self.handlers.update(
            {
                sh.EventSet: self.set,
                sh.EventClear: self.clear,
                sh.EventIsSet: self.is_set,
                sh.EventWait: self.wait,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self.client_removed

    def set(self, comm: Any, msg: sh.EventSet) -> None:
        """Set the flag: every wait on the event is answered True."""
        event = self.events.setdefault(msg.name, SharedEvent())
        event.is_set = True
        event.waiters.serve_all(True)

    def clear(self, comm: Any, msg: sh.EventClear) -> None:
        """Clear the flag: waits from now on wait."""
        event = self.events.get(msg.name)
        if event is not None:
            event.is_set = False
            self._forget_if_unused(msg.name, event)

    def is_set(self, comm: Any, msg: sh.EventIsSet) -> bool:
        """Whether the flag is set."""
        event = self.events.get(msg.name)
        return event is not None and event.is_set

    async def wait(self, comm: Any, msg: sh.EventWait) -> bool:
        """True once the event is set; False if ``timeout`` seconds passed first."""
        event = self.events.get(msg.name)
        if event is not None and event.is_set:
            return True
        check_connected(self.scheduler, msg.client)
        event = self.events.setdefault(msg.name, SharedEvent())
        try:
            outcome = await event.waiters.wait(msg.client or "", msg.timeout)
        finally:
            self._forget_if_unused(msg.name, event)
        return outcome is not TIMED_OUT

    def client_removed(self, removed: ins.ClientRemoved) -> None:
        """A client left: its waits fail."""
        for event in self.events.values():
            event.waiters.drop_client(removed.client)

    def _forget_if_unused(self, name: Any, event: SharedEvent) -> None:
        if not (event.is_set or event.waiters) and self.events.get(name) is event:
            del self.events[name]
