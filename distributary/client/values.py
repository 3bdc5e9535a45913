"""Values that hold futures, pickled for the scheduler to keep (datasets, queue items,
variables): each :class:`Future` in a value is pickled as a persistent reference to its
key, so the bytes name keys only and the pickler reports exactly which; unpickling
turns each reference back into a Future of the client that asks.
"""

from __future__ import annotations

import io
import pickle
from typing import TYPE_CHECKING, Any

import cloudpickle

from distributary.client.future import Future
from distributary.protocol.serialize import OUT_OF_BAND_THRESHOLD, Serialized

if TYPE_CHECKING:
    from distributary.client.interface import FutureOwner

__all__ = ["FutureUnpickler", "dumps_with_futures"]

_FUTURE_TAG = "distributary-future"
_MAIN_MARKER = b"__main__"


def _make_pickler(base: type) -> type:
    class Pickler(base):  # type: ignore[misc, valid-type]
        """Pickle futures as persistent references to their keys, and collect those."""

        def __init__(self, file: Any, buffers: list) -> None:
            def buffer_callback(buf: pickle.PickleBuffer) -> bool:
                raw = buf.raw()
                if raw.nbytes < OUT_OF_BAND_THRESHOLD:
                    return True  # small: in band
                buffers.append(raw)
                return False

            super().__init__(file, protocol=5, buffer_callback=buffer_callback)
            self.keys: dict = {}

        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Future):
                self.keys[obj.key] = None
                return (_FUTURE_TAG, obj.key)
            return None

    return Pickler


_KeyPickler = _make_pickler(pickle.Pickler)
_KeyCloudPickler = _make_pickler(cloudpickle.Pickler)
_KeyPickler.__name__ = _KeyPickler.__qualname__ = "_KeyPickler"
_KeyCloudPickler.__name__ = _KeyCloudPickler.__qualname__ = "_KeyCloudPickler"


def dumps_with_futures(value: Any) -> tuple[Serialized, list]:
    """Pickle ``value`` into frames; return them and the keys of the futures inside.

    The standard pickler first (fast), cloudpickle when it fails or when the value
    refers to ``__main__`` (which another process cannot import).
    """
    error: Exception | None = None
    for pickler in (_KeyPickler, _KeyCloudPickler):
        file = io.BytesIO()
        buffers: list = []
        try:
            p = pickler(file, buffers)
            p.dump(value)
        except Exception as exc:
            error = exc
            continue
        frames = [file.getvalue(), *buffers]
        if pickler is _KeyPickler and _MAIN_MARKER in frames[0]:
            continue
        return Serialized(frames), list(p.keys)
    raise TypeError(
        f"Could not serialize a value of type {type(value).__name__}: {error}"
    ) from error


class FutureUnpickler(pickle.Unpickler):
    """Unpickle a value, making its futures futures of ``client``."""

    def __init__(self, frames: list, client: FutureOwner) -> None:
        super().__init__(io.BytesIO(frames[0]), buffers=frames[1:])
        self.client = client
        self.futures: dict[Any, Future] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _FUTURE_TAG):
            raise pickle.UnpicklingError(f"Unknown persistent reference {pid!r:.100}")
        key = pid[1]
        future = self.futures.get(key)
        if future is None:  # one Future per key: shared references stay shared
            future = self.futures[key] = Future(key, self.client)
        return future
