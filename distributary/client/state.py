"""What a client knows of its keys, as a pure state machine.

Theory of operation
-------------------
``ClientState`` holds the futures table (one :class:`FutureState` per key the scheduler
has been asked to keep for this client), the reference counts of the ``Future``
objects, and the ordered outbox of messages to the scheduler.  The I/O shell
(:class:`~distributary.client.client.Client`) calls it under one lock, from any thread;
nothing here does I/O, reads a clock or imports asyncio.

Two rules make a key's life right whatever the timing:

1. **A decision and its effect are one step.**  Whether a key must be sent to the
   scheduler (:meth:`ClientState.claim`) is decided in the same step that takes the
   reference on it.  A key whose last reference went away is *releasing*: its record
   waits beside the outbox until the release is flushed.  A claim before the flush
   takes the record back and the release is never sent; a claim after it sends the
   task again, behind the release.  So the client never counts on the scheduler
   knowing a key it has asked it to forget.
2. **A report is applied only if it answers the latest request for the record.**
   Every message to the scheduler carries a sequence number ``seq``; every message
   back carries ``ack``, the last ``seq`` the scheduler had handled from this client
   when it wrote it.  A record remembers the ``seq`` of the latest message that asked
   for its key on its behalf (``since``), and a report with an older ``ack`` is
   dropped: it was written before the scheduler saw that request, perhaps about an
   earlier life of the key (released or cancelled since).  The scheduler answers every
   request for a key (with its state, or a cancellation), so the report that counts
   always comes.  A key that a graph asked the scheduler to keep for a later part,
   and that a record holds when the graph is done, is the record's from then on: the
   graph's request counts as the record's.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from distributary.protocol.client_messages import (
    CancelKeys,
    ClientDesiresKeys,
    ClientReleasesKeys,
    FromClient,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    Restarted,
    RetryKeys,
    ScatterData,
    TaskSpec,
    ToClient,
    UpdateGraph,
)
from distributary.protocol.errors import RemoteError

Key = Any

_FINAL = frozenset({"finished", "error", "cancelled"})


class FutureState:
    """What the client knows of one key: shared by every Future of that key.

    ``status`` is ``pending``, ``finished``, ``error`` or ``cancelled``.  ``waiter``
    and ``callbacks`` belong to the I/O shell, which wakes them when the state says
    the record is done.
    """

    __slots__ = (
        "key",
        "status",
        "error",
        "type",
        "workers",
        "cancel_reason",
        "since",
        "waiter",
        "callbacks",
    )

    def __init__(self, key: Key = None, since: int | None = None) -> None:
        self.key = key
        self.status = "pending"
        self.error: RemoteError | None = None
        self.type = ""
        self.workers: tuple = ()
        self.cancel_reason = ""
        self.since = since  # seq of the message that asked for it; None: not sent yet
        self.waiter: Any = None
        self.callbacks: list[Callable[[], None]] = []

    def done(self) -> bool:
        """Whether the key finished, erred or was cancelled."""
        return self.status in _FINAL

    def finish(self, type_name: str, workers: tuple) -> None:
        self.type = type_name
        self.workers = workers
        self.status = "finished"

    def set_error(self, error: RemoteError) -> None:
        self.error = error
        self.status = "error"

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self.status = "cancelled"

    def reset(self) -> None:
        """Pending again (lost data being recomputed, or a retry)."""
        self.status = "pending"
        self.error = None
        self.workers = ()

    def __repr__(self) -> str:
        return f"<FutureState {self.key!r} {self.status}>"


class PendingGraph:
    """A graph in the outbox: its parts as they are built, sent in order."""

    __slots__ = ("wanted", "records", "built", "asked", "kept_for_later", "parts", "done", "error")

    def __init__(self, wanted: set, records: dict | None = None):
        self.wanted = wanted  # the keys futures were made for
        self.records: dict[Key, FutureState] = records or {}  # theirs
        self.built: list[Draft] = []  # parts built and not yet taken by the outbox
        self.asked: set = set()  # every key the built messages ask the scheduler to keep
        self.kept_for_later: dict[Key, int] = {}  # other keys asked for: the seq that did
        self.done = False
        self.error: RemoteError | None = None  # errs the wanted keys of the parts never built


class _Release:
    """A key's release in the outbox; sent only if it is still the key's latest."""

    __slots__ = ("key", "record")

    def __init__(self, key: Key, record: FutureState | None):
        self.key = key
        self.record = record


class _Desire:
    """A key in the outbox that the scheduler is to keep for this record."""

    __slots__ = ("record",)

    def __init__(self, record: FutureState):
        self.record = record


class Draft:
    """A message in the outbox, its ``seq`` (and ``stimulus_id``) given when it goes:
    its class and fields, and the records whose keys it asks for (reports written
    before the scheduler handled it are about earlier lives of those keys)."""

    __slots__ = ("cls", "fields", "records")

    def __init__(self, cls: type[FromClient], records: Iterable = (), **fields: Any):
        self.cls = cls
        self.fields = fields
        self.records = records


class ClientState:
    """The futures table, reference counts and ordered outbox of one client."""

    def __init__(self) -> None:
        self.futures: dict[Key, FutureState] = {}
        self.refcount: dict[Key, int] = {}
        self.releasing: dict[Key, _Release] = {}  # last reference gone, not yet flushed
        self.outbox: deque = deque()  # Drafts, PendingGraphs, _Releases, _Desires
        self.seq = 0  # of the last message flushed
        self.restarts = 0  # of the scheduler, as reported on the stream
        self._reports: dict[type, Callable[[FutureState, Any], list[FutureState]]] = {
            KeyInMemory: self._key_in_memory,
            KeyErred: self._key_erred,
            KeyCancelled: self._key_cancelled,
            KeyLost: self._key_lost,
        }

    # ------------------------------------------------------------------ references

    def claim(self, keys: Iterable[Key]) -> tuple[list[FutureState], list[Key]]:
        """Take a reference on each key; return their records and the keys to send.

        A key is sent unless this client holds it already (or its release is not
        flushed yet, which is then taken back).  A cancelled key is sent again.
        """
        records = []
        to_send = []
        for key in keys:
            record = self._held(key)
            if record is None:
                record = self.futures[key] = FutureState(key)
                to_send.append(key)
            self.refcount[key] = self.refcount.get(key, 0) + 1
            records.append(record)
        return records, to_send

    def submit(self, keys: list[Key]) -> tuple[list[FutureState], PendingGraph]:
        """Claim ``keys`` for new futures; the keys to send are the ``wanted`` of the
        returned graph, which is queued (if there are any) and waits for its parts."""
        records, to_send = self.claim(keys)
        graph = PendingGraph(set(to_send), {key: self.futures[key] for key in to_send})
        if to_send:
            self.outbox.append(graph)
        return records, graph

    def add_part(self, graph: PendingGraph, tasks: list[TaskSpec], want: list[Key]) -> None:
        """The next part of ``graph`` is built: its tasks, and the keys it asks to keep."""
        graph.built.append(Draft(UpdateGraph, tasks=tuple(tasks), wanted=tuple(want)))
        graph.asked.update(want)

    def acquire(self, key: Key) -> FutureState:
        """Take a reference on a key named from elsewhere (an unpickled Future): if
        this client does not hold it yet, the scheduler is asked to keep it."""
        record = self._held(key)
        if record is None:
            record = self.futures[key] = FutureState(key)
            self.outbox.append(_Desire(record))
        self.refcount[key] = self.refcount.get(key, 0) + 1
        return record

    def _held(self, key: Key) -> FutureState | None:
        record = self.futures.get(key)
        if record is None:
            release = self.releasing.pop(key, None)
            if release is not None:  # its release is not sent: take it back
                record = self.futures[key] = release.record
        return record

    def holds(self, key: Key) -> bool:
        """Whether the scheduler keeps ``key`` for this client until it is released."""
        return key in self.futures

    def release(self, key: Key) -> None:
        """Drop a reference; the last one queues the key's release."""
        if key not in self.refcount:
            return  # (not a reference of this client's)
        count = self.refcount[key] - 1
        if count > 0:
            self.refcount[key] = count
            return
        self.refcount.pop(key, None)
        release = _Release(key, self.futures.pop(key, None))
        if release.record is not None:
            self.releasing[key] = release
        self.outbox.append(release)

    def release_unheld(self, keys: Iterable[Key]) -> None:
        """Release keys the scheduler made this client want, unless it holds them."""
        for key in keys:
            if key not in self.futures and key not in self.releasing:
                self.outbox.append(_Release(key, None))

    def abandon(self, claimed: list, graph: PendingGraph, error: RemoteError) -> list[FutureState]:
        """Drop the claims of a call whose graph failed to build (it returned no
        futures): what was sent is released, what was not is forgotten.  A key never
        sent that another caller claimed meanwhile errs.  Returns the records now done."""
        changed = []
        for key, count in Counter(claimed).items():
            if key not in graph.wanted or key in graph.asked:
                for _ in range(count):
                    self.release(key)
                continue
            left = self.refcount.pop(key, count) - count
            record = self.futures.get(key)
            if left > 0:
                self.refcount[key] = left
                if record is not None and not record.done():
                    record.set_error(error)
                    changed.append(record)
            elif record is not None:
                del self.futures[key]  # never asked for: there is nothing to release
        return changed

    # ------------------------------------------------------------------ local changes

    def cancel(self, keys: Iterable[Key], reason: str, force: bool) -> list[FutureState]:
        """Cancel keys here and queue the message; return the records now done."""
        keys = list(keys)
        changed = []
        for key in keys:
            record = self.futures.pop(key, None)
            if record is not None:
                record.cancel(reason)
                changed.append(record)
        self.outbox.append(Draft(CancelKeys, keys=tuple(keys), force=force))
        return changed

    def retry(self, keys: Iterable[Key]) -> None:
        """Queue a retry of the erred keys; their records are pending again."""
        keys = list(keys)
        retried = []
        for key in keys:
            record = self.futures.get(key)
            if record is not None and record.status == "error":
                record.reset()
                record.since = None  # until the retry is sent, reports are of the error
                retried.append(record)
        self.outbox.append(Draft(RetryKeys, retried, keys=tuple(keys)))

    def scattered(self, who_has: dict, nbytes: dict, types: dict) -> list[FutureState]:
        """Data this client put on workers itself: its records are finished, and the
        scheduler is told.  Returns the records."""
        records = []
        for key, workers in who_has.items():
            record = self._held(key)
            if record is None:
                record = self.futures[key] = FutureState(key)
            record.since = None  # (the scatter message is its newest request)
            record.finish(types.get(key, ""), tuple(workers))
            records.append(record)
        draft = Draft(ScatterData, records, who_has=who_has, nbytes=nbytes, types=types)
        self.outbox.append(draft)
        return records

    def cancel_all(self, reason: str, ack: int | None = None) -> list[FutureState]:
        """Everything is gone (the connection lost, or with ``ack`` a restart of the
        scheduler after it handled that message): cancel those records."""
        changed = []
        records = [*self.futures.values(), *(r.record for r in self.releasing.values())]
        for record in records:
            if ack is not None and (record.since is None or record.since > ack):
                continue  # asked for after the restart
            if not record.done():
                changed.append(record)
            record.cancel(reason)
            self.futures.pop(record.key, None)
            self.releasing.pop(record.key, None)
        return changed

    # ------------------------------------------------------------------ the outbox

    def flush(self) -> tuple[list[FromClient], list[FutureState]]:
        """The messages ready to go, in order, numbered; and the records now done
        (the wanted keys of a graph that failed to build).

        A graph still being built holds back everything queued after it.  Runs of
        releases (or of desired keys) become one message each.
        """
        msgs: list[FromClient] = []
        changed: list[FutureState] = []
        run: list = []  # keys of the run of releases or desires being gathered
        run_op = ""

        def end_run() -> None:
            if run:
                if run_op is ClientReleasesKeys:
                    self._number(msgs, Draft(ClientReleasesKeys, keys=tuple(i.key for i in run)))
                else:
                    records = [item.record for item in run]
                    keys = tuple(r.key for r in records)
                    self._number(msgs, Draft(ClientDesiresKeys, records, keys=keys))
                run.clear()

        outbox = self.outbox
        while outbox:
            item = outbox[0]
            if isinstance(item, PendingGraph):
                end_run()
                for part in item.built:
                    wanted = part.fields["wanted"]
                    part.records = [item.records.get(k) for k in wanted]
                    self._number(msgs, part)
                    for key in wanted:
                        if key not in item.records:
                            item.kept_for_later[key] = self.seq
                item.built.clear()
                if not item.done:
                    break  # the rest waits for this graph
                changed.extend(self._finish_graph(item, msgs))
            elif isinstance(item, Draft):
                end_run()
                self._number(msgs, item)
            else:
                op = ClientReleasesKeys if type(item) is _Release else ClientDesiresKeys
                if op is ClientReleasesKeys and item.record is not None:
                    if self.releasing.get(item.key) is not item:
                        outbox.popleft()  # claimed again since: a later release, if any
                        continue
                    del self.releasing[item.key]
                if op != run_op:
                    end_run()
                    run_op = op
                run.append(item)
            outbox.popleft()
        end_run()
        return msgs, changed

    def _number(self, msgs: list[FromClient], draft: Draft) -> None:
        """The message of ``draft``, with the next ``seq``; the records it asks for
        wait for reports written after it."""
        self.seq += 1
        cls = draft.cls
        msgs.append(cls(f"{cls.op}-{self.seq}", seq=self.seq, **draft.fields))
        for record in draft.records:
            if record is not None:
                record.since = self.seq

    def _record_of(self, key: Key) -> FutureState | None:
        record = self.futures.get(key)
        if record is None and key in self.releasing:
            record = self.releasing[key].record
        return record

    def _finish_graph(self, graph: PendingGraph, msgs: list[FromClient]) -> list[FutureState]:
        changed = []
        if graph.error is not None:
            for key in graph.wanted - graph.asked:
                record = self.futures.get(key)
                if record is not None and record.status == "pending":
                    record.set_error(graph.error)
                    changed.append(record)
        # Keys asked for only so that a later part finds them are released, unless a
        # record holds them: the scheduler keeps them for it, as the graph asked.
        unheld = []
        for key, seq in graph.kept_for_later.items():
            record = self._record_of(key)
            if record is None:
                unheld.append(key)
            elif record.since is not None and record.since < seq:
                record.since = seq
        if unheld:
            self._number(msgs, Draft(ClientReleasesKeys, keys=tuple(unheld)))
        return changed

    # ------------------------------------------------------------------ from the scheduler

    def handle(self, msg: ToClient) -> list[FutureState]:
        """Apply one message from the scheduler; return the records it made done."""
        if type(msg) is Restarted:
            self.restarts += 1
            return self.cancel_all("scheduler-restart", msg.ack)
        record = self._record_of(msg.key)
        if record is None or record.since is None or msg.ack < record.since:
            return []  # (about no record, or written about an earlier life of the key)
        return self._reports[type(msg)](record, msg)

    def _key_in_memory(self, record: FutureState, msg: KeyInMemory) -> list[FutureState]:
        record.finish(msg.type, msg.workers)
        return [record]

    def _key_erred(self, record: FutureState, msg: KeyErred) -> list[FutureState]:
        record.set_error(RemoteError(msg.exception, msg.traceback, msg.exception_text))
        return [record]

    def _key_cancelled(self, record: FutureState, msg: KeyCancelled) -> list[FutureState]:
        # the scheduler no longer keeps it for us: a new submit must send it again
        self.futures.pop(record.key, None)
        self.releasing.pop(record.key, None)
        record.cancel(msg.reason)
        return [record]

    def _key_lost(self, record: FutureState, msg: KeyLost) -> list[FutureState]:
        record.reset()
        return []
