"""Tests for distributary.protocol: pickle frames, msgpack messages, error messages."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import traceback

import numpy as np
import pytest

from distributary.protocol import (
    ProtocolError,
    RemoteError,
    RemoteException,
    Serialize,
    Serialized,
    deserialize,
    dumps_function,
    dumps_message,
    error_message,
    loads_function,
    loads_message,
    rebuild_exception,
    serialize,
)


def roundtrip(msg: object) -> object:
    return loads_message(dumps_message(msg))


def same(a: object, b: object) -> bool:
    """Equal, with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return a == b


# --- serialize ----------------------------------------------------------------


def test_serialize_roundtrip_plain_objects():
    obj = {"a": [1, 2.5, None], "b": ("x", b"y"), "c": {1, 2}}
    ser = serialize(obj)
    assert isinstance(ser, Serialized)
    assert len(ser.frames) == 1
    assert ser.nbytes == len(ser.frames[0])
    assert ser.deserialize() == obj


def test_serialize_numpy_out_of_band_without_copy():
    x = np.arange(1_000_000, dtype="f8")
    ser = serialize(x)
    assert len(ser.frames) == 2
    assert ser.frames[1].nbytes == x.nbytes
    assert ser.nbytes > x.nbytes
    assert np.shares_memory(np.frombuffer(ser.frames[1], dtype="f8"), x)
    y = ser.deserialize()
    assert y.dtype == x.dtype and (y == x).all()


def test_serialize_small_buffers_stay_in_band():
    ser = serialize(np.arange(10))
    assert len(ser.frames) == 1
    assert (ser.deserialize() == np.arange(10)).all()


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("no pickling for you")


def test_serialize_unpicklable_raises_type_error_naming_type():
    with pytest.raises(TypeError, match="Could not serialize object of type Unpicklable") as info:
        serialize(Unpicklable())
    assert info.value.__cause__ is not None
    with pytest.raises(TypeError, match="type lock"):
        serialize(threading.Lock())


def test_serialize_lambda_and_closure_with_cloudpickle():
    offset = 10
    ser = serialize(lambda x: x + offset)
    assert ser.deserialize()(1) == 11

    def local(x):
        return x * offset

    assert serialize(local).deserialize()(2) == 20


def test_serialize_main_functions_by_value():
    """A function defined in __main__ of one process unpickles in another."""
    script = (
        "import sys\n"
        "from distributary.protocol import serialize\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "sys.stdout.write(serialize(triple).frames[0].hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    func = Serialized([bytes.fromhex(out.stdout)]).deserialize()
    assert func(5) == 15


def test_deserialize_accepts_serialize_serialized_and_plain():
    assert deserialize(Serialize([1, 2])) == [1, 2]
    assert deserialize(serialize([1, 2])) == [1, 2]
    assert deserialize(5) == 5
    assert deserialize(None) is None


def test_serialize_is_slotted():
    with pytest.raises(AttributeError):
        Serialize(1).other = 2  # type: ignore[attr-defined]


def test_dumps_function_is_cached():
    def inc(x):
        return x + 1

    data = dumps_function(inc)
    assert dumps_function(inc) is data
    func = loads_function(data)
    assert loads_function(data) is func
    assert func(1) == 2


def test_dumps_function_unhashable_callable():
    class Callable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x):
            return x * 2

    func = loads_function(dumps_function(Callable()))
    assert func(4) == 8


# --- messages -------------------------------------------------------------------

KEYS = ["x", b"y", 1, -7, ("x", 0), ("x", 0, (1, 2)), (b"a", ("b", 3, (4,))), ()]


def test_keys_roundtrip_exactly():
    msg = {"keys": KEYS, "who_has": {key: ["tcp://a:1"] for key in KEYS}}
    out = roundtrip(msg)
    assert same(out["keys"], tuple(KEYS))
    assert set(out["who_has"]) == set(KEYS)
    for key in KEYS:
        assert same(next(k for k in out["who_has"] if k == key), key)
        assert out["who_has"][key] == ("tcp://a:1",)


def test_message_without_serialize_is_one_frame():
    frames = dumps_message({"op": "ping", "x": [1, 2, {"y": b"z"}], "n": None, "f": 1.5})
    assert len(frames) == 1
    assert loads_message(frames) == {"op": "ping", "x": (1, 2, {"y": b"z"}), "n": None, "f": 1.5}


def test_serialize_in_message_arrives_serialized():
    x = np.arange(100_000)
    frames = dumps_message({"op": "data", "x": Serialize(x), "small": Serialize([1, 2])})
    assert len(frames) == 3  # header (with [1, 2] pickled inside), pickle of x, buffer of x
    msg = loads_message(frames)
    assert isinstance(msg["x"], Serialized)
    assert isinstance(msg["small"], Serialized)
    assert (deserialize(msg["x"]) == x).all()
    assert deserialize(msg["small"]) == [1, 2]


def test_many_small_serialized_values_travel_in_the_header():
    payloads = {i: Serialize(("task", i)) for i in range(200_000)}
    frames = dumps_message({"op": "graph", "payloads": payloads})
    assert len(frames) == 1
    msg = loads_message(frames)
    assert deserialize(msg["payloads"][123_456]) == ("task", 123_456)


@pytest.mark.parametrize("inline", [b"\x90", b"\x91\x01", b"\xc1"])
def test_malformed_inline_value_is_a_protocol_error(inline):
    import msgpack

    header = msgpack.packb({"x": msgpack.ExtType(43, inline)})
    with pytest.raises(ProtocolError):
        loads_message([header])


def test_serialized_passes_through_without_deserialization():
    payload = serialize(Unpickleable_on_load())
    first = loads_message(dumps_message({"payload": payload}))
    # forwarding never unpickles: this payload would raise if it were loaded
    second = loads_message(dumps_message({"forwarded": first["payload"]}))
    assert isinstance(second["forwarded"], Serialized)
    assert second["forwarded"].nbytes == payload.nbytes
    with pytest.raises(RuntimeError, match="loaded"):
        deserialize(second["forwarded"])


def _refuse_to_load() -> None:
    raise RuntimeError("loaded")


class Unpickleable_on_load:
    def __reduce__(self):
        return (_refuse_to_load, ())


def test_unencodable_value_raises_type_error():
    with pytest.raises(TypeError, match="Serialize"):
        dumps_message({"x": object()})
    with pytest.raises(TypeError, match="Could not serialize"):
        dumps_message({"x": Serialize(Unpicklable())})


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"\xc1"],  # a byte msgpack never uses
        [b"\x92\x01"],  # truncated array
        [b"\x81\x80\x01"],  # a map as a map key
        [b"\xa2\xff\xfe"],  # invalid utf-8
        [b"\xd7\x07" + b"\x00" * 8],  # unknown extension type
        [b"\xd7\x2a" + b"\x01\x00\x00\x00\x05\x00\x00\x00"],  # frames that do not exist
        [b"\x01\x02"],  # extra data
    ],
)
def test_malformed_messages_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        loads_message(frames)
    assert issubclass(ProtocolError, ValueError)


# --- errors ---------------------------------------------------------------------


def _failing_function(n: int) -> None:
    if n == 0:
        raise KeyError("missing-key")
    _failing_function(n - 1)


def _capture(func, *args) -> BaseException:
    try:
        func(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


def test_error_message_roundtrip_keeps_type_message_and_traceback():
    exc = _capture(_failing_function, 2)
    msg = error_message(exc)
    assert msg["status"] == "error"
    assert msg["exception_text"] == repr(exc)
    assert "_failing_function" in msg["traceback_text"]
    rebuilt = rebuild_exception(roundtrip(msg))
    assert type(rebuilt) is KeyError
    assert rebuilt.args == ("missing-key",)
    names = [frame.name for frame in traceback.extract_tb(rebuilt.__traceback__)]
    assert names.count("_failing_function") == 3


def test_rebuild_exception_from_unserialized_message():
    exc = _capture(_failing_function, 0)
    rebuilt = rebuild_exception(error_message(exc))  # as passed in-process
    assert type(rebuilt) is KeyError
    assert "_failing_function" in "".join(traceback.format_tb(rebuilt.__traceback__))


class UnpicklableError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


def _bad_init_error() -> Exception:
    # Made at test time: dask.multiprocessing (imported with dask.dataframe) installs tblib's
    # pickling support, which makes every exception class existing by then picklable.
    class BadInitError(Exception):
        def __init__(self, a: int, b: int):
            super().__init__(f"{a} and {b}")

    return BadInitError(1, 2)


@pytest.mark.parametrize(
    "make, text",
    [(lambda: UnpicklableError("cannot travel"), "cannot travel"), (_bad_init_error, "1 and 2")],
)
def test_untransferable_exception_is_substituted(make, text):
    exc = make()
    exc = _capture(lambda: (_ for _ in ()).throw(exc))
    msg = roundtrip(error_message(exc))
    rebuilt = rebuild_exception(msg)
    assert isinstance(rebuilt, RemoteException)
    assert type(rebuilt).__name__ == type(exc).__name__
    assert str(rebuilt) == text
    assert rebuilt.__traceback__ is not None
    assert type(exc).__name__ in msg["exception_text"]
    # the stand-in itself pickles with the standard pickler
    assert str(pickle.loads(pickle.dumps(rebuilt))) == text


def test_error_message_without_traceback():
    msg = roundtrip(error_message(ValueError("plain")))
    rebuilt = rebuild_exception(msg)
    assert type(rebuilt) is ValueError and rebuilt.__traceback__ is None


def test_rebuild_exception_when_exception_cannot_be_loaded():
    msg = {
        "status": "error",
        "exception": Serialized([b"not a pickle"]),
        "traceback": None,
        "exception_text": "SomeError('x')",
        "traceback_text": "",
    }
    rebuilt = rebuild_exception(msg)
    assert isinstance(rebuilt, RemoteException)
    assert "SomeError('x')" in str(rebuilt)


def test_graph_nodes_pickle_each_distinct_function_once(monkeypatch):
    from dask._task_spec import Task, TaskRef

    from distributary.protocol.tasks import dumps_node, loads_node

    serialize_module = sys.modules["distributary.protocol.serialize"]

    offset = 10

    def shift(x):  # a closure: pickled by value, so by cloudpickle
        return x + offset

    calls = []
    real_dumps = serialize_module.cloudpickle.dumps
    monkeypatch.setattr(
        serialize_module.cloudpickle,
        "dumps",
        lambda obj, *a, **kw: calls.append(obj) or real_dumps(obj, *a, **kw),
    )
    nodes = [Task(("shift", i), shift, TaskRef(("x", i))) for i in range(500)]
    payloads = [dumps_node(node) for node in nodes]
    assert calls.count(shift) == 1
    for i in (0, 499):
        node = loads_node(payloads[i])
        assert node.key == ("shift", i)
        assert node({("x", i): i}) == i + offset


def test_a_remote_error_is_a_value_that_rebuilds_its_exception():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        error = RemoteError.of(exc)
    assert error.exception_text == "KeyError('missing')"
    assert "raise KeyError" in error.traceback_text
    travelled = loads_message(dumps_message(error.reply()))
    assert travelled["status"] == "error"
    again = RemoteError.from_reply(travelled)
    for rebuilt in (error.rebuild(), again.rebuild()):
        assert type(rebuilt) is KeyError and rebuilt.args == ("missing",)
        assert rebuilt.__traceback__ is not None
    assert error.rebuild() is not error.rebuild()  # (a new one each time)
    unknown = RemoteError(None, exception_text="ValueError('gone')").rebuild()
    assert isinstance(unknown, RemoteException) and str(unknown) == "ValueError('gone')"
