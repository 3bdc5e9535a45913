"""Pickle protocol 5 serialization of user objects into frames.

A serialized object is a list of frames: ``frames[0]`` is the pickle stream and
``frames[1:]`` are its out-of-band buffers (numpy arrays, pandas blocks, large
bytes), which are never copied into the pickle stream. The standard pickler is
tried first because it is fast; cloudpickle is used when the standard pickler
fails, or when its output refers to ``__main__`` (functions and classes defined
interactively cannot be imported by name in another process).
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import cloudpickle

__all__ = [
    "Serialize",
    "Serialized",
    "deserialize",
    "dumps_function",
    "loads_function",
    "serialize",
]

# Buffers smaller than this stay inside the pickle stream: one more frame costs
# more than copying a few kilobytes.
OUT_OF_BAND_THRESHOLD = 64 * 1024

_MAIN_MARKER = b"__main__"


class Serialize:
    """Mark an object to be pickled when its message crosses a process boundary."""

    __slots__ = ("obj",)

    def __init__(self, obj: object):
        self.obj = obj

    def __repr__(self) -> str:
        return f"<Serialize: {type(self.obj).__name__}>"


class Serialized:
    """An already pickled object: a pickle stream and its out-of-band buffers.

    It travels through intermediaries (the scheduler) as opaque bytes; only the
    final receiver calls :meth:`deserialize`.
    """

    __slots__ = ("frames", "nbytes")

    def __init__(self, frames: list):
        self.frames = frames
        self.nbytes = sum(_frame_nbytes(f) for f in frames)

    def deserialize(self) -> Any:
        """Unpickle the object these frames hold."""
        return pickle.loads(self.frames[0], buffers=self.frames[1:])

    def __repr__(self) -> str:
        return f"<Serialized: {len(self.frames)} frames, {self.nbytes} bytes>"


def _frame_nbytes(frame: bytes | bytearray | memoryview) -> int:
    if isinstance(frame, memoryview):
        return frame.nbytes
    return len(frame)


def _dumps(dumps: Callable[..., bytes], obj: object) -> list:
    buffers: list = [None]

    def buffer_callback(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_THRESHOLD:
            return True  # keep it in band
        buffers.append(raw)
        return False

    buffers[0] = dumps(obj, protocol=5, buffer_callback=buffer_callback)
    return buffers


def serialize(obj: object) -> Serialized:
    """Pickle ``obj`` into frames; raise TypeError naming the type if impossible."""
    try:
        frames = _dumps(pickle.dumps, obj)
        if _MAIN_MARKER not in frames[0]:
            return Serialized(frames)
    except Exception:
        pass
    try:
        return Serialized(_dumps(cloudpickle.dumps, obj))
    except Exception as err:
        raise TypeError(f"Could not serialize object of type {type(obj).__name__}: {err}") from err


def deserialize(x: Any) -> Any:
    """Return the object behind a Serialized or Serialize; anything else unchanged."""
    if isinstance(x, Serialized):
        return x.deserialize()
    if isinstance(x, Serialize):
        return x.obj
    return x


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: object) -> None:
        with self._lock:
            self._data[key] = value
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)


# Pickles of functions are cached only when small: a function whose closure holds
# a big array should not be kept alive (twice) by the cache.
_CACHE_MAX_BYTES = 100_000
_dumped_functions = _LRU(100)
_loaded_functions = _LRU(100)


def dumps_function(func: Callable) -> bytes:
    """Cloudpickle a function, caching the result for hashable functions."""
    try:
        cached = _dumped_functions.get(func)
    except TypeError:  # unhashable callable
        return cloudpickle.dumps(func, protocol=5)
    if cached is None:
        cached = cloudpickle.dumps(func, protocol=5)
        if len(cached) < _CACHE_MAX_BYTES:
            _dumped_functions.put(func, cached)
    return cached


def loads_function(data: bytes) -> Callable:
    """Unpickle a function made by :func:`dumps_function`, caching by its bytes."""
    if not isinstance(data, bytes) or len(data) >= _CACHE_MAX_BYTES:
        return pickle.loads(data)
    func = _loaded_functions.get(data)
    if func is None:
        func = pickle.loads(data)
        _loaded_functions.put(data, func)
    return func
