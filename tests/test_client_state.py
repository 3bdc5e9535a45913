"""Unit tests of the client's sans-I/O core: calls and reports in, messages out.

No event loop and no network: each test drives ``ClientState`` directly, the way the
``Client`` shell does under its lock, and looks at what ``flush`` would send.
"""

from __future__ import annotations

import gc

import pytest

from distributary.client.state import ClientState, PendingGraph
from distributary.protocol.client_messages import TO_CLIENT, FromClient, TaskSpec, ToClient
from distributary.protocol.errors import RemoteError
from distributary.protocol.wire import ProtocolError


def submit(core: ClientState, *keys, tasks=None) -> tuple[list, PendingGraph]:
    """Claim keys and build their graph at once, one part, as ``Client.submit`` does."""
    records, graph = core.submit(list(keys))
    if graph.wanted:
        sent = [k for k in keys if k in graph.wanted]
        core.add_part(graph, tasks or [task(k) for k in dict.fromkeys(sent)], sent)
        graph.done = True
    return records, graph


def task(key, *dependencies) -> TaskSpec:
    return TaskSpec(key, None, dependencies=dependencies)


def ops(msgs: list[FromClient]) -> list[tuple]:
    return [(m.op, tuple(getattr(m, "keys", None) or getattr(m, "wanted", ()))) for m in msgs]


def flush(core: ClientState) -> list[FromClient]:
    msgs, _ = core.flush()
    return msgs


def report(op: str, key, ack: int, **fields) -> ToClient:
    """A report from the scheduler, as the client's stream decodes it."""
    defaults = {"type": "", "workers": (), "exception": None, "traceback": None}
    defaults |= {"exception_text": "", "reason": "", "stimulus_id": "test"}
    return TO_CLIENT.decode({"op": op, "key": key, "ack": ack, **defaults, **fields}, "me")


# ---------------------------------------------------------------------- claiming and releasing


def test_a_key_is_sent_once_while_held():
    core = ClientState()
    _, graph = submit(core, "x")
    assert graph.wanted == {"x"}
    _, again = submit(core, "x")
    assert not again.wanted
    assert core.refcount == {"x": 2}
    assert ops(flush(core)) == [("update-graph", ("x",))]


def test_a_key_given_twice_is_sent_once():
    core = ClientState()
    records, graph = submit(core, "x", "x")
    assert records[0] is records[1] and graph.wanted == {"x"}
    assert core.refcount == {"x": 2}


def test_a_release_not_yet_sent_is_taken_back():
    """The issue-11 race: the last Future goes, and the key is submitted again before
    the release is flushed.  Nothing is sent twice and the key stays held."""
    core = ClientState()
    [first], _ = submit(core, "x")
    flush(core)
    core.release("x")
    [second], graph = submit(core, "x")
    assert second is first and not graph.wanted
    assert flush(core) == []
    assert core.holds("x")


def test_a_release_sent_means_the_task_is_sent_again_after_it():
    core = ClientState()
    submit(core, "x")
    flush(core)
    core.release("x")
    assert ops(flush(core)) == [("client-releases-keys", ("x",))]
    _, graph = submit(core, "x")
    assert graph.wanted == {"x"}
    assert ops(flush(core)) == [("update-graph", ("x",))]


def test_an_old_release_never_overtakes_a_graph_that_needs_the_key():
    """Released, taken back by a graph that depends on it, released again: the one
    release that goes out comes after that graph."""
    core = ClientState()
    submit(core, "x")
    flush(core)
    core.release("x")
    submit(core, "x")  # taken back
    submit(core, "y", tasks=[task("y", "x")])
    core.release("x")
    core.release("x")  # (one too many: ignored)
    assert ops(flush(core)) == [("update-graph", ("y",)), ("client-releases-keys", ("x",))]


def test_messages_are_numbered_in_order():
    core = ClientState()
    submit(core, "a")
    submit(core, "b")
    core.release("a")
    msgs = flush(core)
    assert [m.seq for m in msgs] == [1, 2, 3]
    assert all(m.stimulus_id for m in msgs)


# ---------------------------------------------------------------------- reports


def test_a_report_written_before_the_request_is_dropped():
    """A key released and asked for again: a report about its earlier life (an ``ack``
    below the new request's ``seq``) must not finish the new future."""
    core = ClientState()
    [record], _ = submit(core, "x")
    flush(core)  # seq 1
    core.release("x")
    flush(core)  # seq 2: released
    [record], _ = submit(core, "x")
    flush(core)  # seq 3: asked for again
    assert record.since == 3
    assert core.handle(report("key-in-memory", "x", ack=2, workers=("w",))) == []
    assert record.status == "pending"
    assert core.handle(report("key-in-memory", "x", ack=3, workers=("w",))) == [record]
    assert record.status == "finished" and record.workers == ("w",)


def test_reports_before_the_request_is_sent_are_dropped():
    core = ClientState()
    [record], _ = submit(core, "x")
    assert core.handle(report("task-erred", "x", ack=99, exception=None)) == []
    assert record.status == "pending" and record.since is None


def test_a_cancellation_echo_does_not_cancel_the_next_life_of_the_key():
    core = ClientState()
    [old], _ = submit(core, "x")
    flush(core)
    assert core.cancel(["x"], "cancel", force=False) == [old]
    assert old.status == "cancelled" and not core.holds("x")
    [new], graph = submit(core, "x")
    assert new is not old and graph.wanted == {"x"}
    assert ops(flush(core)) == [("cancel-keys", ("x",)), ("update-graph", ("x",))]
    core.handle(report("cancelled-key", "x", ack=2, reason="cancel"))  # the echo
    assert new.status == "pending" and core.holds("x")


def test_the_scheduler_cancelling_a_key_forgets_it_here():
    core = ClientState()
    [record], _ = submit(core, "x")
    flush(core)
    assert core.handle(report("cancelled-key", "x", ack=1, reason="lost dependencies")) == [record]
    assert record.status == "cancelled" and record.cancel_reason == "lost dependencies"
    _, graph = submit(core, "x")
    assert graph.wanted == {"x"}  # sent again


def test_lost_data_makes_a_future_pending_again():
    core = ClientState()
    [record], _ = submit(core, "x")
    flush(core)
    core.handle(report("key-in-memory", "x", ack=1, workers=("w",)))
    assert core.handle(report("lost-data", "x", ack=1)) == []
    assert record.status == "pending" and record.workers == ()


def test_a_restart_cancels_only_what_was_asked_for_before_it():
    core = ClientState()
    [before], _ = submit(core, "a")
    flush(core)  # seq 1
    [after], _ = submit(core, "b")
    flush(core)  # seq 2, after the restart
    done = core.handle(report("restart", None, ack=1))
    assert done == [before] and before.status == "cancelled"
    assert after.status == "pending" and core.holds("b") and not core.holds("a")
    assert core.restarts == 1


def test_malformed_reports_never_reach_the_state():
    for op, key in [("key-in-memory", ["unhashable"]), ("no-such-op", "x")]:
        with pytest.raises(ProtocolError):
            report(op, key, ack=1)


# ---------------------------------------------------------------------- graphs in parts


def test_keys_held_for_later_parts_are_released_after_the_last():
    core = ClientState()
    [record], graph = core.submit(["top"])
    core.add_part(graph, [task("leaf")], ["leaf"])  # needed by the next part only
    assert ops(flush(core)) == [("update-graph", ("leaf",))]
    core.add_part(graph, [task("top", "leaf")], ["top"])
    graph.done = True
    msgs = flush(core)
    assert ops(msgs) == [("update-graph", ("top",)), ("client-releases-keys", ("leaf",))]
    assert record.since == msgs[0].seq


def test_a_graph_queued_before_a_cancel_does_not_answer_for_the_next_life():
    """Found by the model test: the old graph's request must not count for the record
    made after the cancel, or the cancel's echo would cancel that one too."""
    core = ClientState()
    [old], graph = core.submit(["x"])  # built in the background: not sent yet
    core.cancel(["x"], "cancel", force=True)
    [new], again = submit(core, "x")
    core.add_part(graph, [task("x")], ["x"])
    graph.done = True
    msgs = flush(core)
    assert ops(msgs) == [
        ("update-graph", ("x",)),
        ("cancel-keys", ("x",)),
        ("update-graph", ("x",)),
    ]
    assert old.since == 1 and new.since == 3
    core.handle(report("cancelled-key", "x", ack=2, reason="cancel"))
    assert new.status == "pending" and core.holds("x")


def test_a_key_kept_for_a_later_part_becomes_the_holders():
    """Found by the model test: a graph asked the scheduler to keep ``x`` for its next
    part, and a record of this client holds ``x`` when the graph is done, so ``x`` is
    not released; that record must then wait for reports written after the graph's
    request (an older restart report would cancel it while the scheduler keeps ``x``)."""
    core = ClientState()
    [held], _ = submit(core, "x")
    flush(core)  # seq 1
    core.release("x")
    _, graph = core.submit(["top"])
    core.add_part(graph, [task("x")], ["x"])  # x, for the next part
    core.add_part(graph, [task("top", "x")], ["top"])
    graph.done = True
    submit(core, "x")  # taken back before the release went out
    msgs = flush(core)
    assert ops(msgs) == [("update-graph", ("x",)), ("update-graph", ("top",))]
    assert held.since == msgs[0].seq
    assert core.handle(report("restart", None, ack=1)) == []  # before the graph: not for it
    assert core.holds("x") and held.status == "pending"


def test_a_graph_being_built_holds_back_what_comes_after_it():
    core = ClientState()
    _, graph = core.submit(["big"])
    submit(core, "small")
    assert flush(core) == []
    core.add_part(graph, [task("big")], ["big"])
    graph.done = True
    assert ops(flush(core)) == [("update-graph", ("big",)), ("update-graph", ("small",))]


def test_a_graph_that_fails_to_build_in_the_background_errs_its_unsent_keys():
    core = ClientState()
    records, graph = core.submit(["a", "b"])
    core.add_part(graph, [task("a")], ["a"])
    graph.error = RemoteError(ValueError("unpicklable"), exception_text="ValueError()")
    graph.done = True
    msgs, done = core.flush()
    assert ops(msgs) == [("update-graph", ("a",))]
    assert done == [records[1]] and records[1].status == "error"
    assert records[0].status == "pending"


def test_abandoning_a_graph_releases_what_was_sent_and_forgets_the_rest():
    """A graph that raised while building returned no futures: its keys are dropped,
    the sent ones with a release, the unsent ones without a word."""
    core = ClientState()
    submit(core, "held")
    flush(core)
    claimed = ["held", "a", "b"]
    records, graph = core.submit(claimed)
    core.add_part(graph, [task("a")], ["a"])
    core.abandon(claimed, graph, RemoteError(None))
    graph.done = True
    assert ops(flush(core)) == [("update-graph", ("a",)), ("client-releases-keys", ("a",))]
    assert set(core.futures) == {"held"} and core.refcount == {"held": 1}
    _, again = core.submit(["b"])
    assert again.wanted == {"b"}  # never sent: sent now


# ---------------------------------------------------------------------- other requests


def test_a_future_unpickled_here_asks_for_its_key():
    core = ClientState()
    record = core.acquire("x")
    core.acquire("x")
    msgs = flush(core)
    assert ops(msgs) == [("client-desires-keys", ("x",))]
    assert record.since == msgs[0].seq and core.refcount == {"x": 2}


def test_retry_waits_for_reports_written_after_it():
    core = ClientState()
    [record], _ = submit(core, "x")
    flush(core)
    core.handle(report("task-erred", "x", ack=1, exception=None))
    assert record.status == "error"
    core.retry(["x"])
    assert record.status == "pending" and record.since is None
    msgs = flush(core)
    assert ops(msgs) == [("retry-keys", ("x",))]
    core.handle(report("task-erred", "x", ack=1, exception=None))  # the old error again
    assert record.status == "pending"
    core.handle(report("key-in-memory", "x", ack=2, workers=("w",)))
    assert record.status == "finished"


def test_scattered_data_is_finished_at_once():
    core = ClientState()
    [record] = core.scattered({"d": ["w"]}, {"d": 8}, {"d": "int"})
    assert record.status == "finished" and record.workers == ("w",)
    msgs = flush(core)
    assert ops(msgs) == [("scatter-data", ())] and record.since == msgs[0].seq


def test_cancel_everything_when_the_connection_is_lost():
    core = ClientState()
    records, _ = submit(core, "a", "b")
    flush(core)
    core.release("b")
    core.release("b")
    done = core.cancel_all("lost the connection")
    assert set(done) == set(records) and not core.futures and not core.releasing


# ---------------------------------------------------------------------- an erred future goes


@pytest.mark.timeout(30)
def test_an_erred_future_is_released_without_the_cycle_collector(c):
    """Raising a remote error must not tie the Future into a reference cycle (through
    tblib's frames or a frame holding the exception): its key would stay on the
    cluster until the collector happens to run."""

    def fail():
        raise ZeroDivisionError

    gc.disable()
    try:
        future = c.submit(fail)
        with pytest.raises(ZeroDivisionError):
            future.result()
        with pytest.raises(ZeroDivisionError):
            c.gather([future])
        del future
        c.submit(lambda: None).result()  # (a round trip: the release is counted)
        assert not [k for k in c._core.refcount if str(k).startswith("fail-")]
    finally:
        gc.enable()
