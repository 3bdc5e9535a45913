"""What the extensions of the shared objects (queues, variables, events, topics) have in
common: values kept for clients, with the data of the futures inside them kept alive
while they are kept and while they are handed over, and requests that wait only for a
connected client.

Keeping values
--------------
A value arrives pickled (an opaque :class:`Serialized`, never unpickled here) with the
keys of the futures inside it.  While the value is stored, a pseudo-client of its own
(its ``holder``) wants those keys in the state machine, as a real client would, so
that the ordinary reference counting keeps their results; when the value is dropped
the pseudo-client is removed, and the keys go unless somebody else wants them.

Ordering: the request storing a value holding futures may overtake the client's
stream, which carries those futures' tasks, so it first waits for the client's flush
marker; a key still unknown after that (a released or cancelled future) is refused.

Handing values over
-------------------
A client getting a value makes futures of its keys, and says so on its ordered stream
(``client-desires-keys`` for a key it did not hold), which may carry, before that,
releases of earlier futures of the same keys.  So the keys stay held for it by a
pseudo-client, its *receipt*, until the client confirms on that same stream, after
its desires, that it received the value (:class:`~distributary.protocol.shared.
SharedValuesReceived`): whatever order its messages come in, the keys are never
without a holder in between.  A queue's item hands over its own holder; a variable's
value, which stays, gets a new one.  The receipts of a client that leaves go with it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from distributary.protocol import shared as sh
from distributary.protocol.serialize import Serialized
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension


@dataclass(slots=True)
class StoredValue:
    """A value kept by the scheduler, and the pseudo-client wanting its keys (None
    when it holds no future)."""

    data: Serialized
    keys: tuple
    holder: str | None = None


class SharedValues(SchedulerExtension):
    """The values kept for the queues and variables: the holds on their futures' keys,
    and the receipts of the values handed to clients, by client."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.receipts: dict[str, set[str]] = {}  # client -> pseudo-clients holding for it
        self.message_handlers[sh.SharedValuesReceived] = self.received
        self.instruction_handlers[ins.ClientRemoved] = self.client_removed

    async def receive(
        self,
        kind: str,
        data: object,
        keys: tuple,
        client: str | None,
        uid: str | None,
        timeout: float | None = None,
    ) -> StoredValue:
        """A value sent by ``client``, its keys held from now on (by ``<kind>-<uuid>``).

        Waits (at most ``timeout``) for the client's earlier messages when it sent a
        flush marker ``uid``; ValueError naming a key the scheduler does not know.
        """
        if not isinstance(data, Serialized):
            raise TypeError(f"data: expected a serialized value, got {type(data).__name__}")
        try:
            await asyncio.wait_for(self.scheduler.after_flush(client, uid), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"The messages that client {client!r} sent before storing a value did not "
                f"arrive within {timeout} s"
            ) from None
        tasks = self.scheduler.state.tasks
        for key in keys:
            if key not in tasks:
                raise ValueError(
                    f"Cannot store a value holding the future of {key!r}: the scheduler "
                    "does not know that key (was its future released or cancelled?)"
                )
        value = StoredValue(data, tuple(keys))
        value.holder = self._hold(kind, value.keys)
        return value

    def hand_over(self, value: StoredValue, client: str | None, *, keep: bool) -> sh.SharedValue:
        """The reply giving ``value`` to ``client``, its keys held until the client
        confirms it received them.  ``keep``: the value stays (it gets a new holder for
        the client); otherwise its own holder holds for the client from now on."""
        if keep:
            holder = None if client is None else self._hold("receipt", value.keys)
        else:
            holder, value.holder = value.holder, None
            if client is None and holder is not None:
                self._remove(holder)  # (nobody to hold its keys for)
                holder = None
        if holder is not None:
            self.receipts.setdefault(client, set()).add(holder)
        return sh.SharedValue(value.data, value.keys, receipt=holder)

    def release(self, value: StoredValue | None) -> None:
        """The value is not kept any more: its pseudo-client lets go of its keys."""
        if value is not None and value.holder is not None:
            holder, value.holder = value.holder, None
            self._remove(holder)

    def received(self, msg: sh.SharedValuesReceived) -> None:
        """The client holds futures of the values it was handed: their receipts go."""
        self.forget_receipts(msg.client, msg.receipts)

    def forget_receipts(self, client: str | None, receipts: tuple) -> None:
        """Drop these receipts of ``client`` (it received the values, or never will)."""
        held = self.receipts.get(client)
        if held is None:
            return
        for receipt in receipts:
            if receipt in held:
                held.discard(receipt)
                self._remove(receipt)
        if not held:
            del self.receipts[client]

    def client_removed(self, removed: ins.ClientRemoved) -> None:
        """A client left: what was held for it goes."""
        for receipt in self.receipts.pop(removed.client, ()):
            self._remove(receipt)

    def _hold(self, kind: str, keys: tuple) -> str | None:
        """A new pseudo-client wanting ``keys`` (None for no keys)."""
        if not keys:
            return None
        holder = f"{kind}-{uuid.uuid4()}"
        self.scheduler.handle(ev.ClientDesiresKeys(f"{holder}-hold", keys, client=holder))
        return holder

    def _remove(self, holder: str) -> None:
        self.scheduler.handle(ev.RemoveClient(f"{holder}-release", holder))
