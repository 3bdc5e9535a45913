"""Task payloads: a function and its arguments, packed by the client, run by a worker.

A payload is a small dict that the scheduler forwards untouched::

    {"func": <pickled function>, "args": <Serialized (args, kwargs)> | <tuple of scalars>}

or, for a node of a dask graph, ``{"node": <Serialized node>}``.  The function is
pickled once and cached on both ends, so mapping it over many items costs one pickle;
the functions inside graph nodes are pickled the same way, once per distinct function.
Arguments made only of plain scalars travel as msgpack; anything else is pickled with
protocol 5 (large buffers out of band).  Futures found in the arguments are replaced
by references to their keys, reported as the task's dependencies, and resolved to the
dependencies' values on the worker.
"""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Mapping
from typing import Any

import cloudpickle

from distributary.protocol.serialize import Serialized, dumps_function, loads_function

_SCALARS = (int, float, str, bool, type(None), bytes)
_SCAN_BUDGET = 1000
_reference_types: tuple[type, ...] = ()
_key_attributes: dict[type, str] = {}


def register_reference_type(cls: type, key_attribute: str = "key") -> None:
    """Objects of ``cls`` in task arguments stand for the data of their ``key``."""
    global _reference_types
    if cls not in _reference_types:
        _reference_types = (*_reference_types, cls)
    _key_attributes[cls] = key_attribute


def _contains_reference(obj: Any, budget: list[int]) -> bool:
    """Whether ``obj`` holds a reference in plain containers (or is too big to tell)."""
    budget[0] -= 1
    if budget[0] < 0:
        return True
    if isinstance(obj, _reference_types):
        return True
    if type(obj) in (list, tuple, set, frozenset):
        return any(_contains_reference(item, budget) for item in obj)
    if type(obj) is dict:
        return any(_contains_reference(item, budget) for item in obj.values())
    return False


class _ReferencesMixin:
    """Pickles reference objects (futures) as their keys and collects those keys."""

    deps: set

    def persistent_id(self, value: Any) -> Any:
        if isinstance(value, _reference_types):
            key = getattr(value, _key_attributes[type(value)])
            self.deps.add(key)
            return ("ref", key)
        return None


class _ReferencePickler(_ReferencesMixin, pickle.Pickler):
    pass


class _ReferenceCloudPickler(_ReferencesMixin, cloudpickle.CloudPickler):
    pass


def _pickle_with_references(obj: Any, deps: set, cloud: bool) -> Serialized:
    buffers: list = []
    file = io.BytesIO()
    pickler_type = _ReferenceCloudPickler if cloud else _ReferencePickler
    pickler = pickler_type(file, protocol=5, buffer_callback=buffers.append)
    pickler.deps = deps
    pickler.dump(obj)
    return _arguments(file.getvalue(), buffers)


def _arguments(header: bytes, buffers: list) -> Serialized:
    """Pickled arguments as frames.  A buffer the caller may still change (a numpy array
    given to ``submit``) is copied: the call runs with the values it was submitted with,
    however late its payload is encoded."""
    raws = (buffer.raw() for buffer in buffers)
    return Serialized([header, *(raw if raw.readonly else bytes(raw) for raw in raws)])


def _pickle_arguments(obj: Any, deps: set) -> Serialized:
    errors = []
    for cloud in (False, True):
        try:
            return _pickle_with_references(obj, deps, cloud)
        except Exception as err:
            errors.append(err)
    culprit = _find_unpicklable(obj)
    raise TypeError(
        f"Could not serialize object of type {type(culprit).__name__}: {errors[-1]}"
    ) from errors[-1]


def _find_unpicklable(obj: Any) -> Any:
    """The innermost argument that cannot be pickled, to name it in the error."""
    items: list = []
    if type(obj) in (list, tuple, set, frozenset):
        items = list(obj)
    elif type(obj) is dict:
        items = list(obj.values())
    for item in items:
        try:
            cloudpickle.dumps(item)
        except Exception:
            return _find_unpicklable(item)
    return obj


def dumps_task(func: Any, args: tuple, kwargs: Mapping | None) -> tuple[dict, set]:
    """Pack a call into a payload; return it with the keys of the futures it refers to."""
    deps: set = set()
    payload: dict[str, Any] = {"func": dumps_function(func)}
    if not kwargs and all(
        type(a) in _SCALARS and (type(a) is not int or -(2**63) <= a < 2**63) for a in args
    ):
        payload["args"] = tuple(args)
        return payload, deps
    packed = (tuple(args), dict(kwargs or {}))
    if _reference_types and _contains_reference(packed, [_SCAN_BUDGET]):
        payload["args"] = _pickle_arguments(packed, deps)
    else:
        try:
            payload["args"] = _pickle_plain(packed)
        except Exception:
            payload["args"] = _pickle_arguments(packed, deps)
    if deps:
        payload["refs"] = True
    return payload, deps


def _pickle_plain(obj: Any) -> Serialized:
    buffers: list = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return _arguments(header, buffers)


def loads_task(payload: Mapping, data: Mapping) -> tuple[Any, tuple, dict]:
    """Unpack a payload into ``(func, args, kwargs)``, taking dependencies from ``data``."""
    func = loads_function(payload["func"])
    packed = payload["args"]
    if not isinstance(packed, Serialized):
        return func, tuple(packed), {}
    frames = packed.frames
    if payload.get("refs"):
        unpickler = pickle.Unpickler(io.BytesIO(frames[0]), buffers=frames[1:])
        unpickler.persistent_load = lambda pid: data[pid[1]]
        args, kwargs = unpickler.load()
    else:
        args, kwargs = pickle.loads(frames[0], buffers=frames[1:])
    return func, args, kwargs


class _FunctionsOnce:
    """Pickles functions with :func:`dumps_function`: once per distinct function."""

    def persistent_id(self, value: Any) -> Any:
        if type(value) is types.FunctionType:
            return ("fn", dumps_function(value))
        return None


class _NodePickler(_FunctionsOnce, pickle.Pickler):
    pass


class _NodeCloudPickler(_FunctionsOnce, cloudpickle.CloudPickler):
    pass


def dumps_node(node: Any) -> dict:
    """Pack a dask graph node (a ``GraphNode``) into a payload."""
    for pickler_type in (_NodePickler, _NodeCloudPickler):
        buffers: list = []
        file = io.BytesIO()
        try:
            pickler_type(file, protocol=5, buffer_callback=buffers.append).dump(node)
            break
        except Exception as err:
            error = err
    else:
        raise TypeError(f"Could not serialize task {node.key!r}: {error}") from error
    return {"node": Serialized([file.getvalue(), *(b.raw() for b in buffers)])}


def loads_node(payload: Mapping) -> Any:
    """Unpack a graph node made by :func:`dumps_node`."""
    frames = payload["node"].frames
    unpickler = pickle.Unpickler(io.BytesIO(frames[0]), buffers=frames[1:])
    unpickler.persistent_load = lambda pid: loads_function(pid[1])
    return unpickler.load()
