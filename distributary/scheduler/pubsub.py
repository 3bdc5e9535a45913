"""Publish/subscribe: messages published on a topic (a name) reach every subscriber
of it, through the scheduler.

Theory of operation
-------------------
A subscriber (one ``Sub`` object) is announced on its client's stream
(``pubsub-subscribe``) and receives every message published on its topic after that
announcement arrives.  Publishing (``pubsub-put``) also goes on the publisher's
stream, so the messages of one publisher arrive in the order it sent them, after the
subscriptions it made before.  Messages stay pickled, as the scheduler never
unpickles them.

Each subscriber has a buffer here of at most :data:`BUFFER_LENGTH` messages; when it
is full the oldest message is dropped to make room (a subscriber that does not read
loses the oldest, never the newest), and the loss is counted in ``dropped``.  A
``pubsub-get`` is one request: answered with every buffered message at once (the
client hands them out one by one), or, with an empty buffer, when the next message
arrives or its ``timeout`` passes (TimeoutError).  Messages handed to a get whose
caller is gone go back to the front of the buffer.  A get announces the subscriber
too, in case it overtook the announcement on the stream.

Subscribers go with their ``Sub`` (``pubsub-unsubscribe``, sent when it is garbage
collected) and with their client, when it leaves; a topic goes with its last
subscriber.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from distributary.protocol import shared as sh
from distributary.protocol.serialize import Serialized
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension
from distributary.scheduler.waiters import TIMED_OUT, WaitQueue, caller_gone, check_connected

logger = logging.getLogger("distributary.scheduler")

BUFFER_LENGTH = 1000  # messages buffered per subscriber; beyond, the oldest are dropped


@dataclass(slots=True)
class Subscriber:
    """One subscriber: its topic and client, the messages for it, and its waiting get."""

    id: str
    name: Any
    client: str
    buffer: deque = field(default_factory=lambda: deque(maxlen=BUFFER_LENGTH))
    getters: WaitQueue = field(default_factory=WaitQueue)
    dropped: int = 0  # messages lost to a full buffer


class PubSubExtension(SchedulerExtension):
    """The scheduler's topics and their subscribers."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.subscribers: dict[str, Subscriber] = {}  # by id
        self.topics: dict[Any, dict[str, Subscriber]] = {}  # name -> subscribers by id
        self.handlers[sh.PubSubGet] = self.get
        self.message_handlers.update(
            {
                sh.PubSubSubscribe: self.subscribe,
                sh.PubSubUnsubscribe: self.unsubscribe,
                sh.PubSubPut: self.publish,
            }
        )
        self.instruction_handlers[ins.ClientRemoved] = self.client_removed

    # ------------------------------------------------------------------ the streams

    def subscribe(self, msg: sh.PubSubSubscribe) -> None:
        """A client's new subscriber of a topic."""
        if self._subscriber(msg.subscriber, msg.name, msg.client) is None:
            logger.warning("Ignored subscriber %s of %s: id taken", msg.subscriber, msg.client)

    def unsubscribe(self, msg: sh.PubSubUnsubscribe) -> None:
        """A client's subscriber is gone."""
        sub = self.subscribers.get(msg.subscriber)
        if sub is not None and sub.client == msg.client:
            self._remove(sub)

    def publish(self, msg: sh.PubSubPut) -> None:
        """A message for every subscriber of its topic."""
        if not isinstance(msg.data, Serialized):
            logger.warning(
                "Dropped a message published by %s on %r: not a serialized value",
                msg.client,
                msg.name,
            )
            return
        for sub in self.topics.get(msg.name, {}).values():
            if len(sub.buffer) == BUFFER_LENGTH:
                sub.dropped += 1
                if sub.dropped == 1:
                    logger.warning(
                        "Subscriber %s of %r reads too slowly: dropping its oldest messages",
                        sub.id,
                        sub.name,
                    )
            sub.buffer.append(msg.data)
            self._serve(sub)

    # ------------------------------------------------------------------ requests

    async def get(self, comm: Any, msg: sh.PubSubGet) -> tuple:
        """The messages buffered for the subscriber, waiting at most ``timeout`` for
        one (TimeoutError)."""
        check_connected(self.scheduler, msg.client)
        sub = self._subscriber(msg.subscriber, msg.name, msg.client or "")
        if sub is None:
            raise ValueError(f"Subscriber {msg.subscriber!r} belongs to another topic or client")
        if sub.buffer and not sub.getters:
            return tuple(_take_all(sub))
        waiting = Handed(comm)
        try:
            outcome = await sub.getters.wait(sub.client, msg.timeout, waiting)
        except BaseException:
            sub.buffer.extendleft(reversed(waiting.messages))
            raise
        if outcome is TIMED_OUT:
            raise TimeoutError(f"No message on {msg.name!r} within {msg.timeout} s")
        if caller_gone(self.scheduler, comm, msg.client):
            sub.buffer.extendleft(reversed(waiting.messages))
            self._serve(sub)
            return ()
        return tuple(waiting.messages)

    def client_removed(self, removed: ins.ClientRemoved) -> None:
        """A client left: its subscribers go, and their waiting gets fail."""
        for sub in [s for s in self.subscribers.values() if s.client == removed.client]:
            self._remove(sub)

    # ------------------------------------------------------------------ subscribers

    def _subscriber(self, sub_id: str, name: Any, client: str) -> Subscriber | None:
        """The subscriber ``sub_id`` of this topic and client, made if new; None if the
        id is another's."""
        sub = self.subscribers.get(sub_id)
        if sub is None:
            sub = self.subscribers[sub_id] = Subscriber(sub_id, name, client)
            self.topics.setdefault(name, {})[sub_id] = sub
        elif sub.name != name or sub.client != client:
            return None
        return sub

    def _remove(self, sub: Subscriber) -> None:
        sub.getters.drop_client(sub.client)
        del self.subscribers[sub.id]
        topic = self.topics[sub.name]
        del topic[sub.id]
        if not topic:
            del self.topics[sub.name]

    def _serve(self, sub: Subscriber) -> None:
        """Hand the buffered messages to the first get still waiting for them."""
        while sub.buffer and (waiter := sub.getters.first()) is not None:
            waiting: Handed = waiter.detail
            if waiting.comm.closed():
                sub.getters.serve(None)
                continue
            waiting.messages = _take_all(sub)
            sub.getters.serve(waiting.messages)


@dataclass(slots=True)
class Handed:
    """A waiting get, and the messages handed to it."""

    comm: Any
    messages: list = field(default_factory=list)


def _take_all(sub: Subscriber) -> list:
    messages = list(sub.buffer)
    sub.buffer.clear()
    return messages
