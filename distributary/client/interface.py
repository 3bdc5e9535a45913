"""What a :class:`~distributary.client.future.Future` needs of the client that owns it.

Futures, the functions that wait on them and the dataset unpickler depend on this
interface only, never on :mod:`distributary.client.client`, which implements it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distributary.client.future import Future
    from distributary.client.state import FutureState
    from distributary.protocol.client_messages import FromClient


class FutureOwner(Protocol):
    """The client as its futures see it.

    The public methods are the client's own; the underscored ones are its internal
    operations on the records behind futures, for the client package only.
    """

    status: str
    loop: asyncio.AbstractEventLoop | None

    def sync(
        self,
        func: Callable,
        *args: Any,
        timeout: Any = None,
        asynchronous: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a coroutine function on the client's loop (or return its awaitable)."""

    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
    ) -> Any:
        """Cancel futures."""

    def retry(self, futures: Any, asynchronous: bool | None = None) -> Any:
        """Run erred futures' tasks again."""

    def _acquire(self, key: Any) -> FutureState:
        """The record of ``key`` for a new Future, asking the scheduler for it if need be."""

    def _drop(self, key: Any) -> None:
        """A Future of ``key`` is gone (from any thread, the garbage collector's too)."""

    def _send(self, cls: type[FromClient], **fields: Any) -> None:
        """Send a message on the scheduler stream, from any thread, in order."""

    async def _wait_for(self, record: FutureState) -> None:
        """Until the record is done (on the client's loop)."""

    async def _gather_one(self, future: Future) -> Any:
        """The data of a finished future, from a worker holding it."""

    def _add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` in a thread once the future is done."""
