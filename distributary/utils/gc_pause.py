"""Pausing Python's cyclic garbage collector while a big graph is built or read.

Building a graph of 100,000 tasks allocates millions of objects, which triggers full
collections that each walk every object of the process, the user's task graph too:
about 1.3 s each, every 2.5 s.  Those objects are freed by reference counting, not by
the cycle collector, so it is paused while such a phase runs and resumed after.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pausers = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the body with the cyclic garbage collector off (from any thread, nested or
    concurrently); it is turned back on when the last such body ends, if it was on."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                gc.enable()
