"""Pausing Python's cyclic garbage collector while a big graph is built or read.

Building a graph of 100,000 tasks allocates millions of objects, which triggers full
collections that each walk every object of the process, the user's task graph too:
about 1.3 s each, every 2.5 s.  Those objects are freed by reference counting, not by
the cycle collector, so it is paused while such a phase runs and resumed after.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

_lock = threading.Lock()


class _GCPause:
    """The cycle collector's pause: on while any body runs in it."""

    __slots__ = ("pausers", "was_enabled")

    def __init__(self) -> None:
        self.pausers = 0
        self.was_enabled = False

    def __enter__(self) -> None:
        with _lock:
            if self.pausers == 0:
                self.was_enabled = gc.isenabled()
                gc.disable()
            self.pausers += 1

    def __exit__(self, *exc: Any) -> None:
        with _lock:
            self.pausers -= 1
            if self.pausers == 0 and self.was_enabled:
                gc.enable()


_PAUSE = _GCPause()


def gc_paused() -> _GCPause:
    """Run the body (``with gc_paused():``) with the cyclic garbage collector off, from
    any thread, nested or concurrently; it is turned back on when the last such body
    ends, if it was on."""
    return _PAUSE
