"""Variables: named values shared by every client and task, set and read any number
of times.

A variable holds one pickled value (:class:`~distributary.scheduler.shared.
StoredValue`, the futures inside it kept alive until it is overwritten or deleted).
A get of an unset variable waits (at most its ``timeout``) until one is set; every
waiting get is then answered with it.  A client getting the value is made to want its
futures' keys held for it from the moment it is read (see :mod:`distributary.
scheduler.shared`), so that a ``set`` or ``delete`` right after cannot free them before
the client's futures hold them.  A variable is forgotten once
it has no value and nobody waits on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import shared as sh
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.shared import SharedValues, StoredValue
from distributary.scheduler.waiters import TIMED_OUT, WaitQueue, caller_gone, check_connected


@dataclass(slots=True)
class SharedVariable:
    """One variable: its value (None when unset), and the gets waiting for one."""

    value: StoredValue | None = None
    getters: WaitQueue = field(default_factory=WaitQueue)


class VariableExtension(SchedulerExtension):
    """The scheduler's variables, by name."""

    def __init__(self, scheduler: SchedulerContext, values: SharedValues):
        super().__init__(scheduler)
        self.variables: dict[Any, SharedVariable] = {}
        self.values = values
        self.handlers.update(
            {
                sh.VariableSet: self.set,
                sh.VariableGet: self.get,
                sh.VariableDelete: self.delete,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self.client_removed

    async def set(self, comm: Any, msg: sh.VariableSet) -> None:
        """Set the value (the old one's futures are let go of) and answer every get
        waiting for one."""
        value = await self.values.receive(
            "variable", msg.data, msg.keys, msg.client, msg.uid, msg.timeout
        )
        variable = self.variables.setdefault(msg.name, SharedVariable())
        old, variable.value = variable.value, value
        self.values.release(old)  # (after the new value holds its keys: a key in both stays)
        while (waiter := variable.getters.first()) is not None:
            variable.getters.serve(self.values.hand_over(value, waiter.client or None, keep=True))

    async def get(self, comm: Any, msg: sh.VariableGet) -> sh.SharedValue:
        """The value, waiting at most ``timeout`` for one to be set (TimeoutError)."""
        check_connected(self.scheduler, msg.client)
        variable = self.variables.get(msg.name)
        if variable is not None and variable.value is not None:
            return self.values.hand_over(variable.value, msg.client, keep=True)
        variable = self.variables.setdefault(msg.name, SharedVariable())
        try:
            outcome = await variable.getters.wait(msg.client or "", msg.timeout)
        finally:
            self._forget_if_unused(msg.name, variable)
        if outcome is TIMED_OUT:
            raise TimeoutError(f"Variable {msg.name!r} was not set within {msg.timeout} s")
        if caller_gone(self.scheduler, comm, msg.client):
            self.values.forget_receipts(msg.client, (outcome.receipt,))
        return outcome

    def delete(self, comm: Any, msg: sh.VariableDelete) -> None:
        """Forget the value; its futures' data goes unless somebody else holds them."""
        variable = self.variables.get(msg.name)
        if variable is not None:
            old, variable.value = variable.value, None
            self.values.release(old)
            self._forget_if_unused(msg.name, variable)

    def client_removed(self, removed: ins.ClientRemoved) -> None:
        """A client left: its waiting gets fail."""
        for variable in self.variables.values():
            variable.getters.drop_client(removed.client)

    def _forget_if_unused(self, name: Any, variable: SharedVariable) -> None:
        if variable.value is None and not variable.getters and self.variables.get(name) is variable:
            del self.variables[name]
