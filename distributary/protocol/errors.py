"""Exceptions as values, so that a remote error is raised again where it is wanted.

A :class:`RemoteError` holds the exception and its traceback (as a tblib
``Traceback``), pickled, and their texts; the receiver gets the original exception
type with the remote frames in its ``__traceback__``. An exception that cannot be
pickled (or unpickled) is replaced by a :class:`RemoteException` subclass carrying the
original type name and message.  A request that fails is answered with the error as a
reply (:meth:`RemoteError.reply`).
"""

from __future__ import annotations

import copy
import copyreg
import functools
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tblib import Traceback

from distributary.protocol.serialize import Serialize, deserialize, serialize

__all__ = [
    "RemoteError",
    "RemoteException",
    "error_message",
    "rebuild_exception",
    "remote_exception",
]


class RemoteException(Exception):
    """Stands in for a remote exception that could not be transferred as itself.

    Subclasses created by :func:`remote_exception` carry the original type name, so
    that tracebacks read ``...RemoteException``-derived ``OriginalName: message``.
    """

    type_name = "RemoteException"

    def __reduce__(self) -> tuple:
        return (remote_exception, (self.type_name, str(self)))


@functools.lru_cache(maxsize=256)
def _remote_exception_type(type_name: str) -> type[RemoteException]:
    return type(type_name, (RemoteException,), {"type_name": type_name, "__module__": __name__})


def remote_exception(type_name: str, message: str) -> RemoteException:
    """Make a picklable exception named ``type_name`` with ``message``."""
    return _remote_exception_type(type_name)(message)


def _safe_str(exc: BaseException, func: Any = str) -> str:
    try:
        return func(exc)
    except Exception:
        return f"<{type(exc).__name__}: unprintable>"


def _transferable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a stand-in keeping its text."""
    if isinstance(exc, SyntaxError):
        # dask installs tblib's reducer for every exception class, which rebuilds a
        # SyntaxError without its message; rebuilt from its arguments, it keeps it.
        copyreg.pickle(type(exc), _rebuilt_from_args)
    try:
        if isinstance(serialize(exc).deserialize(), BaseException):
            return exc
    except Exception:
        pass
    return remote_exception(type(exc).__name__, _safe_str(exc))


def _rebuilt_from_args(exc: BaseException) -> tuple:
    return type(exc), exc.args


def _traceback_of(exc: BaseException) -> Traceback | None:
    tb = exc.__traceback__
    if tb is None:
        return None
    try:
        wrapped = Traceback(tb)
        serialize(wrapped)
    except Exception:
        return None
    return wrapped


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An exception raised elsewhere, as it travels: the exception and its traceback
    (pickled, or the objects themselves within one process) and their texts."""

    exception: Any
    traceback: Any = None
    exception_text: str = ""
    traceback_text: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        """``exc`` as a remote error that can always be serialized."""
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            text = _safe_str(exc, repr)
        return cls(
            Serialize(_transferable(exc)),
            Serialize(_traceback_of(exc)),
            _safe_str(exc, repr),
            text,
        )

    @classmethod
    def from_reply(cls, reply: dict) -> RemoteError:
        """The error of an error reply (:meth:`reply`)."""
        return cls(
            reply.get("exception"),
            reply.get("traceback"),
            str(reply.get("exception_text") or ""),
            str(reply.get("traceback_text") or ""),
        )

    def reply(self) -> dict:
        """The error as the reply to a request: ``{"status": "error", ...}``."""
        return {
            "status": "error",
            "exception": self.exception,
            "traceback": self.traceback,
            "exception_text": self.exception_text,
            "traceback_text": self.traceback_text,
        }

    def rebuild(self) -> BaseException:
        """The exception, with the remote traceback attached.

        A new exception each time: raising one appends the raising frames to its
        traceback, and an error kept (a future's) must not keep those frames alive.
        """
        tb = _remote_traceback(self.traceback)
        try:
            exc = deserialize(self.exception)
            if isinstance(self.exception, Serialize):  # (in memory: shared, so copied)
                exc = _copy(exc)
        except Exception:
            exc = None
        if not isinstance(exc, BaseException):
            exc = remote_exception("RemoteException", self.exception_text or "unknown remote error")
        try:
            return exc.with_traceback(tb)
        finally:
            # tblib's frames keep this frame (their ``f_back``) alive as long as the
            # exception lives: holding the exception here would make a cycle.
            del exc, tb


def error_message(exc: BaseException) -> dict:
    """Describe ``exc`` as an error reply that can always be serialized."""
    return RemoteError.of(exc).reply()


def rebuild_exception(reply: dict) -> BaseException:
    """The exception of an error reply, with the remote traceback attached."""
    return RemoteError.from_reply(reply).rebuild()


def _copy(exc: Any) -> Any:
    try:
        return copy.copy(exc)
    except Exception:
        return serialize(exc).deserialize()


def _as_traceback(tb: Any) -> TracebackType | None:
    if isinstance(tb, Traceback):
        return tb.as_traceback()
    if isinstance(tb, TracebackType):
        return tb
    return None


def _remote_traceback(tb: Any) -> TracebackType | None:
    try:
        return _as_traceback(deserialize(tb))
    except Exception:
        return None
