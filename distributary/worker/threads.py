"""The threads that run a worker's tasks.

The worker's state machine decides how many tasks run at once (``nthreads``, not
counting seceded ones), so this pool sets no limit of its own: each task submitted
starts at once, on an idle thread or on a new one.  That is what lets a task that
seceded keep its thread while another takes its slot, without ever leaving a task
waiting in a queue behind threads that are all blocked (the standard library's pool,
whose idle count can be stale, could do that).  Threads idle for a while exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_IDLE_SECONDS = 60.0  # an idle thread exits after this long
_STOP = object()


class TaskThreads:
    """Run each submitted call at once on a thread of its own (idle ones reused)."""

    def __init__(self, name: str = "distributary-task"):
        self._name = name
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for work, less the calls already queued for them
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Start ``fn()``; its future."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the task threads are shut down")
            self._work.put((future, fn))
            if self._idle:
                self._idle -= 1  # an idle thread takes it
                return future
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.add(thread)
        thread.start()
        return future

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        """Stop the idle threads and refuse new calls (running calls finish on their own
        threads; ``wait`` waits for them)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()

    def __len__(self) -> int:
        """Threads alive (running a call or idle)."""
        with self._lock:
            return len(self._threads)

    def _serve(self) -> None:
        try:
            while True:
                try:
                    item = self._work.get(timeout=_IDLE_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._idle:  # nothing is queued for this thread: leave
                            self._idle -= 1
                            return
                    continue
                if item is _STOP:
                    return
                future, fn = item
                del item
                if not future.set_running_or_notify_cancel():
                    del future, fn
                    continue
                try:
                    result, error = fn(), None
                except BaseException as exc:
                    result, error = None, exc
                del fn
                # Idle before the result is told: the call submitted upon it (the next
                # task) finds this thread free instead of starting another one.
                with self._lock:
                    closed = self._closed
                    if not closed:
                        self._idle += 1
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
                del future, result, error  # (what the call gave is not kept while idle)
                if closed:
                    return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
