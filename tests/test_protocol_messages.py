"""Every message class round-trips through the wire, and every malformed variant of it
is a ProtocolError naming its op and field (no event loop, no sockets)."""

from __future__ import annotations

import typing
from typing import Any, ClassVar

import msgspec
import pytest

from distributary.protocol import data as dt
from distributary.protocol import deploy as dp
from distributary.protocol import diagnostics as dg
from distributary.protocol import error_message
from distributary.protocol import introspection as ri
from distributary.protocol import locks as lk
from distributary.protocol import plugins as pl
from distributary.protocol import progress as pg
from distributary.protocol import requests as rq
from distributary.protocol import shared as sh
from distributary.protocol.client_messages import FROM_CLIENT, TO_CLIENT, TaskSpec, UpdateGraph
from distributary.protocol.message import Catalogue, Key, Message, StreamMessage
from distributary.protocol.wire import ProtocolError, dumps_message, loads_message
from distributary.protocol.worker_messages import FROM_WORKER, TO_WORKER, WorkerHeartbeat

CATALOGUES = {"to-worker": TO_WORKER, "from-worker": FROM_WORKER}
CATALOGUES |= {"to-client": TO_CLIENT, "from-client": FROM_CLIENT}
# the requests each server answers
CATALOGUES["scheduler"] = Catalogue(
    *(rq.Identity, rq.Terminate, rq.RegisterWorker, rq.RegisterClient, rq.WhoHas, rq.Story),
    *(rq.WorkerKilled, rq.WorkersToClose, rq.RetireWorkers, rq.Restart, rq.WaitForWorkers),
    *(rq.PublishPut, rq.PublishGet, rq.PublishList, rq.PublishDelete),
    *(rq.RunOnWorkers, rq.RunFunction),
    *(lk.LockAcquire, lk.LockRelease, lk.LockLocked, lk.MultiLockAcquire, lk.MultiLockRelease),
    *(lk.SemaphoreRegister, lk.SemaphoreAcquire, lk.SemaphoreRelease, lk.SemaphoreRefresh),
    *(lk.SemaphoreValue, lk.SemaphoreClose),
    *(sh.QueueCreate, sh.QueuePut, sh.QueueGet, sh.QueueSize),
    *(sh.VariableSet, sh.VariableGet, sh.VariableDelete, sh.PubSubGet),
    *(sh.EventSet, sh.EventClear, sh.EventIsSet, sh.EventWait),
    *(ri.GetLogs, ri.GetVersions, ri.HasWhat, ri.Processing, ri.NThreads, ri.NBytes),
    *(ri.ClusterCallStack, ri.WorkerLogs, ri.ClusterVersions, ri.LogEvent, ri.GetEvents),
    *(pl.RegisterSchedulerPlugin, pl.UnregisterSchedulerPlugin, pl.GetPlugins),
    *(pl.RegisterWorkerPlugin, pl.UnregisterWorkerPlugin),
    *(dt.Replicate, dt.Rebalance, dt.SetMetadata, dt.GetMetadata, dt.GetErredTask),
    *(dp.AdaptiveTarget, dp.WatchWorkers),
    *(dg.TaskStream, dg.ClusterTransfers, dg.ClusterProfile),
    *(pg.ProgressStart, pg.ProgressGet),
)
CATALOGUES["worker"] = Catalogue(
    *(rq.Identity, rq.GetData, rq.UpdateData, rq.CloseWorker, rq.RunFunction),
    *(ri.GetLogs, ri.GetVersions, ri.CallStack, pl.PluginAdd, pl.PluginRemove),
    *(dg.GetTaskStream, dg.GetTransfers, dg.GetProfile),
)
CATALOGUES["nanny"] = Catalogue(
    *(rq.Identity, rq.Terminate, rq.Instantiate, rq.Kill, rq.RestartWorker, rq.CloseGracefully),
    *(rq.RunFunction, ri.GetLogs, ri.GetVersions, pl.PluginAdd, pl.PluginRemove),
)
CLASSES = [(name, cls) for name, cat in CATALOGUES.items() for cls in cat.classes]
IDS = [f"{name}:{cls.op}" for name, cls in CLASSES]


def sample(hint: Any) -> Any:
    """A value of the declared type, as it comes off the wire."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint == Key:
        return ("x", 1)
    if hint is Any:
        return {"anything": [1, 2]}
    simple = {str: "text", int: 7, float: 2.5, bool: True, bytes: b"raw"}
    if hint in simple:
        return simple[hint]
    if origin is typing.Literal:
        return args[0]
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return {f.name: sample(h) for f, h in _fields(hint)}
    if origin in (typing.Union, type(int | None)):
        return sample(next(a for a in args if a is not type(None)))
    if origin is tuple:
        return (sample(args[0]),)
    if origin is dict:
        return {sample(args[0]): sample(args[1])}
    raise AssertionError(f"no sample for {hint!r}")


def wrong(hint: Any) -> Any:
    """A value that the declared type does not allow (None: anything goes)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint == Key:
        return {"unhashable": 1}
    if hint is Any:
        return None
    if hint is None or origin is typing.Literal:
        return 5
    if hint in (str, bytes):
        return 5
    if hint in (int, float):
        return "five"
    if hint is bool:
        return 1
    if origin in (typing.Union, type(int | None)):
        if Any in args:
            return None
        return [1] if dict in args or any(typing.get_origin(a) is dict for a in args) else {"x": 1}
    if origin is tuple or (isinstance(hint, type) and issubclass(hint, msgspec.Struct)):
        return 5
    if origin is dict:
        return {sample(args[0]): wrong(args[1])} if wrong(args[1]) is not None else 5
    raise AssertionError(f"no wrong value for {hint!r}")


def _fields(cls: type) -> list[tuple[msgspec.structs.FieldInfo, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    local = {*getattr(cls, "peer_fields", ()), *getattr(cls, "arrival_fields", ())}
    return [(f, hints[f.name]) for f in msgspec.structs.fields(cls) if f.name not in local]


def wire_message(cls: type) -> dict:
    msg = {"op": cls.op}
    msg.update({f.name: sample(hint) for f, hint in _fields(cls)})
    return msg


def over_the_wire(msg: dict) -> Any:
    return loads_message(dumps_message(msg))


@pytest.mark.parametrize(("side", "cls"), CLASSES, ids=IDS)
def test_every_message_round_trips(side, cls):
    catalogue: Catalogue = CATALOGUES[side]
    decoded = catalogue.decode(over_the_wire(wire_message(cls)), "tcp://peer:1")
    assert type(decoded) is cls
    for name in cls.peer_fields:
        assert getattr(decoded, name) == "tcp://peer:1"  # the peer, not what was said
    again = catalogue.decode(over_the_wire(decoded.to_message()), "tcp://peer:1")
    if cls is WorkerHeartbeat:  # (stamped on arrival)
        again = msgspec.structs.replace(again, time=decoded.time)
    assert again == decoded


@pytest.mark.parametrize(("side", "cls"), CLASSES, ids=IDS)
def test_every_malformed_variant_is_a_protocol_error(side, cls):
    catalogue = CATALOGUES[side]
    for f, hint in _fields(cls):
        required = f.required
        if required:
            msg = wire_message(cls)
            del msg[f.name]
            with pytest.raises(ProtocolError) as info:
                catalogue.decode(msg, "peer")
            assert (info.value.op, info.value.field, info.value.problem) == (
                cls.op,
                f.name,
                "missing",
            )
        bad = wrong(hint)
        if bad is not None:
            msg = wire_message(cls) | {f.name: bad}
            with pytest.raises(ProtocolError) as info:
                catalogue.decode(msg, "peer")
            assert info.value.op == cls.op and info.value.field == f.name
            assert repr(cls.op) in str(info.value) and repr(f.name) in str(info.value)


@pytest.mark.parametrize("side", CATALOGUES)
def test_what_is_no_message_is_a_protocol_error(side):
    catalogue = CATALOGUES[side]
    with pytest.raises(ProtocolError, match="unknown op 'no-such-op'"):
        catalogue.decode({"op": "no-such-op"}, "peer")
    with pytest.raises(ProtocolError, match="unknown op None"):
        catalogue.decode({"key": "x"}, "peer")
    with pytest.raises(ProtocolError, match="a message is a map, not list"):
        catalogue.decode([1, 2], "peer")


def test_a_graph_travels_with_its_tasks():
    graph = UpdateGraph(
        "s",
        (TaskSpec(("x", 0), {"func": b"f"}, dependencies=(("y", 0),), priority=(1, 2.5)),),
        wanted=(("x", 0),),
        seq=4,
        client="me",
    )
    decoded = FROM_CLIENT.decode(over_the_wire(graph.to_message()), "me")
    assert decoded == graph
    bad = graph.to_message()
    bad["tasks"] = ({"key": "x", "payload": 1, "retries": "many"},)
    with pytest.raises(ProtocolError, match="field 'tasks': Expected `int`, got `str` at"):
        FROM_CLIENT.decode(bad, "me")


def test_every_message_is_declared_once():
    ops = [(side, cls.op) for side, cls in CLASSES]
    assert len(ops) == len(set(ops))
    requests = {cls for side, cls in CLASSES if issubclass(cls, rq.Request)}
    declared = {
        cls for cls in _all_subclasses(rq.Request) if cls.__module__.startswith("distributary.")
    }
    assert requests == declared  # every request is served by someone
    for _, cls in CLASSES:  # a stream message knows its peer; a request has none
        assert bool(cls.peer_fields) == issubclass(cls, StreamMessage), cls
    for _, cls in CLASSES:
        assert issubclass(cls, Message)
        assert cls.__struct_config__.frozen and "__slots__" in cls.__dict__
        assert cls.__doc__


def _all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"op": "free-keys", "stimulus_id": "s", "keys": [("x", [1])]}, "keys"),
        ({"op": "reschedule", "stimulus_id": "s", "key": ("x", {}), "run_id": 1}, "key"),
        (
            {
                "op": "update-graph",
                "stimulus_id": "s",
                "tasks": [{"key": "y", "payload": 1, "dependencies": [("x", [0])]}],
            },
            "tasks: dependencies",
        ),
    ],
)
def test_a_key_holding_something_unhashable_is_a_protocol_error(msg, field):
    catalogue = next(c for c in CATALOGUES.values() if msg["op"] in c)
    with pytest.raises(ProtocolError, match="unhashable key") as info:
        catalogue.decode(msg, "peer")
    assert info.value.field == field


REQUESTS = sorted({cls for _, cls in CLASSES if issubclass(cls, rq.Request)}, key=repr)


@pytest.mark.parametrize("cls", REQUESTS, ids=[f"{c.op}:{c.__name__}" for c in REQUESTS])
def test_every_reply_is_declared_and_checked(cls):
    """Each request names the type of its reply; the caller gets that type back, and
    a reply of another shape is a ProtocolError naming the op."""
    assert "reply_type" in vars(cls), f"{cls.__name__} does not declare its reply_type"
    hint = cls.reply_type
    decoded = rq.decode_reply(cls, over_the_wire(None if hint is None else sample(hint)))
    assert rq.decode_reply(cls, over_the_wire(decoded)) == decoded  # (as the server sends it)
    if isinstance(hint, type) and issubclass(hint, rq.Reply):
        assert type(decoded) is hint
    bad = wrong(hint)
    if bad is not None:
        with pytest.raises(ProtocolError, match=f"Malformed '{cls.op} reply' message: "):
            rq.decode_reply(cls, bad)
    with pytest.raises(ZeroDivisionError, match="remote"):
        rq.decode_reply(cls, error_message(ZeroDivisionError("remote")))


def test_a_catalogue_of_a_base_finds_messages_declared_after_it():
    """A new message is one class (and the handler that takes it): the catalogue of its
    base finds it, wherever and whenever it is declared."""

    class ToSomeone(StreamMessage, kw_only=True):
        """A test base."""

        peer: str = ""
        peer_fields: ClassVar[tuple[str, ...]] = ("peer",)

    catalogue = Catalogue.of(ToSomeone)
    assert catalogue.classes == ()
    with pytest.raises(ProtocolError, match="unknown op 'greet'"):
        catalogue.decode({"op": "greet", "stimulus_id": "s", "name": "x"})

    class Greet(ToSomeone):
        """Declared later, elsewhere."""

        op: ClassVar[str] = "greet"
        name: str

    assert "greet" in catalogue
    assert catalogue.decode({"op": "greet", "stimulus_id": "s", "name": "x"}, "p") == Greet(
        stimulus_id="s", name="x", peer="p"
    )
    assert catalogue.classes == (Greet,)
