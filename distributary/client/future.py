"""Future: a handle on a remote result, reference counted by its client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask._task_spec import TaskRef

from distributary.client import registry
from distributary.client.interface import FutureOwner
from distributary.client.state import FutureState
from distributary.exceptions import FutureCancelledError
from distributary.protocol.errors import RemoteError
from distributary.widgets.reprs import future_html


class Future(TaskRef):
    """A remote computation's result, which may not exist yet.

    Created by ``Client.submit``, ``map`` and ``scatter``.  While any Future of a key
    exists, the cluster keeps that key's result; when the last one is garbage
    collected (or ``release()``\\ d), the result is freed.
    """

    __slots__ = ("client", "_state", "_released", "__weakref__")  # ``key`` is TaskRef's

    # As a dask TaskRef, a Future inside a graph or a task's arguments is a dependency.

    def __init__(
        self, key: Any, client: FutureOwner | None = None, _state: FutureState | None = None
    ):
        # ``_state``: the record the client claimed this Future's reference with
        self.key = key
        self.client: FutureOwner = client if client is not None else registry.default_client()
        self._released = False
        self._state = _state if _state is not None else self.client._acquire(key)

    def __dask_tokenize__(self) -> tuple:
        """A future stands for its key: tokens (and so ``map`` keys) derive from that."""
        return ("Future", self.key)

    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error``, ``cancelled`` (or ``lost``)."""
        return self._state.status

    @property
    def executor(self) -> FutureOwner:
        """The client that owns this future."""
        return self.client

    def done(self) -> bool:
        """Whether the computation finished, erred or was cancelled."""
        return self._state.done()

    def cancelled(self) -> bool:
        """Whether this future was cancelled."""
        return self._state.status == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """Wait for and return the result; re-raise a remote error with its traceback."""
        return self.client.sync(self._result, timeout=timeout)

    async def _result(self, raiseit: bool = True) -> Any:
        await self._wait()
        status = self._state.status
        if status == "error":
            exc = _error(self._state).rebuild()
            if not raiseit:
                return exc
            try:
                raise exc
            finally:
                del exc  # (no cycle through this frame: see utils.loop.sync)
        if status == "cancelled":
            raise FutureCancelledError(self.key, self._state.cancel_reason)
        return await self.client._gather_one(self)

    async def _wait(self) -> None:
        await self.client._wait_for(self._state)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait, then return the remote exception (or None if the task succeeded)."""
        return self.client.sync(self._exception, timeout=timeout)

    async def _exception(self) -> BaseException | None:
        await self._wait()
        if self._state.status == "error":
            return _error(self._state).rebuild()
        if self._state.status == "cancelled":
            raise FutureCancelledError(self.key, self._state.cancel_reason)
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        """Wait, then return the remote traceback object (or None)."""
        return self.client.sync(self._traceback, timeout=timeout)

    async def _traceback(self) -> Any:
        exc = await self._exception()
        return None if exc is None else exc.__traceback__

    def cancel(self, reason: str | None = None, **kwargs: Any) -> Any:
        """Cancel this future's computation and release its data."""
        return self.client.cancel([self], reason=reason, **kwargs)

    def retry(self, **kwargs: Any) -> Any:
        """Run this erred future's task again."""
        return self.client.retry([self], **kwargs)

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once this future is done (in a separate thread)."""
        self.client._add_done_callback(self, fn)

    def release(self) -> None:
        """Drop this future's claim on the result now rather than at garbage collection."""
        if not self._released:
            self._released = True
            self.client._drop(self.key)

    def __await__(self):
        return self._result().__await__()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass  # the interpreter is shutting down

    def __reduce__(self) -> tuple:
        return (Future, (self.key,))

    def __repr__(self) -> str:
        kind = f", type: {self._state.type}" if self._state.status == "finished" else ""
        return f"<Future: {self._state.status}{kind}, key: {self.key}>"

    __str__ = __repr__  # not TaskRef's bare key

    _repr_html_ = future_html  # (the notebook's HTML: widgets/reprs.py)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key and other.client is self.client


def _error(record: FutureState) -> RemoteError:
    return record.error or RemoteError(None, exception_text="unknown remote error")
