"""The messages of ``progress()``: a client follows a set of keys on the scheduler.

The client starts a *bar* with :class:`ProgressStart` (carrying the ``uid`` of a flush
marker sent on its stream just before, so that the scheduler has every key the client
submitted), then asks :class:`ProgressGet` at an interval of its choosing: the
scheduler answers at once if something changed since the ``version`` the client saw,
else when something does (or ``timeout`` passes).  Updates travel at the rate the
client asks for them, never one per task.  A bar ends with its last report (its
``state`` not ``running``), with :class:`ProgressStop` on the client's stream, or with its
client.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distributary.protocol.client_messages import FromClient
from distributary.protocol.message import Key
from distributary.protocol.requests import Reply, Request

State = Literal["running", "finished", "error", "cancelled"]


class ProgressReport(Reply):
    """A bar's counts by group: its tasks (``all``), those in memory (``done``), those
    erred, and those forgotten before they finished (``cancelled``).  ``state`` is
    ``running`` while some remain (a field not named ``status``, which replies keep for
    errors); the first erred task and its exception are named.
    ``version`` changes with every count."""

    id: str
    version: int
    state: State
    all: dict[str, int]
    done: dict[str, int]
    erred: dict[str, int]
    cancelled: dict[str, int]
    error_key: Key = None
    exception: str = ""


class ProgressStart(Request):
    """Follow ``keys`` and the unfinished tasks they need (with ``complete``, the
    finished ones too), grouped by task prefix or by ``group_by`` (a pickled function
    of a key); the first report.  ``uid``: a flush marker of ``client``'s stream."""

    op: ClassVar[str] = "progress-start"
    reply_type: ClassVar[Any] = ProgressReport

    keys: tuple[Key, ...]
    complete: bool = True
    group_by: Any = None
    client: str | None = None
    uid: str | None = None


class ProgressGet(Request):
    """The bar's report once its ``version`` is not ``seen`` any more (waiting at most
    ``timeout`` seconds: then the report as it is)."""

    op: ClassVar[str] = "progress-get"
    reply_type: ClassVar[Any] = ProgressReport

    id: str
    seen: int = -1
    timeout: float | None = None
    client: str | None = None


class ProgressStop(FromClient):
    """The client no longer follows the bar ``id``."""

    op: ClassVar[str] = "progress-stop"

    id: str
